"""The run directory of a launch: its paths, the plan, segment statuses, parameter files and
hand-off arrays. Every file is written atomically (temporary name, fsync, rename), so a reader
sees a whole file or none.

One launch at a time uses a directory: its lock (`synthpart.rundir.lock_run_dir`, an flock on
DIR/.lock) is held by the `--local` launcher for its whole life, or else by process 0 (and by a
rerun of chosen segments), and taken before anything is written, so that a second launch into
the directory is refused before it touches a file of the running one. Processes a launcher
starts find its pid in $SYNTHPART_LAUNCHER, and check that DIR/.lock names it.

  DIR/.lock                        the lock, holding its holder's pid

  DIR/launch.json                  the plan: settings, processes, segment -> process, and the
                                   fingerprint of the data process 0 read (process 0)
  DIR/process-<i>/process.json     host, pid and devices of process i
  DIR/process-<i>/heartbeat        a counter process i bumps every second
  DIR/process-<i>/segment-<k>.npz  the trained parameters of segment k, for i = k mod N
  DIR/process-<i>/segment-<k>.json its status (done | failed | skipped), result, bytes sent
  DIR/process-<i>/progress.txt     one line per epoch
  DIR/process-<i>/exit.json        its exit code, written last
  DIR/process-<i>/log.txt          its output (--local)
  DIR/handoff/cut-<c>.npy          sequential schedule: the activations at cut c, float32 [N, w]
  DIR/results.json                 process 0, once every segment is done: the schema of
                                   `synthpart train` plus "processes", the bytes each one sent
  DIR/failures.json                when a segment failed: which, why, how to rerun it (process
                                   0; with --local, the launcher adds exit codes and the cause)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from synthpart.config import Config
from synthpart.data import check_fingerprint
from synthpart.errors import ConfigError, SynthpartError
from synthpart.files import write_atomic, write_json_atomic
from synthpart.model import Params
from synthpart.rundir import LOCK_FILE, RunLock, claim, holds_run

Status = dict[str, Any]  # one segment's status document (segment-<k>.json)
ENV_LAUNCHER = "SYNTHPART_LAUNCHER"  # the pid of the launcher that started this process


def owner(segment: int, num_processes: int) -> int:
  """The process that trains `segment`."""
  return segment % num_processes


def segments_of(process_id: int, num_processes: int, num_segments: int) -> tuple[int, ...]:
  """The segments process `process_id` trains, in order."""
  return tuple(k for k in range(num_segments) if owner(k, num_processes) == process_id)


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The paths of a multi-process run directory (see the module docstring)."""
  root: Path
  num_processes: int

  def process(self, i: int) -> Path:
    return self.root / f"process-{i}"

  def home(self, segment: int) -> Path:
    return self.process(owner(segment, self.num_processes))

  def status(self, segment: int) -> Path:
    return self.home(segment) / f"segment-{segment}.json"

  def params(self, segment: int) -> Path:
    return self.home(segment) / f"segment-{segment}.npz"

  def handoff(self, cut: int) -> Path:
    return self.root / "handoff" / f"cut-{cut}.npy"

  def heartbeat(self, i: int) -> Path:
    return self.process(i) / "heartbeat"

  def exit_marker(self, i: int) -> Path:
    return self.process(i) / "exit.json"

  @property
  def plan(self) -> Path:
    return self.root / "launch.json"

  @property
  def results(self) -> Path:
    return self.root / "results.json"

  @property
  def failures(self) -> Path:
    return self.root / "failures.json"


def read_json(path: Path) -> Any | None:
  """The document at `path`, or None where there is none yet."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None


def save_array(path: Path, array: np.ndarray) -> None:
  """Writes a hand-off array as .npy."""
  write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def save_params(path: Path, params: Params) -> int:
  """Saves a segment's parameters (one dict of arrays per layer) as .npz; returns their bytes.

  Dtypes numpy cannot name (bfloat16) are stored as float32, which holds them exactly, and
  restored from the recorded names.
  """
  arrays: dict[str, Any] = {}
  dtypes: dict[str, str] = {}
  for i, layer in enumerate(params):
    for name, value in layer.items():
      a = np.asarray(value)
      dtypes[f"{i}/{name}"] = a.dtype.name
      arrays[f"{i}/{name}"] = a if a.dtype.kind == "f" and a.dtype.isnative and a.dtype.name in (
          "float16", "float32", "float64") else a.astype(np.float32)
  arrays["dtypes"] = np.array(json.dumps(dtypes))
  write_atomic(path, lambda f: np.savez(f, **arrays))
  return sum(np.asarray(v).nbytes for layer in params for v in layer.values())


def load_params(path: Path) -> Params:
  """A segment's parameters as `save_params` wrote them, in their own dtypes."""
  with np.load(path, allow_pickle=False) as z:
    dtypes = json.loads(str(z["dtypes"]))
    layers: dict[int, dict[str, Any]] = {}
    for key, dtype in dtypes.items():
      i, name = key.split("/")
      layers.setdefault(int(i), {})[name] = np.asarray(z[key]).astype(jnp.dtype(dtype))
  return [layers[i] for i in sorted(layers)]


