"""Per-loop checkpoints (orbax) and the run directory that holds them.

A run directory::

  DIR/.lock              flock'ed by the one process using DIR; holds that process's pid
  DIR/config.json        the run's settings; --resume refuses a different one
  DIR/results.json       rewritten atomically after every method
  DIR/log.txt            one line per epoch of every loop, and every note
  DIR/checkpoints/<method>/<loop>/<epoch>/   orbax: state (params + optimizer) and meta (JSON)

Each loop (the conventional network, a segment, the recovery epochs) checkpoints its own
`TrainState` every `every` epochs and after its last one, keeping the last `keep`. The JSON meta
holds the epoch, the loop's PRNG key data, its losses and timings so far, and the method's curve.
The data order needs no storing: an epoch's order is a pure function of (key, epoch). A sha256
of the arrays, kept in the meta, catches damage that orbax's own format would not notice.
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-write
leaves the previous checkpoint as the latest (and `restore` removes what it left). Checkpoints
are arrays and JSON: never pickles.

One process at a time uses a run directory: `lock_run_dir` takes an exclusive `flock` on
DIR/.lock for the whole run, which the system releases however the process ends. `--overwrite`
renames the earlier run's files into DIR/.trash-<time>-<pid>/ (config.json first) before anything
new is written and deletes them once the new config.json is in place, so a run killed at any point
never leaves files of both runs in DIR: at worst what is left of the old run without its
config.json, which --resume refuses and another --overwrite clears.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from synthpart.errors import CheckpointError, DiskFullError
from synthpart.files import is_disk_full, write_json_atomic

CRASH_ENV = "SYNTHPART_CRASH_AT"
LOCK_FILE = ".lock"
TRASH_PREFIX = ".trash-"
# Orbax writes each step into "<step>.orbax-checkpoint-tmp-<n>" and renames it when complete.
ORBAX_TMP = ".orbax-checkpoint-tmp"


def crash_point(name: str, directory: Path | None = None) -> None:
  """SIGKILLs this process where $SYNTHPART_CRASH_AT names this point: resume is tested against
  real deaths. With `directory`, death comes while orbax is writing into it."""
  if os.environ.get(CRASH_ENV) != name:
    return
  if directory is None:
    os.kill(os.getpid(), signal.SIGKILL)

  def kill_when_writing() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      if directory.exists() and any("tmp" in p.name for p in directory.iterdir()):
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(0.0005)

  threading.Thread(target=kill_when_writing, daemon=True).start()


@dataclasses.dataclass(frozen=True)
class Policy:
  """Where and how often loops checkpoint."""
  root: Path
  every: int = 1
  keep: int = 2

  def loop_dir(self, method: str, loop: str) -> Path:
    return self.root / "checkpoints" / _slug(method) / _slug(loop)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")


def _manager(directory: Path, keep: int):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def save(policy: Policy, method: str, loop: str, epoch: int, state: Any,
         meta: dict[str, Any]) -> Path:
  """Writes `state` (a pytree of arrays) and `meta` (JSON) as step `epoch` of the loop."""
  directory = policy.loop_dir(method, loop)
  meta = {**meta, "digest": state_digest(state)}
  crash_point(f"checkpoint-write:{method}/{loop}:{epoch}", directory)
  try:
    with _manager(directory, policy.keep) as manager:
      manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()
  except Exception as e:  # orbax and tensorstore wrap the system's error in their own types
    if is_disk_full(e):
      raise DiskFullError(f"no space left on the device writing checkpoint "
                          f"{directory / str(epoch)}") from None
    raise
  crash_point(f"checkpoint-saved:{method}/{loop}:{epoch}")
  return directory / str(epoch)


def state_digest(state: Any) -> str:
  """sha256 over every array's dtype, shape and bytes: orbax stores raw chunks without checksums,
  so a flipped bit would otherwise restore silently."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def remove_incomplete(policy: Policy, method: str, loop: str) -> list[Path]:
  """Deletes the step directories orbax left half-written (a crash or a full disk mid-save);
  returns them. Complete steps are never touched."""
  directory = policy.loop_dir(method, loop)
  if not directory.is_dir():
    return []
  partial = [p for p in directory.iterdir() if ORBAX_TMP in p.name]
  for path in partial:
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
  return partial


def latest(policy: Policy, method: str, loop: str) -> int | None:
  """The newest complete step of a loop, or None."""
  directory = policy.loop_dir(method, loop)
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir()
           if p.name.isdigit() and (p / "meta").exists()]
  return max(steps) if steps else None


