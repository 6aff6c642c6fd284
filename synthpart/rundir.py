"""The directories the commands write: one process at a time, one kind of directory each,
nothing of two runs mixed, nothing of the user's moved or deleted.

Every command that writes a directory claims it first (`claim(root, kind)`): the exclusive
`flock` on DIR/.lock (`lock_run_dir`), held for the whole command and released by the system
however the process ends, and a refusal of a directory another command wrote. `DIR_KINDS` tells
the kinds apart by their marker files: a run (`train`, `compare`: config.json, results.json), a
sweep (sweep.json), a budget search (budget.json), a launch (launch.json), an exported model
(model.json), a benchmark (bench.json), a report written elsewhere than its run (report.md).
A sweep's runs and a budget's sweeps (and their runs) are the command's own directories inside
its own (`OWN_NESTINGS`); no other command claims a directory inside another command's, or one
holding another command's directory below it (`refuse_nesting`).

A run directory::

  DIR/.lock              flock'ed by the one process using DIR; holds that process's pid
  DIR/config.json        the run's settings, its data's fingerprint (`data_fingerprint`) and
                         what it trains (`RUN_KEYS`: "command", "with_model_parallel");
                         --resume refuses different settings, data, command or methods
  DIR/results.json       rewritten atomically after every method
  DIR/log.txt            one line per epoch of every loop, and every note
  DIR/checkpoints/       per-loop checkpoints (`synthpart.checkpoint`)

A directory without config.json and results.json holds no run: a run uses it as it is, but
refuses one holding entries named like a run's (`RUN_FILES`: log.txt, checkpoints/, report.md,
figures/...), which are the user's; a run would write into them and a later --overwrite would
take them for the run's.

`--overwrite` renames the earlier run's files (`RUN_FILES` only) into a fresh trash directory
DIR/.trash-<time>-<pid>/ (config.json first; `synthpart.trash`) before anything new is written and
deletes it once the new config.json is in place, so a run killed at any point never leaves files
of both runs in DIR: at worst what is left of the old run without its config.json, which a plain
run and --resume refuse and another --overwrite clears. synthpart deletes only the trash
directories it made, whose names it recorded before moving anything into them; an --overwrite
that cannot move an entry puts back what it had moved and changes nothing. `--overwrite` on a
directory holding no run moves nothing.

It is over 400 lines because every rule about which directory a command may write is here,
in one place: the lock, the kinds and their nestings, the overwrite and resume checks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from synthpart.checkpoint import crash_point
from synthpart.config import Config
from synthpart.data import check_fingerprint
from synthpart.errors import CheckpointError
from synthpart.files import write_json_atomic
from synthpart.trash import empty_trash, move_aside, pending_trash, put_back, recorded_trash

LOCK_FILE = ".lock"
# config.json's key for the fingerprint of the run's data (`synthpart.data.fingerprint`).
DATA_FINGERPRINT = "data_fingerprint"
# config.json's top-level keys that say what the run trains: the command (`train`, `compare`)
# and its options that choose the methods. Not settings: `config_differences` never sees them.
RUN_KEYS = ("command", "with_model_parallel")


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
      raise CheckpointError(_not_a_directory(root)) from None
    return None
  except OSError as e:
    raise CheckpointError(_path_problem(root, e)) from None
  return outermost


def check_out_path(root: Path) -> None:
  """Refuses, in one line, an `--out` that cannot be a directory: a file, a symbolic link to
  nothing (or a loop of them), or a path through one. A missing `root` passes: it is created."""
  try:
    if root.is_dir() or not (root.exists() or root.is_symlink()):
      return
  except OSError as e:
    if e.errno == errno.ENAMETOOLONG:
      return  # `lock_run_dir` says which name
    raise CheckpointError(_path_problem(root, e)) from None
  raise CheckpointError(_not_a_directory(root))


def _not_a_directory(root: Path) -> str:
  """Why `root`, which a directory cannot be made at, is not one: the first of it and its
  parents that is a symbolic link to nothing, or that is something else than a directory."""
  for path in [root, *root.parents]:
    where = f"--out {root} is" if path == root else f"--out {root} cannot be created: {path} is"
    try:
      if path.is_symlink():
        target = os.readlink(path)
        try:
          os.stat(path)
        except FileNotFoundError:
          return (f"{where} a symbolic link to {target}, which does not exist; create its "
                  "target or choose another --out")
        except OSError as e:
          return f"{where} a symbolic link that cannot be followed: {e.strerror}"
      if path.exists() and not path.is_dir():
        if path == root:
          return f"--out {root} exists and is not a directory"
        return f"--out {root} cannot be created: {path} is a file, not a directory"
    except OSError as e:
      return f"--out {root} cannot be used: {e.strerror}"
  return f"--out {root} exists and is not a directory"


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


# ---------------------------------------------------------------------------------------------
# The kinds of directories the commands write

# Each kind's marker files, checked in this order: a directory's kind is the first whose marker
# is in it (a launch directory holds results.json too, so launch comes before run).
DIR_KINDS: dict[str, tuple[str, ...]] = {
  "launch": ("launch.json",),
  "export": ("model.json",),
  "budget": ("budget.json",),
  "sweep": ("sweep.json",),
  "run": ("config.json", "results.json"),
  "bench": ("bench.json",),
  "report": ("report.md",),
}
_COMMANDS = {"launch": "launch", "export": "export", "budget": "budget", "sweep": "sweep",
             "run": "train or compare", "bench": "bench", "report": "report"}
# The commands' own nestings: the kinds of directory each kind's command makes inside its own.
OWN_NESTINGS: dict[str, tuple[str, ...]] = {"sweep": ("run",), "budget": ("sweep", "run")}


def dir_kind(root: Path) -> tuple[str, str] | None:
  """The kind of directory `root` is (a key of `DIR_KINDS`) and the marker file that says so, or
  None where it holds no marker (missing, empty, or only the user's files)."""
  for kind, markers in DIR_KINDS.items():
    for marker in markers:
      try:
        if (root / marker).exists():
          return kind, marker
      except OSError:
        return None  # a name too long: `lock_run_dir` says which
  return None


def refuse_foreign(root: Path, kind: str) -> None:
  """Refuses, in one line (`CheckpointError`), an `--out` that another command wrote: `root` is
  a directory of another kind than `kind` (a key of `DIR_KINDS`), or cannot be a directory."""
  if kind not in DIR_KINDS:
    raise ValueError(f"unknown kind of directory {kind!r}; known: {', '.join(DIR_KINDS)}")
  check_out_path(root)
  found = dir_kind(root)
  if found is not None and found[0] != kind:
    raise CheckpointError(f"--out {root} is the directory of synthpart {_COMMANDS[found[0]]} "
                          f"({found[1]} is in it); synthpart {_COMMANDS[kind]} does not write "
                          "into another command's directory: choose another --out")


# What else a command's directory holds besides its marker, where the marker alone is a common
# name for a file of the user's (a config.json, a report.md of a project): above or below an
# --out, a directory counts as the command's only with one of these too.
_EVIDENCE: dict[str, tuple[str, ...]] = {
  "run": ("results.json", "log.txt", "checkpoints"),
  "export": ("params", "model.jax"),
  "bench": ("bench.md",),
  "report": ("figures",),
}


def _nested_kind(root: Path) -> tuple[str, str] | None:
  """`dir_kind(root)`, where the marker is backed by the command's other files (`_EVIDENCE`)."""
  found = dir_kind(root)
  if found is None or found[0] not in _EVIDENCE or found[1] in _EVIDENCE[found[0]]:
    return found
  try:
    return found if any((root / name).exists() for name in _EVIDENCE[found[0]]) else None
  except OSError:
    return None


def refuse_nesting(root: Path, kind: str, inside: str | None = None) -> None:
  """Refuses, in one line (`CheckpointError`), an `--out` for a directory of `kind` that lies
  inside another command's directory (an ancestor holding a marker of `DIR_KINDS`), or that
  holds one below it at any depth (which an --overwrite would move or a write would mix with).

  `inside`: the kind of directory whose own command makes `root` in it (a sweep its runs, a
  budget its sweeps; `OWN_NESTINGS`): ancestors of that kind, and of the kinds that nest it,
  are allowed then. A directory already of `kind` may hold its command's own nestings.
  """
  if inside is not None and kind not in OWN_NESTINGS.get(inside, ()):
    raise ValueError(f"a {inside} directory holds no {kind} directories of its own")
  allowed = () if inside is None else (inside, *(k for k, v in OWN_NESTINGS.items()
                                                 if inside in v))
  try:
    _refuse_nesting(root, kind, allowed)
  except OSError:
    return  # a name too long, a loop of links: `lock_run_dir` says why


def _refuse_nesting(root: Path, kind: str, allowed: Sequence[str]) -> None:
  real = Path(os.path.realpath(root))
  for ancestor in real.parents:
    found = _nested_kind(ancestor)
    if found is not None and found[0] not in allowed:
      raise CheckpointError(f"--out {root} lies inside {ancestor}, the directory of synthpart "
                            f"{_COMMANDS[found[0]]} ({found[1]} is in it); synthpart "
                            f"{_COMMANDS[kind]} does not write into another command's "
                            "directory: choose an --out outside it")
  if not real.is_dir():
    return
  own = dir_kind(real)
  nested = OWN_NESTINGS.get(kind, ()) if own is not None and own[0] == kind else ()
  trash = {real / name for name in recorded_trash(real)}  # an earlier run, being replaced
  for directory, subdirs, _ in os.walk(real):
    subdirs[:] = sorted(n for n in subdirs if Path(directory) / n not in trash)
    for name in list(subdirs):
      below = Path(directory) / name
      found = _nested_kind(below)
      if found is not None and found[0] not in nested:
        shown = Path(root) / below.relative_to(real)
        raise CheckpointError(f"--out {root} holds {shown}, the directory of synthpart "
                              f"{_COMMANDS[found[0]]} ({found[1]} is in it); synthpart "
                              f"{_COMMANDS[kind]} does not write over another command's "
                              "directory: move it or choose another --out")


def claim(root: Path, kind: str, inside: str | None = None) -> RunLock:
  """Claims directory `root` for a command writing a directory of `kind` (a key of `DIR_KINDS`):
  takes its exclusive lock (`lock_run_dir`, creating `root` where it is missing), then refuses a
  directory of another kind (`refuse_foreign`) and one inside or holding another command's
  directory (`refuse_nesting`; `inside`: see there), letting go of the lock again. Call it
  before writing anything into `root`, and hold the lock returned until the command ends.

  Raises `CheckpointError`, having written nothing, where another process holds `root`, where
  another command wrote it, or where it cannot be a directory.
  """
  refuse_foreign(root, kind)  # before the lock too: a foreign directory gets no lock file
  refuse_nesting(root, kind, inside)
  lock = lock_run_dir(root)
  try:
    refuse_foreign(root, kind)  # again under the lock: no other command can write it now
    refuse_nesting(root, kind, inside)
  except BaseException:
    lock.release()
    raise
  return lock


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

  Raises `CheckpointError` where `root` exists and is not a directory (or is a symbolic link to
  nothing). Every command that claims a run directory (a run, a launch) checks it here, and
  words its refusal itself.
  """
  check_out_path(root)
  return any((root / name).exists() for name in markers)


# What a run (and `synthpart report` on it) writes into its directory: all that --overwrite
# moves aside. Anything else in the directory is the user's and stays where it is.
RUN_FILES = ("config.json", "results.json", "log.txt", "checkpoints", "tensorboard", "report.md",
             "figures")


def prepare_run_dir(root: Path, config: dict[str, Any], *, resume: bool, overwrite: bool,
                    dry_run: bool = False, fingerprint: str | None = None,
                    trains: dict[str, Any] | None = None) -> None:
  """Claims `root` for a run: a fresh directory, or the same run when resuming.

  Refuses a directory holding another run unless `resume` (same settings only, and where
  `fingerprint` is given and config.json records one, the same data; where `trains` is given
  and config.json records what its run trains, the same) or `overwrite`, and one without a run
  that holds entries named like a run's (the user's). A new run's config.json records
  `fingerprint` as `DATA_FINGERPRINT` and `trains` (`RUN_KEYS`: e.g. {"command": "compare",
  "with_model_parallel": False}) at its top level. Nothing is written before the checks pass, and
  nothing at all with `dry_run`. The caller holds `root`'s lock.
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
    recorded = stored.pop(DATA_FINGERPRINT, None)
    made_by = {key: stored.pop(key) for key in RUN_KEYS if key in stored}
    if trains is not None and "command" in made_by and any(
        made_by.get(key, False) != trains.get(key, False) for key in RUN_KEYS):
      raise CheckpointError(f"--resume: {root} was made by `synthpart {_command_line(made_by)}`"
                            f", not `synthpart {_command_line(trains)}`; resume it with the "
                            "same command")
    differing = config_differences(stored, config)
    if differing:
      raise CheckpointError(f"--resume: the settings differ from the run in {root}: "
                            f"{', '.join(differing)}")
    if fingerprint is not None:
      check_fingerprint(config.get("data", {}).get("name", "the dataset"), recorded, fingerprint,
                        "--resume", str(stored_path), "restore the data the run was trained on, "
                        "or start a new run (--overwrite, or another --out)")
    return
  interrupted = pending_trash(root)
  if holds_another and not overwrite:
    raise CheckpointError(f"--out {root} holds another run; pass --resume to continue it or "
                          "--overwrite to replace it")
  if interrupted and not holds_another and not overwrite:
    raise CheckpointError(f"--out {root} holds what is left of a run that an interrupted "
                          f"--overwrite was replacing (the rest is in {interrupted[0].name}); "
                          "pass --overwrite to finish replacing it")
  if not holds_another and not interrupted:
    theirs = [p.name + ("/" if p.is_dir() else "") for p in _run_entries(root)
              if p.name in RUN_FILES]
    if theirs:
      raise CheckpointError(f"--out {root} holds {', '.join(theirs)} but no run (no config.json "
                            "or results.json): a run would write over them, so they are left "
                            "as they are; move them or choose another --out")
  if dry_run:
    return
  entries = _run_entries(root) if overwrite and (holds_another or interrupted) else []
  made = move_aside(root, entries)  # config.json first, results.json next
  try:
    root.mkdir(parents=True, exist_ok=True)
    write_run_config(root, {**config, **({} if fingerprint is None
                                          else {DATA_FINGERPRINT: fingerprint}), **(trains or {})})
  except BaseException:
    if made is not None:  # a full disk, say: the earlier run goes back where it was
      put_back(root, made, entries)
    raise
  crash_point("run-dir:config-written")
  empty_trash(root)


def _command_line(trains: dict[str, Any]) -> str:
  """What `trains` (config.json's `RUN_KEYS`) says, as the command line that trains it."""
  flags = [f"--{key.replace('_', '-')}" for key in RUN_KEYS[1:] if trains.get(key)]
  return " ".join([str(trains.get("command", "?")), *flags])


def _run_entries(root: Path) -> list[Path]:
  """The run's entries of `root`: config.json first and results.json next, then the others and
  the temporary files of interrupted atomic writes of them."""
  if not root.is_dir():
    return []
  order = {name: i for i, name in enumerate(RUN_FILES)}
  temporary = tuple(f".{name}." for name in RUN_FILES)
  entries = [p for p in root.iterdir()
             if p.name in order or (p.name.startswith(temporary) and p.name.endswith(".tmp"))]
  return sorted(entries, key=lambda p: (order.get(p.name, len(order)), p.name))
