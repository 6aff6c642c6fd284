"""Atomic file writes: a reader sees the whole new file or the old one, never half of either.

Files get the mode a plain `open` would give them (0o666 less the process's umask, so 0o644
under the usual umask 022 and 0o664 under 002): colleagues sharing a run directory can read
results, configs and checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def umask() -> int:
  """The process's file-creation mask: from /proc where Linux shows it, else read by setting it
  and putting it back at once."""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def default_mode() -> int:
  """The mode `open(path, "w")` gives a new file: 0o666 less the umask."""
  return 0o666 & ~umask()


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write` on a temporary file beside `path`, fsyncs it, then renames it into place,
  with the umask's usual mode (`default_mode`)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, default_mode())  # mkstemp creates 0o600
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: str | os.PathLike, document: Any) -> None:
  """Writes `document` as indented JSON (NaN allowed, as Python's json writes it), atomically."""
  write_atomic(path, lambda f: f.write(json.dumps(document, indent=1, allow_nan=True).encode()))
