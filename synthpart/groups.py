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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from synthpart.errors import ConfigError

DATA_AXIS = "data"

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