def restore(policy: Policy, method: str, loop: str, like: Any,
            device: jax.Device | jax.sharding.Sharding) -> tuple[Any, dict[str, Any]] | None:
  """The loop's newest checkpoint, restored onto `device` in the structure of `like`.

  Returns None where the loop has none. A corrupt or truncated one raises `CheckpointError`.
  Half-written steps left by an interrupted save are deleted first.
  """
  remove_incomplete(policy, method, loop)
  step = latest(policy, method, loop)
  if step is None:
    return None
  path = policy.loop_dir(method, loop) / str(step)
  # A segment group's "device" is already a sharding (replicated over the group's devices).
  sharding = (device if isinstance(device, jax.sharding.Sharding)
              else jax.sharding.SingleDeviceSharding(device))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          like)
  try:
    with _manager(policy.loop_dir(method, loop), policy.keep) as manager:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    if jax.tree.structure(state) != jax.tree.structure(like):
      raise ValueError("its arrays do not match the loop's parameters")
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] != step:
      raise ValueError("its meta has no matching epoch")
    if meta.get("digest") != state_digest(state):
      raise ValueError("its arrays do not match the digest written with them")
  except CheckpointError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first[:200]}") from None
  return state, meta


class RunLock:
  """The exclusive lock of a run directory (`lock_run_dir`), held until `release` or until the
  process ends, however it ends: the system drops a dead process's flock."""

  def __init__(self, root: Path, fd: int, created: Path | None) -> None:
    self.root = root
    self._fd: int | None = fd
    self._created = created  # the outermost directory the lock created, if any

  def __enter__(self) -> RunLock:
    return self

  def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
               traceback: TracebackType | None) -> None:
    self.release()

  def release(self) -> None:
    """Removes the lock file and lets go of the lock; removes the directories the lock created
    where nothing else was written into them."""
    if self._fd is None:
      return
    try:
      (self.root / LOCK_FILE).unlink(missing_ok=True)
    except OSError:
      pass  # the lock goes with the descriptor either way
    os.close(self._fd)
    self._fd = None
    if self._created is not None:
      for directory in [self.root, *self.root.parents]:
        try:
          directory.rmdir()
        except OSError:
          break  # not empty: the run (or another one) wrote into it
        if directory == self._created:
          break


