"""Progress display: one tqdm bar per optax loop, or nothing in quiet mode."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from tqdm.auto import tqdm


class _Bar:
  def __init__(self, label: str, total: int, position: int):
    self._bar = tqdm(total=total, desc=label, unit="epoch", position=position, leave=True,
                     dynamic_ncols=True, file=sys.stderr)

  def update(self, **metrics: float) -> None:
    self._bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()


class _Silent:
  def update(self, **metrics: float) -> None:
    pass

  def close(self) -> None:
    pass


@dataclasses.dataclass
class Progress:
  """Makes bars and prints notes to stderr; `quiet` silences both (errors still surface)."""
  quiet: bool = False
  def bar(self, label: str, total: int, position: int = 0) -> Any:
    if self.quiet:
      return _Silent()
    return _Bar(label, total, position)

  def message(self, text: str) -> None:
    if not self.quiet:
      tqdm.write(text, file=sys.stderr)
