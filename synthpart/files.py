"""Atomic file writes: a reader sees the whole new file or the old one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write` on a temporary file beside `path`, fsyncs it, then renames it into place."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
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
