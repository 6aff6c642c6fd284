"""FLOPs per example, by kind: the unit every cost in synthpart is counted in."""

from __future__ import annotations

from typing import NamedTuple


class Flops(NamedTuple):
  """FLOPs per example of one training loop (or block), by kind."""
  forward: int = 0
  activation_grads: int = 0
  weight_grads: int = 0
  input_grads: int = 0

  @property
  def backward(self) -> int:
    return self.activation_grads + self.weight_grads + self.input_grads

  @property
  def training(self) -> int:
    """Forward plus backward: the FLOPs of one example through one training step."""
    return self.forward + self.backward

  def __add__(self, other: Flops) -> Flops:  # type: ignore[override]
    return Flops(*(a + b for a, b in zip(self, other)))

  def scale(self, factor: float) -> Flops:
    return Flops(*(int(round(v * factor)) for v in self))
