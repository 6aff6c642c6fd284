"""Fresh inputs for the pipelined schedule: segment k's inputs recomputed from the current
segments 0..k-1, for the rows it is about to read.

Segment k > 0 trains on a buffer of its input activations [N, *input shape] on its own device, as
in the sequential schedule. Before each span of its steps (`Feeds`, a driver hook:
`before_span`), the examples of the chunk's minibatches go through the current parameters of
segments s..k-1, device after device: each hop's activations [chunk rows, *cut shape] are handed
over forward, to the next segment's device (ledgered), and segment k's buffer takes them in at
those rows. Every device finds the rows from its own copy of segment k's key (`epoch_order`), so
no index travels. s is the deepest earlier segment whose own inputs are final: 0 (the dataset),
or a segment whose predecessors have all finished.

Once segments 0..k-1 have all finished, their outputs cannot change again: segment k then
receives them over the whole training set, once, computed exactly as the sequential schedule
computes them (`segment_outputs`), and no more refreshes. A pipelined run in which segment k
starts only after segment k-1 has finished is therefore the sequential schedule, bit for bit.

Nothing travels backward: no gradient, no index and no parameter crosses a device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np

from synthpart.model import Params, apply_segment
from synthpart.partition import SegmentSpec
from synthpart.train.epoch import epoch_order, make_predict
from synthpart.train.hooks import Chunk, Hook, Needs
from synthpart.train.loop import Loop
from synthpart.train.objectives import Constants, Task, segment_forward
from synthpart.transfers import Ledger, hand_over, key_on


def segment_outputs(task: Task, loop: Loop) -> Callable[[Params, jax.Array], jax.Array]:
  """A trained segment's outputs over a whole array [N, ...] -> [N, *output shape], chunked, on
  the segment's device: the sequential schedule's hand-over."""
  consts = loop.consts
  return make_predict(lambda params, xb: segment_forward(params, xb, task, consts))


def chunk_rows(order: jax.Array, first: jax.Array, count: int) -> jax.Array:
  """The example indices [count * batch] of steps first .. first+count-1 of an epoch whose
  minibatches are `order` [steps, batch] (`epoch_order`), in the order its steps read them."""
  return jax.lax.dynamic_slice_in_dim(order, first, count).reshape(-1)


@functools.partial(jax.jit, static_argnames=("task", "count"))
def _first_hop(params: Params, x: jax.Array, consts: Constants, order: jax.Array,
               first: jax.Array, *, task: Task, count: int) -> jax.Array:
  """Segment `task.spec`'s outputs on the chunk's rows of its own inputs `x` [N, ...]."""
  return segment_forward(params, x[chunk_rows(order, first, count)], task, consts)


_epoch_order = jax.jit(epoch_order, static_argnames=("num_examples", "batch_size"))


@functools.partial(jax.jit, static_argnames="spec")
def _hop(params: Params, h: jax.Array, *, spec: SegmentSpec) -> jax.Array:
  return apply_segment(params, h, spec)


@functools.partial(jax.jit, static_argnames="count", donate_argnums=0)
def _take_in(buffer: jax.Array, order: jax.Array, first: jax.Array, values: jax.Array, *,
             count: int) -> jax.Array:
  """`buffer` [N, ...] with the chunk's rows set to `values` [count * batch, ...]."""
  return buffer.at[chunk_rows(order, first, count)].set(values)