def status_record(segment: int, process: int, status: str, error: str = "",
                  **extra: Any) -> Status:
  """A segment's status document."""
  return {"segment": segment, "process": process, "status": status, "error": error, **extra}


def error_text(e: BaseException) -> str:
  """One line for a status: the message of a user error, else the exception's type and message."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return text if isinstance(e, SynthpartError) else f"{type(e).__name__}: {text}"[:500]


def write_status_once(run: RunDir, status: Status) -> None:
  """Writes a status unless the segment already has one (its own process's word wins)."""
  if not run.status(status["segment"]).exists():
    write_json_atomic(run.status(status["segment"]), status)


# launch.json's key for the fingerprint of the launch's data (`synthpart.data.fingerprint`).
DATA_FINGERPRINT = "data_fingerprint"


def write_plan(run: RunDir, config: Config, fingerprint: str | None = None) -> None:
  """The plan of a launch: its settings, processes, which process trains which segment, and
  the fingerprint of its data (every process checks its own copy against it)."""
  num_segments = config.model.num_segments
  plan: dict[str, Any] = {
      "num_processes": run.num_processes, "schedule": config.schedule,
      "segments": {str(k): owner(k, run.num_processes) for k in range(num_segments)},
      "config": config.to_dict()}
  if fingerprint is not None:
    plan[DATA_FINGERPRINT] = fingerprint
  write_json_atomic(run.plan, plan)


def check_data(run: RunDir, config: Config, fingerprint: str, what: str) -> None:
  """Refuses data whose fingerprint differs from the one the launch's plan records (none
  recorded, or no plan: nothing to check); `what` names who refuses, e.g. "process 1"."""
  plan = read_json(run.plan)
  recorded = plan.get(DATA_FINGERPRINT) if isinstance(plan, dict) else None
  check_fingerprint(config.data.name, recorded, fingerprint, what, str(run.plan),
                    "give every process of a launch the data it was started on")


def same_settings(config: Config, plan: dict[str, Any]) -> bool:
  """Whether `config` is the one the plan of a launch was written with."""
  def canonical(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=list)
  return canonical(json.loads(canonical(config.to_dict()))) == canonical(plan.get("config"))


def check_fresh(run: RunDir, overwrite: bool) -> None:
  """A launch never mixes with an earlier one in the same directory, unless told to replace it."""
  if holds_run(run.root, (run.plan.name, run.results.name)) and not overwrite:
    raise ConfigError(f"--out {run.root} holds an earlier launch; pass --overwrite to replace "
                      "it, rerun its failed segments with --only-segment K, or choose another "
                      "directory")


def clear_run(run: RunDir) -> None:
  """Removes an earlier launch's outcome (statuses, parameters, hand-offs, results); logs stay."""
  for path in (run.plan, run.results, run.failures):
    path.unlink(missing_ok=True)
  shutil.rmtree(run.root / "handoff", ignore_errors=True)
  for directory in run.root.glob("process-*"):
    for path in [*directory.glob("segment-*"), directory / "exit.json"]:
      path.unlink(missing_ok=True)



def lock_launch_dir(root: Path) -> RunLock | None:
  """Takes the lock of launch directory `root` for as long as the caller holds the result; None
  where the launcher that started this process holds it ($SYNTHPART_LAUNCHER, checked against
  the pid DIR/.lock records and this process's parent).

  Raises `CheckpointError` (having changed nothing) where another process holds the lock or
  another command (a run, a sweep...) wrote the directory (`synthpart.rundir.claim`), and
  `ConfigError` where $SYNTHPART_LAUNCHER names a process that does not hold it.
  """
  launcher = os.environ.get(ENV_LAUNCHER)
  if not launcher:
    return claim(root, "launch")
  try:
    holder = (root / LOCK_FILE).read_text().strip()
  except OSError:
    holder = ""
  if holder != launcher or str(os.getppid()) != launcher:
    raise ConfigError(f"${ENV_LAUNCHER} says launcher {launcher} holds {root / LOCK_FILE}, but "
                      f"it does not (the lock names {holder or 'no one'}): the launcher has "
                      f"ended; unset ${ENV_LAUNCHER} to launch on your own")
  return None
