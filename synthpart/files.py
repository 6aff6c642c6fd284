"""Atomic file writes: a reader sees the whole new file or the old one, never half of either.
And the reading of a file a user gave, with one line for each way it can fail.

Files get the mode a plain `open` would give them (0o666 less the process's umask, so 0o644
under the usual umask 022 and 0o664 under 002): colleagues sharing a run directory can read
results, configs and checkpoints.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from synthpart.errors import DiskFullError, SynthpartError

# The errors of a device with no space (or quota) left.
_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
  """Whether `e` says a device had no space left: an OSError, or a library's error that only
  carries the system's message (orbax and tensorstore re-raise in their own types)."""
  if isinstance(e, OSError) and e.errno in _FULL:
    return True
  return any(os.strerror(code) in str(e) for code in _FULL)


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


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
  """Calls `write` on a temporary file beside `path`, fsyncs it, then renames it into place,
  with the umask's usual mode (`default_mode`).

  A full disk raises `DiskFullError` naming `path`; the old file, if any, is left as it was.
  """
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
  except BaseException as e:
    Path(tmp).unlink(missing_ok=True)
    if isinstance(e, OSError) and is_disk_full(e):
      raise DiskFullError(f"no space left on the device writing {path}") from None
    raise


def finite(document: Any) -> Any:
  """`document` with every NaN or infinite float replaced by None (JSON's null)."""
  if isinstance(document, float):
    return document if math.isfinite(document) else None
  if isinstance(document, dict):
    return {key: finite(value) for key, value in document.items()}
  if isinstance(document, (list, tuple)):
    return [finite(value) for value in document]
  return document


def write_json_atomic(path: str | os.PathLike, document: Any) -> None:
  """Writes `document` as indented strict JSON, atomically: NaN and infinities become null, so
  every JSON parser reads the file."""
  data = json.dumps(finite(document), indent=1, allow_nan=False).encode()

  def write(f: BinaryIO) -> None:
    f.write(data)

  write_atomic(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` as UTF-8, atomically."""
  write_atomic(path, lambda f: f.write(text.encode()))


def read_user_bytes(path: Path, where: str, error: type[SynthpartError]) -> bytes:
  """The bytes of a file the user named; `error` in one line naming it (`where`, e.g. "results
  file PATH") where it is missing, a directory or unreadable."""
  try:
    return path.read_bytes()
  except FileNotFoundError:
    raise error(f"{where} does not exist") from None
  except IsADirectoryError:
    raise error(f"{where} is a directory; give a file") from None
  except OSError as e:
    raise error(f"{where} cannot be read: {e.strerror}") from None


def read_user_text(path: Path, where: str, error: type[SynthpartError]) -> str:
  """`read_user_bytes` decoded as UTF-8 (a byte order mark allowed); `error` also where it is
  not UTF-8, naming the first byte that is not."""
  raw = read_user_bytes(path, where, error)
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise error(f"{where} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x})") from None
