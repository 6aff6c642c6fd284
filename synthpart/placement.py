"""Segment groups: each segment trains data-parallel on a group of devices of its own.

`[placement] groups = [2, 2]` (or `devices_per_segment = 2`) gives every segment a group of
devices, laid out in order over the run's devices. A group of one device is the plain placement:
the segment's arrays are committed to that device, exactly as without groups. A group of k
devices gets a one-axis `Mesh` named "data"; the segment's parameters, optimizer state,
constants, key and training data are replicated over it, and each minibatch is split over
"data" inside the step (a sharding constraint on the gathered batch), so every device computes
the loss and gradients of its slice of the batch. XLA inserts the gradient all-reduce from the
shardings, over the group's mesh alone, so nothing crosses between groups.

Why the training data are replicated over the group rather than split: an epoch draws one
permutation of the whole training set, exactly as on one device, so a minibatch holds examples
from anywhere in it. With the data split over "data", every step would first gather its
minibatch from all devices (the compiled step then holds an all-gather of the indices and an
all-reduce of the whole batch, on top of the gradients'); replicated, the gather is local and the
gradient all-reduce is the only traffic. Each device holds what a one-device segment holds, so a
group never needs more memory per device than one device does, no example is padded or dropped,
and a group of k devices reaches the parameters of one device up to the order of floating-point
sums. A batch size divisible by the group size splits evenly; any other is padded by XLA.

Two backends run a group (`[placement] backend`, `BACKENDS`):

- "sharding" (the default): the epoch is one `jax.jit` program over the group's mesh, the batch
  split by a sharding constraint, the all-reduce inserted by XLA, as above.
- "pmap": the same epoch under `jax.pmap` over the group's devices (`PmapEpoch`): every device
  runs the epoch on its replica, takes its own slice of each minibatch (`pmap_loss`), and the
  loss and gradients are averaged over the group with `lax.pmean` before the update (`pmap_mean`),
  so every replica makes the same update. Outside the epoch the segment's arrays are exactly
  those of the sharding backend (replicated over the group's mesh): evaluation, hand-over and
  checkpoints do not know which backend trained. The batch size must divide by the group size.
  JAX keeps `pmap` in maintenance mode and recommends `jit` with shardings; "pmap" is offered for
  those who ask for it and to compare the two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from synthpart.errors import ConfigError
from synthpart.registry import Registry

DATA_AXIS = "data"

BACKENDS: Registry[str] = Registry("placement.backend")
BACKENDS.add("sharding", "sharding", "jax.jit over the group's mesh, the batch split by a "
             "NamedSharding (JAX's recommended way)")
BACKENDS.add("pmap", "pmap", "jax.pmap over the group's devices, gradients averaged with "
             "lax.pmean (JAX keeps pmap in maintenance mode)")

# Where a segment lives: its one device, or a sharding replicated over its group's mesh.
Placement: TypeAlias = jax.Device | NamedSharding


def layout_groups(devices: Sequence[jax.Device],
                  sizes: Sequence[int]) -> tuple[tuple[jax.Device, ...], ...]:
  """The device group of each segment: consecutive runs of `devices`, `sizes[i]` for segment i.

  Groups wrap around the device list when they need more devices than there are, as segments
  do without groups (segment i on device i mod n); groups then share devices, which is
  correct but not concurrent. One group never holds a device twice.
  """
  if not devices:
    raise ConfigError("no devices to place segments on")
  groups, start = [], 0
  for index, size in enumerate(sizes):
    if size > len(devices):
      raise ConfigError(f"segment {index} asks for a group of {size} devices but only "
                        f"{len(devices)} are available (placement.groups)")
    groups.append(tuple(devices[(start + j) % len(devices)] for j in range(size)))
    start += size
  return tuple(groups)


@functools.cache
def group_mesh(group: tuple[jax.Device, ...]) -> Mesh:
  """The one-axis "data" mesh of a group (cached: equal groups share one mesh object)."""
  return Mesh(np.array(group), (DATA_AXIS,))


def placement_of(group: Sequence[jax.Device]) -> Placement:
  """A lone device as itself (the plain placement); a group as a replicated sharding."""
  group = tuple(group)
  if len(group) == 1:
    return group[0]
  return NamedSharding(group_mesh(group), PartitionSpec())


def is_group(target: Placement) -> bool:
  return isinstance(target, jax.sharding.Sharding)


def group_devices(target: Placement) -> tuple[jax.Device, ...]:
  """The devices of a placement, in mesh order."""
  if isinstance(target, NamedSharding):
    return tuple(target.mesh.devices.flat)
  return (target,)


def lead_device(target: Placement) -> jax.Device:
  """The first device of a placement: where host-side defaults (`jax.default_device`) point."""
  return group_devices(target)[0]


def batch_sharding(target: Placement) -> NamedSharding | None:
  """How a minibatch is split over a group (leading axis over "data"); None for one device."""
  if not isinstance(target, NamedSharding):
    return None
  return NamedSharding(target.mesh, PartitionSpec(DATA_AXIS))


def shard_batches(loss_fn: Callable[..., Any], target: Placement) -> Callable[..., Any]:
  """`loss_fn(params, batch, consts, key)` with the batch split over the group.

  The constraint sits on the gathered minibatch, inside the step: every device then computes
  the forward and backward pass of its own slice, and the mean over the batch becomes a sum over
  the group, which XLA lowers to an all-reduce over the group's mesh. On one device `loss_fn` is
  returned unchanged, so the compiled program is the plain one.
  """
  sharding = batch_sharding(target)
  if sharding is None:
    return loss_fn

  def loss(params: Any, batch: dict, consts: Any, key: jax.Array) -> jax.Array:
    return loss_fn(params, jax.lax.with_sharding_constraint(batch, sharding), consts, key)

  return loss


def pmap_loss(loss_fn: Callable[..., Any], size: int) -> Callable[..., Any]:
  """`loss_fn(params, batch, consts, key)` on this device's slice of the batch, inside
  `jax.pmap` over a group of `size` devices: device i takes rows [i*b/size, (i+1)*b/size) of the
  gathered minibatch, and draws its noise from the step key folded with i."""
  def loss(params: Any, batch: dict, consts: Any, key: jax.Array) -> jax.Array:
    index = jax.lax.axis_index(DATA_AXIS)
    rows = jax.tree.leaves(batch)[0].shape[0] // size
    local = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, index * rows, rows), batch)
    return loss_fn(params, local, consts, jax.random.fold_in(key, index))

  return loss


def pmap_mean(tree: Any) -> Any:
  """The mean of `tree` (the loss and gradients) over the group, inside `jax.pmap`."""
  return jax.lax.pmean(tree, DATA_AXIS)


def _stack(x: jax.Array, target: NamedSharding) -> jax.Array:
  """A replicated group array as [k, ...]: device i's row is its own copy (no transfer)."""
  devices = group_devices(target)
  shards = {shard.device: shard.data for shard in x.addressable_shards}
  return jax.make_array_from_single_device_arrays(
      (len(devices), *x.shape), NamedSharding(target.mesh, PartitionSpec(DATA_AXIS)),
      [shards[d][None] for d in devices])


