import json
import os
import subprocess
import sys

import pytest

from synthpart.cli import main

SMALL = ["--hidden", "32,32,32", "--cuts", "2", "--epochs", "4", "--batch-size", "32",
         "--lr", "0.01",
         "--recovery-epochs", "1", "-q"]


def test_existing_results_are_kept(tmp_path, capsys):
  out = tmp_path / "run"
  out.mkdir()
  (out / "results.json").write_text("{}")
  assert main(["train", *SMALL, "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert (out / "results.json").read_text() == "{}"


@pytest.mark.parametrize("flags,words", [
    (["--cuts", "9"], "model.cuts"),
    (["--cuts", "3,2"], "strictly increasing"),
    (["--kappa", "0"], "kappa"),
    (["--sil-kind", "laplace"], "sil.kind"),
    (["--optimizer", "adagrad2"], "train.optimizer"),
    (["--batch-size", "5000"], "larger than the 1437 training examples"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--set", "model.widths=3"], "unknown setting model.widths"),
    (["--set", "oops"], "KEY=VALUE"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flags, words):
  out = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "synthpart", "train", "--hidden", "8,8,8", "--cuts",
                         "1", *flags, "--out", str(out), "-q"], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("synthpart: error: ") and words in lines[0]
  assert not out.exists()


def test_every_help_states_its_defaults_and_the_version_is_shown(capsys):
  from synthpart import __version__
  from synthpart.cli import build_parser
  parser = build_parser()
  missing = []
  for action in parser._subparsers._group_actions[0].choices.values():
    for a in action._actions:
      if a.option_strings and a.help != "==SUPPRESS==" and not a.required and a.dest != "help":
        if "default" not in (a.help or ""):
          missing.append((action.prog, a.option_strings[-1]))
  assert missing == []
  with pytest.raises(SystemExit):
    main(["--version"])
  assert capsys.readouterr().out.strip() == f"synthpart {__version__}"


def test_an_error_naming_a_line_break_stays_one_line(tmp_path, capsys):
  assert main(["train", "--dataset", "npz:no\nfile.npz", "-q", "--out", str(tmp_path / "r")]) == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("synthpart: error:") and "no\\nfile.npz" in line


def test_partitioned_methods_without_a_cut_are_refused_before_anything_is_written(tmp_path,
                                                                                  capsys):
  sweep = tmp_path / "sweep.toml"
  sweep.write_text('seeds = [0]\nmethods = ["sequential"]\n[base.model]\nhidden = [8, 8]\n'
                   '[base.train]\nepochs = 1\n[base.recovery]\nepochs = 0\n'
                   '[axes]\n"model.cuts" = [[], [1]]\n')
  for command in (["compare", *SMALL, "--cuts", ""], ["sweep", str(sweep)]):
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "needs at least one cut (model.cuts" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_refuses_another_command_and_checkpoints_of_other_settings(tmp_path, capsys):
  """compare --resume on a train run, and a train run resumed after config.json was edited to
  match the new flags (its checkpoints are of the 1-epoch run): one line each, nothing lost."""
  out = tmp_path / "run"
  flags = ["--dataset", "digits", "--hidden", "8,8", "--cuts", "1", "--recovery-epochs", "0",
           "-q", "--out", str(out)]
  assert main(["train", *flags, "--epochs", "1"]) == 0
  results = (out / "results.json").read_bytes()
  assert main(["compare", *flags, "--epochs", "1", "--resume"]) == 2
  config = json.loads((out / "config.json").read_text())
  assert config["command"] == "train" and config["with_model_parallel"] is False
  config["train"]["epochs"] = 2
  (out / "config.json").write_text(json.dumps(config))
  assert main(["train", *flags, "--epochs", "2", "--resume"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2, err
  assert err[0].startswith(f"synthpart: error: --resume: {out} was made by `synthpart train`, "
                           "not `synthpart compare`; resume it with the same command"), err
  assert "was written by another run (other settings or data)" in err[1], err
  assert (out / "results.json").read_bytes() == results
