"""A metric writer of one's own for tests: it keeps every call it is given."""

from __future__ import annotations

from pathlib import Path


class RecordingWriter:
  """A writer of one's own: keeps what it is given."""

  def __init__(self, run_dir: Path | None = None, hparams: dict | None = None):
    self.run_dir, self.hparams = run_dir, dict(hparams or {})
    self.scalars: list[tuple[int, dict]] = []
    self.closed = False

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def write_hparams(self, hparams):
    self.hparams.update(hparams)

  def flush(self):
    pass

  def close(self):
    self.closed = True

  def series(self, key):
    return [(step, s[key]) for step, s in self.scalars if key in s]
