"""Progress: one tqdm bar per optax loop (or nothing in quiet mode), a log file, and live metrics.

The driver's hooks (`synthpart.train.hooks`: `Bars`, `Scalars`) report here: bars move within an
epoch where the driver waits on it anyway (`Bar.advance`: at evaluations inside epochs) and by
whole epochs with their metrics (`Bar.update`); after every epoch round the method's scalars go
to the metric writer (`Progress.scalars`, `synthpart.metrics`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from synthpart.metrics import MetricWriter


def _append(path: Path | None, line: str) -> None:
  if path is not None:
    with open(path, "a") as f:
      f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


class Bar:
  """One loop's bar: `total` epochs, moved by fractions of an epoch and by whole epochs."""

  def __init__(self, label: str, total: int, position: int, done: int, log_path: Path | None,
               quiet: bool):
    self._label, self._epoch, self._log_path = label, done, log_path
    self._shown = float(done)  # where the bar stands, fractions of the epoch included
    self._bar = None if quiet else tqdm(
        total=total, initial=done, desc=label, unit="epoch", position=position, leave=True,
        dynamic_ncols=True, file=sys.stderr, bar_format=(
            "{l_bar}{bar}| {n:.4g}/{total_fmt} [{elapsed}<{remaining}{postfix}]"))

  def advance(self, fraction: float) -> None:
    """Moves the bar to `fraction` (0..1) of the way through the current epoch."""
    target = self._epoch + min(max(fraction, 0.0), 1.0)
    if self._bar is not None and target > self._shown:
      self._bar.update(target - self._shown)
    self._shown = max(self._shown, target)

  def update(self, **metrics: float) -> None:
    """Ends the current epoch, showing (and logging) its metrics."""
    self._epoch += 1
    shown = {k: f"{v:.4g}" for k, v in metrics.items()}
    _append(self._log_path, f"{self._label} epoch {self._epoch} " +
            " ".join(f"{k}={v}" for k, v in shown.items()))
    if self._bar is not None:
      self._bar.set_postfix(shown, refresh=False)
      self._bar.update(self._epoch - self._shown)
    self._shown = float(self._epoch)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class Progress:
  """Makes bars and prints notes to stderr; `quiet` silences both (errors still surface).

  With `log_path`, every epoch and note is also appended to that file, quiet or not. With
  `metrics`, every epoch round's scalars are written to it as the run goes (quiet or not).
  """
  quiet: bool = False
  log_path: Path | None = None
  metrics: MetricWriter | None = None

  def bar(self, label: str, total: int, position: int = 0, done: int = 0) -> Bar:
    return Bar(label, total, position, done, self.log_path, self.quiet)

  def message(self, text: str) -> None:
    _append(self.log_path, text)
    if not self.quiet:
      tqdm.write(text, file=sys.stderr)

  def scalars(self, method: str, step: int, values: Mapping[str, float]) -> None:
    """Writes a method's scalars at `step` (its epoch round) to the metric writer, if any."""
    if self.metrics is not None and values:
      self.metrics.write_scalars(step, {f"{method}/{k}": v for k, v in values.items()})
      self.metrics.flush()

  def close(self) -> None:
    """Closes the metric writer, if any."""
    if self.metrics is not None:
      self.metrics.close()
