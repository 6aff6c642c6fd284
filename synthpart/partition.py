"""Cut points -> a plan of segments: which blocks each one holds and what it learns."""

from __future__ import annotations

import math
from typing import NamedTuple

from synthpart.blocks import Block, Shape
from synthpart.errors import ConfigError


class SegmentSpec(NamedTuple):
  """Segment `index` holds blocks `start .. stop-1` (0-based) of the network.

  `shapes` are the per-example shapes it maps between, one per block boundary: shapes[0] is its
  input, shapes[-1] its output. `input_cut` / `output_cut` are the 1-based block numbers of the
  cuts it starts after and ends at (None at the network's input and output); they key the SIL
  tables.
  """
  index: int  # type: ignore[assignment]
  start: int
  stop: int
  shapes: tuple[Shape, ...]
  blocks: tuple[Block, ...]
  input_cut: int | None
  output_cut: int | None

  @property
  def widths(self) -> tuple[int, ...]:
    """The number of features at each block boundary (a shape's product)."""
    return tuple(math.prod(s) for s in self.shapes)

  @property
  def is_first(self) -> bool:
    return self.input_cut is None

  @property
  def is_last(self) -> bool:
    return self.output_cut is None

  @property
  def num_layers(self) -> int:
    return self.stop - self.start

  @property
  def objective(self) -> str:
    """What the segment learns: ``inputs -> sil``, ``sil -> sil``, ``sil -> labels``..."""
    source = "inputs" if self.is_first else "sil"
    target = "labels" if self.is_last else "sil"
    return f"{source} -> {target}"


def network_widths(num_features: int, hidden: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
  """All layer widths of a dense network, input first: (features, *hidden, classes)."""
  return (num_features, *hidden, num_classes)


def check_cuts(cuts: tuple[int, ...], num_blocks: int) -> None:
  """Cuts fall between blocks: strictly increasing block numbers in 1..num_blocks-1."""
  if list(cuts) != sorted(set(cuts)) or any(c < 1 or c >= num_blocks for c in cuts):
    raise ConfigError(f"model.cuts {list(cuts)} must be strictly increasing block numbers in "
                      f"1..{num_blocks - 1} (a cut falls after a block; the network has "
                      f"{num_blocks} blocks)")


def plan_segments(blocks: tuple[Block, ...], shapes: tuple[Shape, ...],
                  cuts: tuple[int, ...]) -> tuple[SegmentSpec, ...]:
  """Splits a network of blocks after each block number in `cuts`; `shapes` has one entry per
  block boundary (len(blocks) + 1). No cuts gives one segment: conventional training."""
  num_blocks = len(blocks)
  check_cuts(cuts, num_blocks)
  bounds = (0, *cuts, num_blocks)
  return tuple(
      SegmentSpec(index=i, start=start, stop=stop, shapes=tuple(shapes[start:stop + 1]),
                  blocks=tuple(blocks[start:stop]),
                  input_cut=start if start > 0 else None,
                  output_cut=stop if stop < num_blocks else None)
      for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])))