def _unstack(x: jax.Array, target: NamedSharding) -> jax.Array:
  """[k, ...] from `jax.pmap` back to one array replicated over the group (no transfer)."""
  shards = {shard.device: shard.data for shard in x.addressable_shards}
  return jax.make_array_from_single_device_arrays(
      x.shape[1:], target, [shards[d].reshape(x.shape[1:]) for d in group_devices(target)])


class PmapEpoch:
  """An epoch function (`synthpart.train.epoch.make_epoch`, built with `pmap_loss` and
  `pmap_mean`) run under `jax.pmap` over a group, with the arguments and results of the sharding
  backend: state, data, constants, key and epoch replicated over the group's mesh in, the new
  state replicated and the losses [steps] (device 0's, the same on every device) out. `lower`
  and `compile` work as on a jitted function."""

  def __init__(self, epoch: Callable[..., Any], target: NamedSharding, impl: Any,
               compiled: Callable[..., Any] | None = None):
    self._epoch, self._target, self._impl = epoch, target, impl
    self._fn: Any = compiled or jax.pmap(self._body, axis_name=DATA_AXIS,
                                    devices=group_devices(target), donate_argnums=0)
    self._constants: dict[int, tuple[Any, Any]] = {}

  def _body(self, state: Any, data: Any, consts: Any, key_data: jax.Array,
            epoch_index: jax.Array) -> tuple[Any, jax.Array]:
    key = jax.random.wrap_key_data(key_data, impl=self._impl)
    return self._epoch(state, data, consts, key, epoch_index)

  def _stacked(self, tree: Any, keep: bool = False) -> Any:
    """`tree` as [k, ...] leaves; the loop's data and constants once (`keep`), then reused."""
    if keep and id(tree) in self._constants and self._constants[id(tree)][0] is tree:
      return self._constants[id(tree)][1]
    stacked = jax.tree.map(lambda x: _stack(x, self._target), tree)
    if keep:
      self._constants[id(tree)] = (tree, stacked)
    return stacked

  def _arguments(self, state: Any, data: Any, consts: Any, key: jax.Array,
                 epoch_index: jax.Array) -> tuple[Any, ...]:
    return (self._stacked(state), self._stacked(data, keep=True),
            self._stacked(consts, keep=True), self._stacked(jax.random.key_data(key)),
            self._stacked(epoch_index))

  def __call__(self, state: Any, data: Any, consts: Any, key: jax.Array,
               epoch_index: jax.Array) -> tuple[Any, jax.Array]:
    state, losses = self._fn(*self._arguments(state, data, consts, key, epoch_index))
    first = losses.addressable_shards[0].data
    return jax.tree.map(lambda x: _unstack(x, self._target), state), first.reshape(
        first.shape[1:])

  def lower(self, *args: Any) -> _LoweredPmap:
    return _LoweredPmap(self, self._fn.lower(*self._arguments(*args)))

  def bind(self, compiled: Any) -> PmapEpoch:
    """This epoch running `compiled` (its lowered program, compiled), the constants shared."""
    bound = PmapEpoch(self._epoch, self._target, self._impl, compiled)
    bound._constants = self._constants
    bound.memory_analysis = compiled.memory_analysis  # type: ignore[attr-defined]
    return bound


class _LoweredPmap:
  """A lowered `PmapEpoch`: `compile()` gives the epoch bound to its compiled program."""

  def __init__(self, epoch: PmapEpoch, lowered: Any):
    self._epoch, self._lowered = epoch, lowered

  def compile(self) -> PmapEpoch:
    return self._epoch.bind(self._lowered.compile())