@dataclasses.dataclass
class Feeds(Hook):
  """Keeps the inputs of every loop of a pipelined run fresh: the driver hook that refreshes
  them before each span of `span_steps` steps (`before_span`); its loops read each other's
  parameters, so they resume together (`Needs.coupled`).

  `loops[k]` trains segment `tasks[k].spec`; later loops' data["x"] are their buffers. Transfers
  go to `ledger`, one record per hand-over.
  """
  loops: list[Loop]
  tasks: list[Task]
  ledger: Ledger
  span_steps: int
  # complete[k]: loop k's inputs are final for every row (loop 0: the dataset)
  complete: list[bool] = dataclasses.field(init=False)
  keys: dict[tuple[int, int], jax.Array] = dataclasses.field(init=False, default_factory=dict)
  # (k, j) -> (epoch, loop k's minibatches of that epoch on loop j's device), made once an epoch
  orders: dict[tuple[int, int], tuple[int, jax.Array]] = dataclasses.field(
      init=False, default_factory=dict)

  def __post_init__(self) -> None:
    self.complete = [k == 0 for k in range(len(self.loops))]
    self.needs = Needs(span_steps=self.span_steps, coupled=True)

  def before_span(self, chunks: list[Chunk]) -> None:
    """Before `chunks` are dispatched: the inputs each later loop's chunk will read."""
    for chunk in sorted(chunks):
      if chunk.loop == 0:
        continue
      if all(self.loops[j].finished for j in range(chunk.loop)):
        self._whole(chunk.loop)
      else:
        self._rows(chunk)

  def _key(self, k: int, j: int) -> jax.Array:
    """A copy of loop k's key on loop j's device (through the host: keys are not data)."""
    if (k, j) not in self.keys:
      self.keys[(k, j)] = key_on(self.loops[k].key, self.loops[j].device)
    return self.keys[(k, j)]

  def _order(self, k: int, j: int, epoch: int) -> jax.Array:
    """Loop k's minibatches [steps, batch] of `epoch` on loop j's device: its own plan where
    j = k, else drawn there from a copy of its key (`epoch_order`), once an epoch."""
    loop = self.loops[k]
    if j == k:
      return loop.plan_of(epoch)[0]
    cached = self.orders.get((k, j))
    if cached is None or cached[0] != epoch:
      device = self.loops[j].device
      order = _epoch_order(self._key(k, j), jax.device_put(np.uint32(epoch), device),
                           num_examples=len(loop.data["y"]), batch_size=loop.batch_size)
      cached = self.orders[(k, j)] = (epoch, order)
    return cached[1]

  def _what(self, k: int) -> str:
    return f"cut {self.tasks[k].spec.input_cut} activations"

  def _whole(self, k: int) -> None:
    """Loop k's whole buffer from the finished segments 0..k-1, once."""
    if self.complete[k]:
      return
    if k > 1:
      self._whole(k - 1)
    before = self.loops[k - 1]
    outputs = segment_outputs(self.tasks[k - 1], before)(before.state.params, before.data["x"])
    loop = self.loops[k]
    loop.data = {**loop.data, "x": hand_over(outputs, loop.device, self.ledger, self._what(k))}
    self.complete[k] = True

  def _rows(self, chunk: Chunk) -> None:
    """Loop k's buffer at the chunk's rows, through the current segments s..k-1."""
    k, loop = chunk.loop, self.loops[chunk.loop]
    # The deepest earlier segment whose inputs are final (all before it finished): its whole
    # buffer is made once, so the chunk starts there. This depends on where training stands,
    # not on what was computed before, so a resumed run refreshes as an uninterrupted one.
    s = max(j for j in range(k) if all(self.loops[m].finished for m in range(j)))
    if s:
      self._whole(s)
    def first(j: int) -> jax.Array:
      return jax.device_put(np.int32(chunk.first), self.loops[j].device)

    source = self.loops[s]
    h = _first_hop(source.state.params, source.data["x"], source.consts,
                   self._order(k, s, chunk.epoch), first(s), task=self.tasks[s],
                   count=chunk.count)
    for j in range(s + 1, k):
      h = hand_over(h, self.loops[j].device, self.ledger, self._what(j))
      h = _hop(self.loops[j].state.params, h, spec=self.tasks[j].spec)
    h = hand_over(h, loop.device, self.ledger, self._what(k))
    loop.data = {**loop.data, "x": _take_in(loop.data["x"], self._order(k, k, chunk.epoch),
                                            first(k), h, count=chunk.count)}
