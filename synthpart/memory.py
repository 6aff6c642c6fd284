"""Bytes: of a pytree's arrays, of a compiled function's buffers, of a device's counters.

Memory comes from XLA's buffer assignment of each compiled function (`memory_analysis()`), so it
is what the program allocates on any device; every loop records its own when it compiles
(`LoopRecord.memory`), so reports read memory from results and never compile anything;
`synthpart.bench.compiled` compiles every method's loops for the `bench` memory table.
Device `memory_stats()` (GPU and TPU; None on CPU) adds the measured peak where it exists.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np


def tree_bytes(tree: Any) -> int:
  """Bytes held by the arrays (or abstract arrays) of a pytree."""
  return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


class MemoryUse(NamedTuple):
  """XLA's buffer assignment of one compiled function, in bytes.

  `resident` is what the device holds throughout training but this function does not take
  (e.g. optimizer state in a forward-only step); `data` is the training data among the
  arguments or `resident` (the dataset on the device).
  """
  argument: int
  output: int
  alias: int
  temp: int
  resident: int = 0
  data: int = 0

  @property
  def peak(self) -> int:
    """Live bytes at the function's peak, donated outputs counted once, plus `resident`."""
    return self.argument + self.output - self.alias + self.temp + self.resident

  @property
  def peak_without_data(self) -> int:
    """The model's share: parameters, optimizer state, activations and workspace."""
    return self.peak - self.data

  def to_dict(self) -> dict[str, int]:
    return {**self._asdict(), "peak": self.peak, "peak_without_data": self.peak_without_data}


def compiled_memory(compiled: jax.stages.Compiled, resident: int = 0,
                    data: int = 0) -> MemoryUse:
  """`MemoryUse` of a compiled function (`jax.jit(f).lower(...).compile()`)."""
  m = compiled.memory_analysis()
  if m is None:
    raise ValueError("this backend gives no memory analysis of compiled functions")
  return MemoryUse(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                   int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), resident, data)


def device_memory(device: jax.Device) -> dict[str, int] | None:
  """The device's own counters (bytes_in_use, peak_bytes_in_use, ...); None where unsupported."""
  stats = device.memory_stats()
  return None if stats is None else {k: int(v) for k, v in stats.items()}
