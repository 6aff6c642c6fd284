"""A run directory used by one process at a time, overwrites that leave no mixture, divergence
that cannot pass for a result, and user-caused failures as one line with exit status 2."""

import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthpart import checkpoint, cli, rundir
from synthpart.config import TrainConfig
from synthpart.data.idx import write_idx
from synthpart.errors import DiskFullError, ResourceError
from synthpart.prepare import SETTING_FLAGS
from synthpart.records import LoopRecord, MethodRecord
from synthpart.results import format_table
from synthpart.train import divergence, driver
from synthpart.train.epoch import TrainState
from synthpart.train.loop import Loop, LoopSpec
from synthpart.train.objectives import Constants

TINY = ["--hidden", "16,16", "--cuts", "1", "--epochs", "1", "--recovery-epochs", "0",
        "--batch-size", "64", "--lr", "0.01", "-q"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _strict(path: Path):
  """results.json read by a parser that refuses NaN and Infinity."""
  def refuse(constant):
    raise ValueError(f"{path} holds {constant}")
  return json.loads(path.read_text(), parse_constant=refuse)


def _one_error_line(err: str) -> str:
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("synthpart: error: "), err
  return lines[0]


# ---------------------------------------------------------------------------------------------
# One process per run directory

_WORKER = """
import contextlib, io, json, os, sys, time
from pathlib import Path
from synthpart.cli import main
base, rounds, seed, flags = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
print(json.dumps({"pid": os.getpid()}), flush=True)
for k in range(rounds):
  while not (base / f"go-{k}").exists():
    time.sleep(0.0005)
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = main(["train", *flags, "--seed", seed, "--out", str(base / f"run-{k}")])
  print(json.dumps({"round": k, "rc": rc, "err": err.getvalue()}), flush=True)
"""


@pytest.mark.slow
def test_concurrent_runs_into_one_directory_one_wins(tmp_path):
  """Processes started together on one --out, round after round (every other round into an
  existing empty directory): exactly one trains, the others exit 2 having touched nothing, and
  the settings in config.json are those results.json was trained with."""
  workers, rounds = 3, 6
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(rounds), str(seed),
                             *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV) for seed in range(workers)]
  try:
    pids = [json.loads(p.stdout.readline())["pid"] for p in procs]  # imported, waiting
    outcomes = {"locked": 0, "occupied": 0}
    for k in range(rounds):
      run = tmp_path / f"run-{k}"
      if k % 2:
        run.mkdir()
      (tmp_path / f"go-{k}").touch()
      reports = [json.loads(p.stdout.readline()) for p in procs]
      winners = [i for i, r in enumerate(reports) if r["rc"] == 0]
      assert len(winners) == 1, reports
      winner = winners[0]
      for i, r in enumerate(reports):
        if i == winner:
          continue
        line = _one_error_line(r["err"])
        assert r["rc"] == 2, r
        if f"in use by another synthpart run (pid {pids[winner]})" in line:
          outcomes["locked"] += 1
        else:
          assert "holds another run" in line, line
          outcomes["occupied"] += 1
      config = json.loads((run / "config.json").read_text())
      results = _strict(run / "results.json")
      assert config["seed"] == results["config"]["seed"] == winner
      assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "log.txt",
                                                      "results.json"]
    print(f"{rounds} rounds of {workers} processes: {outcomes}")
    assert outcomes["locked"] + outcomes["occupied"] == rounds * (workers - 1)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  # --resume with other settings (here the seed) is refused, and changes nothing.
  before = (tmp_path / "run-0" / "results.json").read_bytes()
  assert cli.main(["train", *TINY, "--seed", "7", "--resume", "--out",
                   str(tmp_path / "run-0")]) == 2
  assert (tmp_path / "run-0" / "results.json").read_bytes() == before


def test_a_held_directory_is_refused_and_untouched(tmp_path, capsys):
  out = tmp_path / "run"
  with rundir.lock_run_dir(out):
    assert (out / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"in use by another synthpart run (pid {os.getpid()})" in line
    assert [p.name for p in out.iterdir()] == [rundir.LOCK_FILE]
  assert not out.exists()  # the lock created it, nothing else was written: removed again


def test_a_lock_dies_with_its_process(tmp_path):
  out = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                             "from synthpart import rundir; "
                             "rundir.lock_run_dir(Path(sys.argv[1])); print(1, flush=True); "
                             "input()", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=ENV)
  assert holder.stdout.readline().strip() == "1"
  with pytest.raises(Exception, match=f"pid {holder.pid}"):
    rundir.lock_run_dir(out)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with rundir.lock_run_dir(out):  # the system released it
    pass


