"""The directories the commands write: only synthpart's own trash deleted, the user's files never
moved, a failed --overwrite undone, one lock and one kind per directory, clear --out lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthpart import cli, rundir, trash
from synthpart.errors import CheckpointError, DiskFullError

TINY = ["--hidden", "8,8", "--cuts", "1", "--epochs", "1", "--recovery-epochs", "0", "-q"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

SWEEP_TOML = """seeds = [0]
methods = ["conventional"]
[base.model]
hidden = [8, 8]
cuts = [1]
[base.train]
epochs = 1
[base.recovery]
epochs = 0
[axes]
"sil.scale" = [0.5]
"""
BUDGET_TOML = """seeds = [0]
fraction = 0.5
[base.model]
hidden = [8, 8]
cuts = [1]
[base.train]
epochs = 1
[base.recovery]
epochs = 0
[reference]
"train.epochs" = 1
[methods.conventional.axes]
"train.learning_rate" = [0.01]
[methods.sequential.axes]
"segments.0.steps" = [2]
"""


def _one_error_line(err: str) -> str:
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("synthpart: error: "), err
  return lines[0]


def _tree(root: Path) -> dict[str, bytes | None]:
  """Every entry under `root` and the bytes of its files: what must be left as it was."""
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(root.rglob("*"))}


def _a_run(root: Path, seed: int = 1) -> None:
  """A finished run's files, as a run writes them."""
  (root / "checkpoints" / "conventional").mkdir(parents=True)
  (root / "checkpoints" / "conventional" / "state").write_text(f"state {seed}")
  (root / "config.json").write_text(json.dumps({"seed": seed}))
  (root / "results.json").write_text(json.dumps({"config": {"seed": seed}}))
  (root / "log.txt").write_text(f"run {seed}\n")


# ---------------------------------------------------------------------------------------------
# Trash: only what synthpart made, by the names it recorded


def test_only_recorded_trash_is_ever_deleted(tmp_path):
  root = tmp_path / "run"
  root.mkdir()
  for name in (".trash-mine", ".trash-20240101-000000-1"):  # the user's, one named like ours
    (root / name).mkdir()
    (root / name / "keep.txt").write_text(name)
  outside = tmp_path / ".trash-outside"
  outside.mkdir()
  users = _tree(root)
  rundir.prepare_run_dir(root, {"seed": 1}, resume=False, overwrite=False)  # a plain run
  assert _tree(root) == {**users, "config.json": b'{\n "seed": 1\n}'}
  (root / "results.json").write_text("{}")
  # An edited record naming the user's directories, or one outside, deletes none of them.
  (root / trash.TRASH_RECORD).write_text(json.dumps(
      {"trash": ["../.trash-outside", ".trash-mine/..", "keep", 3]}))
  rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  assert outside.is_dir()
  assert sorted(p.name for p in root.iterdir()) == [".trash-20240101-000000-1", ".trash-mine",
                                                    "config.json"]
  assert all((root / name / "keep.txt").read_text() == name
             for name in (".trash-mine", ".trash-20240101-000000-1"))


def test_an_interrupted_overwrite_is_refused_then_finished(tmp_path):
  root = tmp_path / "run"
  root.mkdir()
  _a_run(root)
  (root / "notes.txt").write_text("mine")
  # Killed once config.json and results.json were moved aside: its trash is recorded.
  made = trash.move_aside(root, [root / "config.json", root / "results.json"])
  assert made is not None and trash.recorded_trash(root) == [made.name]
  with pytest.raises(CheckpointError, match="interrupted --overwrite") as e:
    rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=False)
  assert made.name in str(e.value)
  with pytest.raises(CheckpointError, match="no run to resume"):
    rundir.prepare_run_dir(root, {"seed": 2}, resume=True, overwrite=False)
  rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  assert sorted(p.name for p in root.iterdir()) == ["config.json", "notes.txt"]
  assert json.loads((root / "config.json").read_text()) == {"seed": 2}


