import json
import os
import subprocess
import sys

import pytest

from synthpart.cli import main
from synthpart.data import fingerprint, load_dataset

SMALL = ["--hidden", "32,32,32", "--cuts", "2", "--epochs", "4", "--batch-size", "32",
         "--lr", "0.01",
         "--recovery-epochs", "1", "-q"]


def test_compare_writes_every_method(tmp_path, capsys):
  out = tmp_path / "run"
  assert main(["compare", *SMALL, "--out", str(out)]) == 0
  doc = json.loads((out / "results.json").read_text())
  assert [r["method"] for r in doc["runs"]] == [
      "conventional", "pnn-sequential", "pnn-sequential+recovery", "pnn-parallel",
      "pnn-parallel-nearest-sil", "pnn-parallel+recovery", "pnn-pipelined",
      "pnn-pipelined+recovery"]
  for r in doc["runs"]:
    assert 0.5 < r["test_accuracy"] <= 1 and r["wall_seconds"] > 0
  assert doc["dataset"] == {"name": "digits", "source": doc["dataset"]["source"],
                            "num_classes": 10, "num_train": 1437, "num_test": 360,
                            "num_features": 64, "input_shape": [8, 8, 1],
                            "input_dtype": "uint8", "input_scale": 255.0,
                            "fingerprint": fingerprint(load_dataset("digits"))}
  assert doc["config"]["model"]["hidden"] == [32, 32, 32] and doc["versions"]["jax"]
  table = capsys.readouterr().out
  assert "pnn-parallel+recovery" in table and "test acc" in table


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
