"""Progress display: one tqdm bar per optax loop, or nothing in quiet mode."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _append(path: Path | None, line: str) -> None:
  if path is not None:
    with open(path, "a") as f:
      f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


class _Bar:
  def __init__(self, label: str, total: int, position: int, done: int, log_path: Path | None,
               quiet: bool):
    self._label, self._epoch, self._log_path = label, done, log_path
    self._bar = None if quiet else tqdm(
        total=total, initial=done, desc=label, unit="epoch", position=position, leave=True,
        dynamic_ncols=True, file=sys.stderr)

  def update(self, **metrics: float) -> None:
    self._epoch += 1
    shown = {k: f"{v:.4g}" for k, v in metrics.items()}
    _append(self._log_path, f"{self._label} epoch {self._epoch} " +
            " ".join(f"{k}={v}" for k, v in shown.items()))
    if self._bar is not None:
      self._bar.set_postfix(shown, refresh=False)
      self._bar.update(1)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class Progress:
  """Makes bars and prints notes to stderr; `quiet` silences both (errors still surface).

  With `log_path`, every epoch and note is also appended to that file, quiet or not.
  """
  quiet: bool = False
  log_path: Path | None = None

  def bar(self, label: str, total: int, position: int = 0, done: int = 0) -> Any:
    return _Bar(label, total, position, done, self.log_path, self.quiet)

  def message(self, text: str) -> None:
    _append(self.log_path, text)
    if not self.quiet:
      tqdm.write(text, file=sys.stderr)