# ---------------------------------------------------------------------------------------------
# A directory without a run: the user's files are neither moved nor written over


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_without_a_run_keeps_the_users_files(tmp_path, overwrite):
  root = tmp_path / "mine"
  (root / "figures").mkdir(parents=True)
  (root / "figures" / "plot.png").write_bytes(b"png")
  (root / "report.md").write_text("my report")
  (root / "log.txt").write_text("my log")
  before = _tree(root)
  with pytest.raises(CheckpointError, match="holds log.txt, report.md, figures/ but no run"):
    rundir.prepare_run_dir(root, {"seed": 1}, resume=False, overwrite=overwrite)
  assert _tree(root) == before
  # Without files named like a run's, the directory is simply used: nothing moved.
  other = tmp_path / "other"
  (other / "data").mkdir(parents=True)
  (other / "notes.txt").write_text("mine")
  rundir.prepare_run_dir(other, {"seed": 1}, resume=False, overwrite=overwrite)
  assert sorted(p.name for p in other.iterdir()) == ["config.json", "data", "notes.txt"]


# ---------------------------------------------------------------------------------------------
# A failed --overwrite puts everything back


def _refuse_renaming(monkeypatch, name: str) -> None:
  """os.rename fails for entry `name` going into a trash directory, as it does for a directory
  without write permission (root is not refused, so the refusal is simulated)."""
  real = os.rename

  def rename(src, dst):
    if Path(src).name == name and Path(dst).parent.name.startswith(trash.TRASH_PREFIX):
      raise PermissionError(13, "Permission denied", str(src))
    return real(src, dst)

  monkeypatch.setattr(os, "rename", rename)


def test_a_failed_overwrite_puts_everything_back(tmp_path, monkeypatch, capsys):
  root = tmp_path / "run"
  root.mkdir()
  _a_run(root)
  (root / "report.md").write_text("the run's report")
  before = _tree(root)
  _refuse_renaming(monkeypatch, "report.md")
  with pytest.raises(CheckpointError, match="cannot be moved aside") as e:
    rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  assert "report.md" in str(e.value) and "left as it was" in str(e.value)
  assert _tree(root) == before  # no trash, no record, every entry where it was
  # The command: one line, exit status 2, the run as it was.
  assert cli.main(["train", *TINY, "--seed", "2", "--overwrite", "--out", str(root)]) == 2
  assert "cannot be moved aside" in _one_error_line(capsys.readouterr().err)
  assert _tree(root) == before


def test_an_overwrite_that_cannot_write_its_config_puts_everything_back(tmp_path, monkeypatch):
  root = tmp_path / "run"
  root.mkdir()
  _a_run(root)
  before = _tree(root)

  def full(root, config):
    raise DiskFullError(f"no space left on the device writing {root / 'config.json'}")

  monkeypatch.setattr(rundir, "write_run_config", full)
  with pytest.raises(DiskFullError):
    rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  assert _tree(root) == before


def test_an_overwrite_that_cannot_put_back_says_where_the_files_are(tmp_path, monkeypatch):
  root = tmp_path / "run"
  root.mkdir()
  _a_run(root)
  real = os.rename

  def rename(src, dst):  # log.txt cannot move; what moved before it cannot come back
    if Path(src).name == "log.txt" or Path(src).parent.name.startswith(trash.TRASH_PREFIX):
      raise PermissionError(13, "Permission denied", str(src))
    return real(src, dst)

  monkeypatch.setattr(os, "rename", rename)
  with pytest.raises(CheckpointError, match="nor put results.json back") as e:
    rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  (made,) = trash.pending_trash(root)
  assert str(made) in str(e.value)
  assert sorted(p.name for p in made.iterdir()) == ["config.json", "results.json"]
  monkeypatch.setattr(os, "rename", real)
  # What is left is refused by a plain run, and another --overwrite finishes.
  with pytest.raises(CheckpointError, match="interrupted --overwrite"):
    rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=False)
  rundir.prepare_run_dir(root, {"seed": 2}, resume=False, overwrite=True)
  assert sorted(p.name for p in root.iterdir()) == ["config.json"]


