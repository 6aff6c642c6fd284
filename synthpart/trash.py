"""Trash: the earlier run's files that `--overwrite` moves aside, in directories synthpart makes
and records by name before anything goes into them, so that it deletes those and nothing else.

  DIR/.trash-<time>-<pid>/      the entries one --overwrite moved aside, until the new run's
                                config.json is in place
  DIR/.synthpart-trash.json     {"trash": [the names of DIR's trash directories not yet deleted]}

A `.trash-...` entry the record does not name (the user's own, say) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from synthpart.checkpoint import crash_point
from synthpart.errors import CheckpointError
from synthpart.files import write_json_atomic

TRASH_PREFIX = ".trash-"
TRASH_RECORD = ".synthpart-trash.json"


def recorded_trash(root: Path) -> list[str]:
  """The names of the trash directories of `root` that synthpart made and has not yet deleted,
  as `TRASH_RECORD` records them. A name that is not a plain `.trash-...` entry of `root` (an
  edited record) is ignored: nothing outside the record, or outside `root`, is deleted."""
  try:
    document = json.loads((root / TRASH_RECORD).read_text())
  except (OSError, ValueError):
    return []  # none, or unreadable: then nothing counts as synthpart's trash
  names = document.get("trash") if isinstance(document, dict) else None
  if not isinstance(names, list):
    return []
  return [n for n in dict.fromkeys(names) if isinstance(n, str) and n.startswith(TRASH_PREFIX)
          and n not in (".", "..") and Path(n).name == n and "/" not in n]


def _record_trash(root: Path, names: Sequence[str]) -> None:
  if names:
    write_json_atomic(root / TRASH_RECORD, {"trash": list(names)})
  else:
    (root / TRASH_RECORD).unlink(missing_ok=True)


def pending_trash(root: Path) -> list[Path]:
  """The recorded trash directories still in `root` (an --overwrite interrupted before it
  emptied them), oldest first."""
  paths = [root / name for name in recorded_trash(root)]
  return [p for p in paths if p.is_dir() and not p.is_symlink()]


def empty_trash(root: Path) -> None:
  """Deletes the trash directories of `root` that synthpart recorded, and only those; a name
  that cannot be deleted stays recorded for the next run to try again."""
  left = []
  for name in recorded_trash(root):
    path = root / name
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path, ignore_errors=True)
    if path.exists() or path.is_symlink():
      left.append(name)
  _record_trash(root, left)


def move_aside(root: Path, entries: Sequence[Path]) -> Path | None:
  """Renames `entries` (of `root`, in this order) into a fresh `root/.trash-<time>-<pid>/`, whose
  name `TRASH_RECORD` records before anything is moved into it.

  Each rename is atomic; a process killed midway leaves the rest where it was. An entry that
  cannot be renamed (its permissions, say) puts every entry moved so far back and raises
  `CheckpointError`, the directory as it was. Returns the trash directory, or None where there
  was nothing to move.
  """
  if not entries:
    return None
  stamp = f"{TRASH_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
  trash = root / stamp
  for attempt in range(1, 100):
    try:
      trash.mkdir()
      break
    except FileExistsError:
      trash = root / f"{stamp}-{attempt}"  # not ours to use (the user's, or an earlier one)
    except OSError as e:
      raise CheckpointError(f"--overwrite: {trash} cannot be created ({e.strerror}); the "
                            f"earlier run is left as it was in {root}") from None
  else:
    raise CheckpointError(f"--overwrite: no free name for a trash directory in {root}")
  earlier = recorded_trash(root)
  try:
    _record_trash(root, [*earlier, trash.name])
  except OSError as e:
    trash.rmdir()
    raise CheckpointError(f"--overwrite: {root / TRASH_RECORD} cannot be written "
                          f"({e.strerror}); the earlier run is left as it was") from None
  moved: list[Path] = []
  entry = entries[0]
  try:
    for entry in entries:
      os.rename(entry, trash / entry.name)
      moved.append(entry)
      crash_point(f"overwrite-moved:{entry.name}")
  except BaseException as e:
    put_back(root, trash, moved)
    if not isinstance(e, OSError):
      raise
    raise CheckpointError(f"--overwrite: {entry} cannot be moved aside ({e.strerror}); the "
                          f"earlier run is left as it was in {root}: fix that entry's "
                          "permissions or choose another --out") from None
  return trash


def put_back(root: Path, trash: Path, moved: Sequence[Path]) -> None:
  """Undoes `move_aside`: renames the entries `moved` (of `root`) back from `trash`, the first
  moved last, then removes `trash` and its name from the record. Raises `CheckpointError`
  naming where the files are if one cannot go back."""
  earlier = [name for name in recorded_trash(root) if name != trash.name]
  for entry in reversed(moved):
    try:
      os.rename(trash / entry.name, entry)
    except OSError as e:
      raise CheckpointError(f"--overwrite could not move the earlier run aside, nor put "
                            f"{entry.name} back ({e.strerror}): what it moved is in {trash}; "
                            "another --overwrite finishes replacing it") from None
  try:
    trash.rmdir()
    _record_trash(root, earlier)
  except OSError:
    pass  # an empty directory, or a record naming a missing one: neither deletes anything
