"""The run directory: one process at a time, one run at a time, nothing of two runs mixed.

A run directory::

  DIR/.lock              flock'ed by the one process using DIR; holds that process's pid
  DIR/config.json        the run's settings; --resume refuses a different one
  DIR/results.json       rewritten atomically after every method
  DIR/log.txt            one line per epoch of every loop, and every note
  DIR/checkpoints/       per-loop checkpoints (`synthpart.checkpoint`)

One process at a time uses a run directory: `lock_run_dir` takes an exclusive `flock` on
DIR/.lock for the whole run, which the system releases however the process ends. `--overwrite`
renames the earlier run's files into DIR/.trash-<time>-<pid>/ (config.json first) before anything
new is written and deletes them once the new config.json is in place, so a run killed at any point
never leaves files of both runs in DIR: at worst what is left of the old run without its
config.json, which --resume refuses and another --overwrite clears.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from synthpart.checkpoint import crash_point
from synthpart.config import Config
from synthpart.errors import CheckpointError
from synthpart.files import write_json_atomic

LOCK_FILE = ".lock"
TRASH_PREFIX = ".trash-"


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
  """The dotted settings whose values differ between two config documents; a setting one of
  them lacks (a run directory written before the setting existed) counts at its default."""
  defaults = _flatten(json.loads(json.dumps(Config().to_dict())))
  a, b = _flatten(stored), _flatten(json.loads(json.dumps(current)))
  return sorted(k for k in a.keys() | b.keys()
                if a.get(k, defaults.get(k, "<unset>")) != b.get(k, defaults.get(k, "<unset>")))


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
    if not isinstance(stored, dict):
      raise CheckpointError(f"{stored_path} is not a settings object (a JSON object of the "
                            f"run's settings); it holds a {type(stored).__name__}")
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