# ---------------------------------------------------------------------------------------------
# One kind per directory, one process at a time


def _directory(root: Path, kind: str) -> Path:
  root.mkdir(parents=True)
  (root / rundir.DIR_KINDS[kind][0]).write_text("{}")
  if kind == "launch":  # a launch writes a results.json too
    (root / "results.json").write_text("{}")
  evidence = {"run": "log.txt", "export": "model.jax", "bench": "bench.md", "report": "figures"}
  if kind in evidence:  # what the command writes besides its marker
    (root / evidence[kind]).mkdir()
  return root


def test_a_users_files_named_like_markers_do_not_make_a_commands_directory(tmp_path):
  project = tmp_path / "project"
  project.mkdir()
  for name in ("config.json", "model.json", "report.md", "bench.json"):
    (project / name).write_text("the user's")
  (project / "docs" / "api").mkdir(parents=True)
  (project / "docs" / "api" / "config.json").write_text("the user's")
  with rundir.claim(project / "runs" / "a", "run"):
    pass
  with rundir.claim(project / "docs", "sweep"):
    pass


def test_each_kind_refuses_the_others_directories(tmp_path):
  for found in rundir.DIR_KINDS:
    root = _directory(tmp_path / found, found)
    before = _tree(root)
    assert rundir.dir_kind(root) == (found, rundir.DIR_KINDS[found][0])
    for kind in rundir.DIR_KINDS:
      if kind == found:
        rundir.claim(root, kind).release()
        continue
      with pytest.raises(CheckpointError, match="another command's directory") as e:
        rundir.claim(root, kind)
      assert f"{rundir.DIR_KINDS[found][0]} is in it" in str(e.value)
      assert _tree(root) == before  # not even a lock file
  with pytest.raises(ValueError, match="unknown kind"):
    rundir.claim(tmp_path / "x", "nothing")


def test_a_commands_own_nestings_are_allowed(tmp_path):
  sweep = _directory(tmp_path / "sweep", "sweep")
  _a_run(sweep / "point" / "seed-0")  # a sweep's runs
  budget = _directory(tmp_path / "budget", "budget")
  _directory(budget / "reference", "sweep")  # a budget's sweeps
  _a_run(budget / "reference" / "point" / "seed-0")  # and their runs
  for root, kind, inside in [(sweep, "sweep", None), (sweep / "point" / "seed-0", "run", "sweep"),
                             (budget, "budget", None), (budget / "reference", "sweep", "budget"),
                             (budget / "reference" / "point" / "seed-0", "run", "sweep")]:
    with rundir.claim(root, kind, inside=inside):
      pass
  # ...made by the sweep or budget itself: a user's --out there is another command's
  for root, kind in [(sweep / "point" / "seed-1", "run"), (budget / "sequential", "sweep"),
                     (budget / "sweep" / "point" / "seed-0", "run")]:
    with pytest.raises(CheckpointError, match="lies inside"):
      rundir.claim(root, kind)
    assert not root.exists()


def test_no_directory_inside_another_commands(tmp_path):
  for outer in rundir.DIR_KINDS:
    root = _directory(tmp_path / outer, outer)
    before = _tree(root)
    for kind in ("run", "sweep", "export", "bench", "report"):
      inner = root / "checkpoints" / "mine"
      with pytest.raises(CheckpointError, match="lies inside") as e:
        rundir.claim(inner, kind)
      assert f"{root}, the directory of synthpart" in str(e.value)
      assert f"({rundir.DIR_KINDS[outer][0]} is in it)" in str(e.value)
      assert _tree(root) == before  # nothing created in it


