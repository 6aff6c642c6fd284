"""Kill real training processes (SIGKILL) at chosen points, resume, and lose nothing."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from synthpart import checkpoint

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("resume")


FAULTS = Path(__file__).with_name("faults.py")
FLAGS = ["--hidden", "32,32,32", "--cuts", "2", "--epochs", "3", "--batch-size", "64",
         "--lr", "0.01", "--recovery-epochs", "2", "-q"]


def _train(out: Path, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(checkpoint.CRASH_ENV, None)
  # A killed run goes through tests/faults.py, which dies at `crash_at`.
  command = [str(FAULTS), crash_at] if crash_at else ["-m", "synthpart"]
  return subprocess.run([sys.executable, *command, "train", *FLAGS, *extra, "--out", str(out)],
                        capture_output=True, text=True, env=env, timeout=300)


def _loops(schedule: str) -> list[tuple[str, str]]:
  method = f"pnn-{schedule}"
  return [(method, "segment 0"), (method, "segment 1"), (f"{method}+recovery", "recovery")]


def _final_state(out: Path, schedule: str) -> list:
  policy = checkpoint.Policy(out)
  return [checkpoint.load_params(policy, m, loop) for m, loop in _loops(schedule)]


def _losses(out: Path) -> list:
  runs = json.loads((out / "results.json").read_text())["runs"]
  return [(r["method"], r["test_accuracy"], [s["loss_per_epoch"] for s in r["segments"]],
           [(t["kind"], t["bytes"]) for t in r["transfers"]]) for r in runs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  out = {}
  for schedule in ("sequential", "parallel", "pipelined"):
    path = tmp_path_factory.mktemp(f"reference-{schedule}")
    proc = _train(path, *_schedule(schedule))
    assert proc.returncode == 0, proc.stderr
    out[schedule] = (_final_state(path, schedule), _losses(path))
  return out


KILL_POINTS = [
    ("sequential", "epoch-dispatched:pnn-sequential/segment 0:2"),  # mid-epoch
    ("sequential", "checkpoint-write:pnn-sequential/segment 1:2"),  # during a checkpoint write
    ("sequential", "handover:pnn-sequential:cut 2"),  # between the segments
    ("sequential", "epoch-dispatched:pnn-sequential+recovery/recovery:2"),  # during recovery
    ("parallel", "epoch-dispatched:pnn-parallel/segment 1:3"),  # mid-epoch, parallel
    # Pipelined: segment 0 saved its round, segment 1 not yet (both go back to one round) ...
    ("pipelined", "checkpoint-saved:pnn-pipelined/segment 0:3"),
    ("pipelined", "steps-dispatched:pnn-pipelined/segment 1:2:10"),  # ... and mid-epoch
]


def _schedule(schedule: str) -> list[str]:
  """The flags of a schedule; the pipelined one refreshes every 5 steps of its 22."""
  extra = ["--set", "pipeline.refresh_steps=5"] if schedule == "pipelined" else []
  return ["--schedule", schedule, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("schedule,point", KILL_POINTS)
def test_killed_run_resumes_bit_for_bit(tmp_path, reference, schedule, point):
  killed = _train(tmp_path, *_schedule(schedule), crash_at=point)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = _train(tmp_path, *_schedule(schedule), "--resume")
  assert resumed.returncode == 0, resumed.stderr
  want_params, want_losses = reference[schedule]
  for got, want in zip(_final_state(tmp_path, schedule), want_params):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert np.array_equal(a, b)
  assert _losses(tmp_path) == want_losses


def test_resume_refuses_other_settings(tmp_path):
  assert _train(tmp_path, "--epochs", "1", "--recovery-epochs", "0").returncode == 0
  proc = _train(tmp_path, "--epochs", "2", "--recovery-epochs", "0", "--kappa", "3", "--resume")
  assert proc.returncode == 2
  line, = proc.stderr.strip().splitlines()
  assert "settings differ" in line and "sil.scale" in line and "train.epochs" in line
  proc = _train(tmp_path, "--epochs", "1", "--recovery-epochs", "0")
  assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr


def test_corrupt_checkpoint_is_one_line(tmp_path):
  assert _train(tmp_path, "--epochs", "1", "--recovery-epochs", "0").returncode == 0
  step = tmp_path / "checkpoints" / "pnn-sequential" / "segment-0" / "1"
  for f in (step / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  proc = _train(tmp_path, "--epochs", "1", "--recovery-epochs", "0", "--resume")
  assert proc.returncode == 2, proc.stderr
  line, = proc.stderr.strip().splitlines()
  assert line.startswith("synthpart: error: checkpoint ") and "segment-0" in line