def lock_run_dir(root: Path) -> RunLock:
  """Takes the exclusive lock of run directory `root` (an flock on root/.lock, which records the
  holder's pid), creating `root` where it is missing.

  Raises `CheckpointError`, having changed nothing, where another process holds the lock (naming
  its pid) or where `root` cannot be created or written.
  """
  path = root / LOCK_FILE
  for _ in range(100):
    created = _make_dirs(root)
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
      continue  # a process releasing its lock removed the directory it had created
    except OSError as e:
      raise CheckpointError(_path_problem(root, e)) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise CheckpointError(f"--out {root} is in use by another synthpart run (pid {holder}); "
                            "wait for it to end or choose another --out") from None
    if _same_file(fd, path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
      return RunLock(root, fd, created)
    os.close(fd)  # its holder removed the file while releasing it: a lock on it guards nothing
  raise CheckpointError(f"--out {root}: its lock file {path} keeps disappearing")


def _make_dirs(root: Path) -> Path | None:
  """Creates `root` and its missing parents; returns the outermost one created, if any."""
  outermost = None
  try:
    for directory in [root, *root.parents]:
      if directory.exists():
        break
      outermost = directory
    root.mkdir(parents=True)
  except FileExistsError:
    if not root.is_dir():
      raise CheckpointError(f"--out {root} exists and is not a directory") from None
    return None
  except OSError as e:
    raise CheckpointError(_path_problem(root, e)) from None
  return outermost


def _holder(fd: int) -> str:
  """The pid a lock file records; a new holder writes it just after locking, so wait a little."""
  deadline = time.monotonic() + 2
  while True:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if text or time.monotonic() > deadline:
      return text or "unknown"
    time.sleep(0.01)


def _same_file(fd: int, path: Path) -> bool:
  try:
    named = os.stat(path)
  except FileNotFoundError:
    return False
  held = os.fstat(fd)
  return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _path_problem(root: Path, e: OSError) -> str:
  """A one-line account of why `root` cannot serve as a run directory."""
  if e.errno == errno.ENOTDIR:
    for directory in root.parents:
      try:
        if directory.exists() and not directory.is_dir():
          return f"--out {root} cannot be created: {directory} is a file, not a directory"
      except OSError:
        break
  if e.errno == errno.ENAMETOOLONG:
    return f"--out {root}: a name in it is too long for the file system"
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return f"--out {root} is not writable: {e.strerror}"
  return f"--out {root} cannot be used: {e.strerror}"


def write_run_config(root: Path, config: dict[str, Any]) -> None:
  """Stores the run's settings, atomically."""
  write_json_atomic(root / "config.json", config)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  if isinstance(tree, (list, tuple)) and any(isinstance(v, dict) for v in tree):
    out = {}
    for i, value in enumerate(tree):
      out.update(_flatten(value, f"{prefix}{i}."))
    return out
  return {prefix.rstrip("."): list(tree) if isinstance(tree, tuple) else tree}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """The dotted settings whose values differ between two config documents."""
  a, b = _flatten(stored), _flatten(json.loads(json.dumps(current)))
  return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def holds_run(root: Path, markers: Sequence[str]) -> bool:
  """Whether the run directory `root` already holds a run: one of the files `markers` is in it.

  Raises `CheckpointError` where `root` exists and is not a directory. Every command that claims
  a run directory (a run, a launch) checks it here, and words its refusal itself.
  """
  if root.exists() and not root.is_dir():
    raise CheckpointError(f"--out {root} exists and is not a directory")
  return any((root / name).exists() for name in markers)


def prepare_run_dir(root: Path, config: dict[str, Any], *, resume: bool, overwrite: bool,
                    dry_run: bool = False) -> None:
  """Claims `root` for a run: a fresh directory, or the same run when resuming.

  Refuses a directory holding another run unless `resume` (same settings only) or `overwrite`.
  Nothing is written before the checks pass, and nothing at all with `dry_run`.
  """
  holds_another = holds_run(root, ("config.json", "results.json"))
  stored_path = root / "config.json"
  if resume:
    if not stored_path.exists():
      raise CheckpointError(f"--resume: {root} holds no run to resume (no config.json)")
    try:
      stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{stored_path} cannot be read: {e}") from None
    differing = config_differences(stored, config)
    if differing:
      raise CheckpointError(f"--resume: the settings differ from the run in {root}: "
                            f"{', '.join(differing)}")
    return
  if holds_another and not overwrite:
    raise CheckpointError(f"--out {root} holds another run; pass --resume to continue it or "
                          "--overwrite to replace it")
  if dry_run:
    return
  if overwrite:
    move_aside(root)
  root.mkdir(parents=True, exist_ok=True)
  write_run_config(root, config)
  crash_point("run-dir:config-written")
  for trash in root.glob(f"{TRASH_PREFIX}*"):
    shutil.rmtree(trash, ignore_errors=True)


# What a run (and `synthpart report` on it) writes into its directory: all that --overwrite
# moves aside. Anything else in the directory is the user's and stays where it is.
RUN_FILES = ("config.json", "results.json", "log.txt", "checkpoints", "tensorboard", "report.md",
             "figures")


def _run_entries(root: Path) -> list[Path]:
  """The run's entries of `root`: config.json first and results.json next, then the others and
  the temporary files of interrupted atomic writes of them."""
  order = {name: i for i, name in enumerate(RUN_FILES)}
  temporary = tuple(f".{name}." for name in RUN_FILES)
  entries = [p for p in root.iterdir()
             if p.name in order or (p.name.startswith(temporary) and p.name.endswith(".tmp"))]
  return sorted(entries, key=lambda p: (order.get(p.name, len(order)), p.name))


def move_aside(root: Path) -> Path | None:
  """Renames the run's entries of `root` (`RUN_FILES`) into a fresh `root/.trash-<time>-<pid>/`.

  config.json goes first and results.json next, so a process killed midway leaves a directory
  that `--resume` refuses and a plain run calls occupied; `--overwrite` finishes the job. Each
  rename is atomic. Returns the trash directory, or None where there was nothing to move.
  """
  if not root.is_dir():
    return None
  entries = _run_entries(root)
  if not entries:
    return None
  trash = root / f"{TRASH_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
  trash.mkdir()
  for entry in entries:
    entry.rename(trash / entry.name)
    crash_point(f"overwrite-moved:{entry.name}")
  return trash


def load_params(policy: Policy, method: str, loop: str) -> Any:
  """The parameters of a loop's newest checkpoint, as host arrays (for inspection and tests)."""
  step = latest(policy, method, loop)
  if step is None:
    raise CheckpointError(f"no checkpoint of {method}/{loop} under {policy.root}")
  with _manager(policy.loop_dir(method, loop), policy.keep) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, restored["state"])
