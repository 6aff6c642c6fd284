"""Cut points -> a plan of segments: which layers each one holds and what it learns."""

from __future__ import annotations

from typing import NamedTuple

from synthpart.errors import ConfigError


class SegmentSpec(NamedTuple):
  """Segment `index` holds dense layers `start .. stop-1` (0-based) of the network.

  `widths` are the widths it maps between: widths[0] is its input, widths[-1] its output.
  `input_cut` / `output_cut` are the 1-based layer numbers of the cuts it starts after and ends
  at (None at the network's input and output); they key the SIL tables.
  """
  index: int
  start: int
  stop: int
  widths: tuple[int, ...]
  input_cut: int | None
  output_cut: int | None

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
  """All layer widths, input first: (features, *hidden, classes)."""
  return (num_features, *hidden, num_classes)


def plan_segments(widths: tuple[int, ...], cuts: tuple[int, ...]) -> tuple[SegmentSpec, ...]:
  """Splits a network of len(widths)-1 dense layers after each layer number in `cuts`.

  No cuts gives one segment: conventional training.
  """
  num_layers = len(widths) - 1
  if list(cuts) != sorted(set(cuts)) or any(c < 1 or c >= num_layers for c in cuts):
    raise ConfigError(f"model.cuts {list(cuts)} must be strictly increasing layer numbers in "
                      f"1..{num_layers - 1}")
  bounds = (0, *cuts, num_layers)
  return tuple(
      SegmentSpec(index=i, start=start, stop=stop, widths=tuple(widths[start:stop + 1]),
                  input_cut=start if start > 0 else None,
                  output_cut=stop if stop < num_layers else None)
      for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])))