def test_no_directory_over_another_commands(tmp_path):
  run = tmp_path / "r1"
  _a_run(run)
  _a_run(run / "checkpoints" / "mine")  # a run made inside it, by hand or by an older version
  export = _directory(tmp_path / "e0", "export")
  _a_run(export / "params" / "myrun")
  plain = tmp_path / "plain"
  _directory(plain / "a" / "b" / "sweep", "sweep")
  unmarked_sweep = tmp_path / "s"
  _a_run(unmarked_sweep / "point" / "seed-0")  # runs, but no sweep.json: not a sweep's own
  for root, kind, inner in [(run, "run", run / "checkpoints" / "mine"),
                            (export, "export", export / "params" / "myrun"),
                            (plain, "run", plain / "a" / "b" / "sweep"),
                            (plain, "budget", plain / "a" / "b" / "sweep"),
                            (unmarked_sweep, "sweep", unmarked_sweep / "point" / "seed-0")]:
    before = _tree(root)
    with pytest.raises(CheckpointError, match="does not write over") as e:
      rundir.claim(root, kind)
    assert f"holds {inner}, the directory of synthpart" in str(e.value)
    assert _tree(root) == before


def test_train_refuses_out_inside_or_over_another_commands_directory(tmp_path, capsys):
  run = tmp_path / "r1"
  _a_run(run)
  sweep = _directory(tmp_path / "sweep", "sweep")
  tiny = ["--dataset", "digits", "--hidden", "32,32", "--cuts", "1", "--epochs", "1",
          "--recovery-epochs", "0", "-q"]
  for out, extra in [(run / "checkpoints" / "mine", []), (sweep / "x" / "seed-0", []),
                     (tmp_path / "e0" / "params" / "myrun", [])]:
    if out.parts[-3] == "e0":
      _directory(tmp_path / "e0", "export")
    assert cli.main(["train", *tiny, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lies inside" in err, err
    assert not out.exists()
  _a_run(tmp_path / "holder" / "nested")
  before = _tree(tmp_path / "holder")
  assert cli.main(["train", *tiny, "--out", str(tmp_path / "holder"), "--overwrite"]) == 2
  assert "holds" in capsys.readouterr().err
  assert _tree(tmp_path / "holder") == before


_HOLDER = """
import sys
from pathlib import Path
from synthpart import rundir
locks = []
for kind in sys.argv[2:]:
  root = Path(sys.argv[1]) / kind
  locks.append(rundir.claim(root, kind))
  (root / rundir.DIR_KINDS[kind][0]).write_text('{"the first": "one"}')
print("held", flush=True)
input()
"""


def test_a_held_directory_is_refused_by_every_command(tmp_path, capsys):
  """Another process holds a budget, a sweep and a run directory: each command is refused in
  one line, exit status 2, and what the first one wrote is left as it was."""
  (tmp_path / "sweep.toml").write_text(SWEEP_TOML)
  (tmp_path / "budget.toml").write_text(BUDGET_TOML)
  commands = {"budget": ["budget", str(tmp_path / "budget.toml")],
              "sweep": ["sweep", str(tmp_path / "sweep.toml")], "run": ["train", *TINY]}
  with subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), *commands],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                        env=ENV) as holder:
    try:
      assert holder.stdout.readline().strip() == "held"
      for kind, command in commands.items():
        root = tmp_path / kind
        before = _tree(root)
        assert cli.main([*command, "--out", str(root), "-q"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"in use by another synthpart run (pid {holder.pid})" in line
        assert _tree(root) == before
    finally:
      holder.kill()


def test_commands_refuse_each_others_directories(tmp_path, capsys):
  (tmp_path / "sweep.toml").write_text(SWEEP_TOML)
  (tmp_path / "budget.toml").write_text(BUDGET_TOML)
  run = tmp_path / "run"
  run.mkdir()
  _a_run(run)
  sweep = _directory(tmp_path / "sweep", "sweep")
  budget = _directory(tmp_path / "budget", "budget")
  launch = _directory(tmp_path / "launch", "launch")
  before = {root: _tree(root) for root in (run, sweep, budget, launch)}
  for command, root, words in [
      (["launch", *TINY, "--local", "2"], run, "train or compare (config.json"),
      (["launch", *TINY, "--local", "2", "--overwrite"], sweep, "sweep (sweep.json"),
      (["train", *TINY, "--overwrite"], launch, "launch (launch.json"),
      (["sweep", str(tmp_path / "sweep.toml")], run, "train or compare (config.json"),
      (["sweep", str(tmp_path / "sweep.toml"), "--dry-run"], budget, "budget (budget.json"),
      (["train", *TINY], sweep, "sweep (sweep.json"),
      (["compare", *TINY, "--resume"], budget, "budget (budget.json"),
      (["budget", str(tmp_path / "budget.toml")], sweep, "sweep (sweep.json"),
      (["budget", str(tmp_path / "budget.toml")], run, "train or compare (config.json")]:
    assert cli.main([*command, "--out", str(root), "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"is the directory of synthpart {words}" in line, line
  assert {root: _tree(root) for root in before} == before


# ---------------------------------------------------------------------------------------------
# --out lines


def test_a_dangling_symlink_is_named_as_one(tmp_path, capsys):
  link = tmp_path / "link"
  link.symlink_to(tmp_path / "missing")
  (tmp_path / "sweep.toml").write_text(SWEEP_TOML)
  for command, out, words in [
      (["train", *TINY], link, f"--out {link} is a symbolic link to {tmp_path / 'missing'}, "
                               "which does not exist"),
      (["sweep", str(tmp_path / "sweep.toml")], link / "x",
       f"cannot be created: {link} is a symbolic link to"),
  ]:
    assert cli.main([*command, "--out", str(out), "-q"]) == 2
    assert words in _one_error_line(capsys.readouterr().err)
  assert not (tmp_path / "missing").exists() and link.is_symlink()


@pytest.mark.slow
def test_a_fresh_process_refuses_another_commands_directory(tmp_path):
  """The command line of a fresh process: one line, exit status 2, the sweep untouched."""
  sweep = _directory(tmp_path / "sweep", "sweep")
  before = _tree(sweep)
  proc = subprocess.run([sys.executable, "-m", "synthpart", "train", *TINY, "--overwrite",
                         "--out", str(sweep)], capture_output=True, text=True, env=ENV,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "is the directory of synthpart sweep" in _one_error_line(proc.stderr)
  assert _tree(sweep) == before


COMPARE = {"command": "compare", "with_model_parallel": False}


def test_resume_refuses_another_command_or_method_set_and_older_runs_resume(tmp_path):
  root = tmp_path / "run"
  rundir.prepare_run_dir(root, {"seed": 1}, resume=False, overwrite=False, fingerprint="f",
                         trains={**COMPARE, "with_model_parallel": True})
  stored = json.loads((root / "config.json").read_text())
  assert stored == {"seed": 1, "data_fingerprint": "f", "command": "compare",
                    "with_model_parallel": True}
  before = (root / "config.json").read_bytes()
  for trains, made in [({"command": "train", "with_model_parallel": False}, "train"),
                       (COMPARE, "compare`")]:
    with pytest.raises(CheckpointError, match=(
        f"--resume: {root} was made by `synthpart compare --with-model-parallel`, not "
        f"`synthpart {made}.*; resume it with the same command")):
      rundir.prepare_run_dir(root, {"seed": 1}, resume=True, overwrite=False, trains=trains)
  # The same command resumes: its keys are not settings (no "differ" for them).
  rundir.prepare_run_dir(root, {"seed": 1}, resume=True, overwrite=False, fingerprint="f",
                         trains={**COMPARE, "with_model_parallel": True})
  assert (root / "config.json").read_bytes() == before
  # A run directory written before config.json said what it trains resumes unchecked.
  (root / "config.json").write_text(json.dumps({"seed": 1}))
  rundir.prepare_run_dir(root, {"seed": 1}, resume=True, overwrite=False,
                         trains={"command": "train", "with_model_parallel": False})