# ---------------------------------------------------------------------------------------------
# --overwrite


def _train(out: Path, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
  env = dict(ENV)
  env.pop(checkpoint.CRASH_ENV, None)
  if crash_at:
    env[checkpoint.CRASH_ENV] = crash_at
  return subprocess.run([sys.executable, "-m", "synthpart", "train", *TINY, *extra, "--out",
                         str(out)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_overwrite_killed_early_never_mixes_runs(tmp_path):
  out = tmp_path / "run"
  (out / ".trash-mine").mkdir(parents=True)  # the user's own: no command deletes it
  (out / ".trash-mine" / "keep.txt").write_text("mine")
  assert cli.main(["train", *TINY, "--seed", "1", "--out", str(out)]) == 0
  with open(out / "log.txt", "a") as f:
    f.write("a line of the first run\n")
  # Killed after moving config.json aside: the old results alone, which nothing resumes.
  killed = _train(out, "--seed", "2", "--overwrite", crash_at="overwrite-moved:config.json")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert not (out / "config.json").exists() and (out / "results.json").exists()
  assert cli.main(["train", *TINY, "--seed", "2", "--resume", "--out", str(out)]) == 2
  assert cli.main(["train", *TINY, "--seed", "2", "--out", str(out)]) == 2
  # Killed once the new config is written: the new run alone, its log fresh.
  killed = _train(out, "--seed", "2", "--overwrite", crash_at="run-dir:config-written")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert json.loads((out / "config.json").read_text())["seed"] == 2
  assert not (out / "results.json").exists()
  assert "first run" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else "")
  # A last --overwrite finishes and leaves no trash of its own behind.
  assert cli.main(["train", *TINY, "--seed", "3", "--overwrite", "--out", str(out)]) == 0
  assert json.loads((out / "config.json").read_text())["seed"] == 3
  assert _strict(out / "results.json")["config"]["seed"] == 3
  assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".trash-mine"]
  assert (out / ".trash-mine" / "keep.txt").read_text() == "mine"


def test_overwrite_moves_only_the_runs_files(tmp_path):
  root = tmp_path / "run"
  (root / "checkpoints" / "m").mkdir(parents=True)
  for name in ("config.json", "results.json", "log.txt", ".results.json.x1.tmp", "notes.txt"):
    (root / name).write_text("{}")
  rundir.prepare_run_dir(root, {"seed": 5}, resume=False, overwrite=True)
  assert sorted(p.name for p in root.iterdir()) == ["config.json", "notes.txt"]
  assert json.loads((root / "config.json").read_text()) == {"seed": 5}


# ---------------------------------------------------------------------------------------------
# Divergence


def test_a_diverged_method_is_flagged_and_the_others_kept(tmp_path, capsys):
  out = tmp_path / "run"
  # Segment 1 of both schedules at Adam's lr 1e3; the conventional network at 0.01.
  rc = cli.main(["compare", *TINY[:-1], "--epochs", "2", "--set", "segments.1.learning_rate=1e3",
                 "--set", "train.chance_epochs=2", "-q", "--out", str(out)])
  captured = capsys.readouterr()
  assert rc == cli.EXIT_DIVERGED == 3
  document = _strict(out / "results.json")
  status = {r["method"]: (r["status"], r["test_accuracy"]) for r in document["runs"]}
  assert status["conventional"][0] == "ok" and status["conventional"][1] > 0.3
  assert (status["pnn-sequential"] == status["pnn-parallel"] == status["pnn-pipelined"]
          == ("diverged", None))
  assert "DIVERGED" in captured.out and "%" in captured.out
  lines = captured.err.strip().splitlines()
  # Stopped at chance, or at once where the loss blew up past 1000 times its start.
  assert len(lines) == 3 and all(
      "diverged" in line and ("chance" in line or "over 1000 times" in line) for line in lines)


def test_non_finite_losses_are_null_in_strict_json(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["train", *TINY[:-1], "--cuts", "", "--lr", "1e30", "-q", "--out",
                   str(out)]) == 3
  run, = _strict(out / "results.json")["runs"]
  segment, = run["segments"]
  assert run["status"] == "diverged" and segment["diverged"] and segment["divergence"]
  assert None in segment["loss_per_epoch"] or "parameters" in segment["divergence"]
  assert "DIVERGED" in capsys.readouterr().out


def _loop(params, chance=None, chance_epochs=0, memory=None) -> Loop:
  spec = LoopSpec("pnn-parallel", "segment 1", None,
                       TrainConfig(learning_rate=1e-3, batch_size=32), jax.devices()[0])
  info = LoopRecord("segment 1", (0, 1), "x", "cpu:0", "adam", 1e-3, 32, 10, 4, memory=memory)
  return Loop(spec, info, lambda *a: None, TrainState(params, ()), {}, Constants(),
                   jax.random.key(0), chance=chance, chance_epochs=chance_epochs)


def test_what_counts_as_diverged():
  finite = {"w": jnp.ones(3)}
  assert _loop(finite).record_epoch(jnp.array([1.0]), 0.1)
  loop = _loop({"w": jnp.array([1.0, jnp.inf])})
  assert not loop.record_epoch(jnp.array([0.5]), 0.1) and "parameters" in loop.divergence
  assert loop.record().diverged and loop.record().divergence == loop.divergence
  loop = _loop(finite)
  assert not loop.record_epoch(jnp.array([0.5, jnp.nan]), 0.1) and "nan" in loop.divergence
  chance = math.log(10)
  stuck = _loop(finite, chance, 3)
  assert [stuck.record_epoch(jnp.array([v]), 0.1) for v in (2.4, 2.31, 1e4)] == [
      True, True, False]
  assert "chance" in stuck.divergence
  # A slow learner crossing below chance within the patience goes on.
  slow = _loop(finite, chance, 3)
  assert all(slow.record_epoch(jnp.array([v]), 0.1) for v in (2.36, 2.32, 2.27, 2.30, 2.29))
  never = _loop(finite, chance, 0)
  assert all(never.record_epoch(jnp.array([v]), 0.1) for v in (3.0,) * 6)
  assert divergence.chance_loss(np.array([0, 1, 2, 3] * 5)) == pytest.approx(math.log(4))
  assert divergence.chance_loss(np.zeros(7, int)) is None


def test_the_table_says_diverged():
  ok = MethodRecord("conventional", test_accuracy=0.9)
  bad = MethodRecord("pnn-parallel", test_accuracy=0.1, segments=(LoopRecord(
      "segment 1", (0, 1), "x", "cpu:0", "adam", 1e3, 32, 3, 4, (2.3, math.nan), diverged=True,
      divergence="loss nan at epoch 2"),))
  table = format_table([ok, bad])
  assert "90.00%" in table and "DIVERGED" in table and "10.00" not in table
  assert bad.to_dict()["status"] == "diverged" and math.isnan(bad.to_dict()["test_accuracy"])


# ---------------------------------------------------------------------------------------------
# User-caused failures: one line, exit status 2


def test_unusable_out_directories(tmp_path, capsys, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("")
  for out, words in [(a_file / "run", "is a file, not a directory"),
                     (tmp_path / ("x" * 300), "too long"),
                     (tmp_path / ("y" * 300) / "run", "too long")]:
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    assert words in _one_error_line(capsys.readouterr().err)
  read_only = tmp_path / "read-only"
  read_only.mkdir()
  real_open = os.open

  def refuse(path, *args, **kwargs):  # root ignores permissions: refuse as a read-only disk would
    if str(path).startswith(str(read_only)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(os, "open", refuse)
  assert cli.main(["train", *TINY, "--out", str(read_only)]) == 2
  assert "is not writable" in _one_error_line(capsys.readouterr().err)
  assert list(read_only.iterdir()) == []


def test_a_split_without_images(tmp_path, capsys):
  data = tmp_path / "mnist"
  data.mkdir()
  rng = np.random.default_rng(0)
  for stem, n in (("train", 64), ("t10k", 0)):
    write_idx(data / f"{stem}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), np.uint8))
    write_idx(data / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
  out = tmp_path / "run"
  assert cli.main(["train", *TINY, "--dataset", "mnist", "--data-dir", str(data), "--batch-size",
                   "8", "--out", str(out)]) == 2
  assert "test images has 0 examples" in _one_error_line(capsys.readouterr().err)
  assert not out.exists()


def test_a_full_disk_says_which_file_and_resume_continues(tmp_path, capsys, monkeypatch):
  out = tmp_path / "run"
  real_replace = os.replace

  def full(src, dst, *args, **kwargs):
    if str(dst).endswith("results.json"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_replace(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, "replace", full)
  assert cli.main(["train", *TINY, "--out", str(out)]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert f"writing {out / 'results.json'}" in line and "--resume" in line
  assert not list(out.glob(".results.json.*"))  # no temporary file left behind
  monkeypatch.setattr(os, "replace", real_replace)
  assert cli.main(["train", *TINY, "--resume", "--out", str(out)]) == 0
  assert _strict(out / "results.json")["runs"][0]["status"] == "ok"


def test_a_full_disk_while_checkpointing(tmp_path, monkeypatch):
  policy = checkpoint.Policy(tmp_path)

  def full(*args, **kwargs):
    raise ValueError(f"tensorstore write failed: {os.strerror(errno.ENOSPC)}")

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full)
  with pytest.raises(DiskFullError, match="writing checkpoint .*segment-0/1"):
    checkpoint.save(policy, "m", "segment 0", 1, {"w": jnp.ones(2)}, {"epoch": 1})


def test_restore_removes_half_written_steps(tmp_path):
  policy = checkpoint.Policy(tmp_path)
  state = {"w": jnp.arange(3.0)}
  checkpoint.save(policy, "m", "loop", 1, state, {"epoch": 1})
  partial = policy.loop_dir("m", "loop") / f"2{checkpoint.ORBAX_TMP}-1234"
  (partial / "state").mkdir(parents=True)
  restored, meta = checkpoint.restore(policy, "m", "loop", state, jax.devices()[0])
  assert meta["epoch"] == 1 and np.array_equal(restored["w"], state["w"])
  assert not partial.exists()


def test_out_of_memory_names_the_loop(tmp_path):
  def exhausted(*args):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 96.00GiB")

  loop = _loop({"w": jnp.ones(2)}, memory={"peak": 3 * 2**30})
  loop.epoch_fn = exhausted
  with pytest.raises(ResourceError, match="pnn-parallel segment 1 .*batch size 32.*3,072.0 MiB"):
    driver.drive([loop], MethodRecord("pnn-parallel"))


def test_sweep_and_report_inputs(tmp_path, capsys):
  binary = tmp_path / "sweep.toml"
  binary.write_bytes(b"seeds = [0]\n\xff\xfe")
  for argv, words in [(["sweep", str(tmp_path), "--out", str(tmp_path / "o")], "is a directory"),
                      (["sweep", str(binary), "--out", str(tmp_path / "o")], "not UTF-8")]:
    assert cli.main(argv) == 2
    assert words in _one_error_line(capsys.readouterr().err)
  run = tmp_path / "run"
  run.mkdir()
  (run / "results.json").write_text(json.dumps({"schema": 1, "command": "train", "runs": []}))
  assert cli.main(["report", str(run), "--no-memory"]) == 2
  assert "dataset is missing" in _one_error_line(capsys.readouterr().err)
  (run / "results.json").write_bytes(b'{"schema": 1, "\xff": 2}')
  assert cli.main(["report", str(run), "--no-memory"]) == 2
  assert "not UTF-8" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# Every setting flag, fed values it must refuse before any training


_INTEGER = ["-1", "1e400", "nan", "inf", "", "abc", "½", "🙂", "1.5", "99999999999999999999999"]
_NUMBER = ["-1", "nan", "inf", "-inf", "", "abc", "∞", "1e400", "0x", "🙂"]
_CHOICE = ["", "nope", "ünïcode", "-1", "nan", "1e400", "🙂"]
_BAD = {
    "--dataset": _CHOICE, "--activation": _CHOICE, "--dtype": _CHOICE,
    "--param-dtype": _CHOICE, "--sil-kind": _CHOICE, "--sil-loss": _CHOICE,
    "--schedule": _CHOICE, "--optimizer": _CHOICE,
    "--validation-size": ["-1", "nan", "", "abc", "1.5", "½", "99999999999999999999999"],
    "--hidden": ["-1", "0", "", "a,b", "nan", "1e400", "16,-3", "99999999999999999999999", "🙂"],
    "--cuts": ["-1", "0", "99", "a", "nan", "1e400", "2,1", "🙂"],
    "--kappa": [*_NUMBER, "0", "1e308", "1e7"],
    "--noise": ["-1", "nan", "inf", "", "abc", "∞", "🙂"],
    "--lr": [*_NUMBER, "0"],
    "--recovery-lr": [*_NUMBER, "0"],
    "--batch-size": ["0", "-1", "nan", "inf", "", "abc", "1.5", "99999999999999999999999"],
    "--epochs": [*_INTEGER, "0", "1e23", "1000001"],
    "--recovery-epochs": [*_INTEGER, "1000001"],
    "--seed": [*_INTEGER, str(2**63), "-5"],
    "--group-sizes": ["0", "-1", "a", "nan", "1,2,3", "99999999999999999999999", "🙂"],
    "--data-dir": ["/nonexistent/ünïcode", "/dev/null"],
    "--weight-decay": ["-1", "nan", "inf", "", "abc", "∞", "🙂"],
    "--lr-schedule": _CHOICE,
    "--warmup-epochs": ["-1", "nan", "inf", "", "abc", "🙂", "1e400"],
    "--clip-norm": ["-1", "nan", "inf", "", "abc", "∞", "🙂"],
    "--sil-seed": [*_INTEGER, str(2**63), "-5"],
    "--init-seed": [*_INTEGER, str(2**63), "-5"],
    "--order-seed": [*_INTEGER, str(2**63), "-5"],
    "--prng-impl": _CHOICE,
}


def test_every_flag_is_covered():
  assert set(_BAD) == set(SETTING_FLAGS)


@pytest.mark.parametrize("case", range(60))
def test_bad_setting_values_are_one_line(case, tmp_path, capsys):
  rng = random.Random(case)
  flag = sorted(_BAD)[case % len(_BAD)]
  value = rng.choice(_BAD[flag])
  extra = ["--dataset", "mnist"] if flag == "--data-dir" else []
  out = tmp_path / "run"
  start = time.perf_counter()
  assert cli.main(["train", "--hidden", "8,8", "--cuts", "1", *extra, f"{flag}={value}",
                   "--out", str(out), "-q"]) == 2, (flag, value)
  _one_error_line(capsys.readouterr().err)
  assert not out.exists(), (flag, value)
  assert time.perf_counter() - start < 20, (flag, value)


@pytest.mark.slow
def test_a_run_on_a_full_tmpfs_resumes_bit_identical(tmp_path):
  """A real full disk: a small tmpfs filled up mid-run, then space freed and --resume."""
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  try:
    flags = ["train", "--hidden", "64,64", "--cuts", "1", "--epochs", "4",
             "--recovery-epochs", "1", "-q"]
    filler = mount / "filler"
    with open(filler, "wb") as f:  # leave about 300 KB: enough to start, not to finish
      f.write(b"\0" * (4 * 2**20 - 300 * 2**10))
    out = mount / "run"
    full = subprocess.run([sys.executable, "-m", "synthpart", *flags, "--out", str(out)],
                          capture_output=True, text=True, env=ENV)
    # One line, and nothing from orbax's and tensorstore's writer threads as they end.
    assert full.returncode == 2, full.stderr
    (line,) = full.stderr.strip().splitlines()
    assert line.startswith("synthpart: error:") and "no space left" in line and "--resume" in line
    filler.unlink()
    resumed = subprocess.run([sys.executable, "-m", "synthpart", *flags, "--resume", "--out",
                              str(out)], capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "synthpart", *flags, "--out", str(reference)],
                          capture_output=True, env=ENV).returncode == 0
    a, b = _strict(out / "results.json"), _strict(reference / "results.json")
    for x, y in zip(a["runs"], b["runs"]):
      assert x["test_accuracy"] == y["test_accuracy"]
      assert [s["loss_per_epoch"] for s in x["segments"]] == [
          s["loss_per_epoch"] for s in y["segments"]]
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
