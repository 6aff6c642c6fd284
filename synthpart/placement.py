"""Putting arrays on devices, and a ledger of every transfer between devices.

Everything a segment needs is placed on its device with an explicit `jax.device_put`. Arrays that
must cross from one segment's device to another's go through `hand_over`, which records the bytes,
so the accounting of what each method moves is taken from what it really moved.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from synthpart.memory import tree_bytes


@dataclasses.dataclass(frozen=True)
class Transfer:
  what: str
  source: str
  destination: str
  bytes: int


def device_name(device: jax.Device | jax.sharding.Sharding) -> str:
  """`platform:id`; for a sharding over a device group, its devices' names joined by commas."""
  if isinstance(device, jax.sharding.Sharding):
    return ",".join(device_name(d) for d in sorted(device.device_set, key=lambda d: d.id))
  return f"{device.platform}:{device.id}"


def _devices(target: jax.Device | jax.sharding.Sharding) -> set[jax.Device]:
  return set(target.device_set) if isinstance(target, jax.sharding.Sharding) else {target}


def hand_over(tree: Any, device: jax.Device | jax.sharding.Sharding, ledger: list[Transfer],
              what: str) -> Any:
  """Moves `tree` to `device` (an explicit transfer) and records it in `ledger` if it crosses.

  `device` may be a sharding replicated over a device group: every device of the group that
  lacks the data receives a full copy, and the ledger counts each copy.
  """
  leaves = jax.tree.leaves(tree)
  sources = {d for x in leaves if isinstance(x, jax.Array) for d in x.devices()}
  moved = jax.device_put(tree, device)
  destinations = _devices(device)
  crossing = [d for d in sources if d not in destinations]
  if crossing:
    copies = max(1, len(destinations - sources))
    ledger.append(Transfer(what, ",".join(sorted(device_name(d) for d in crossing)),
                           device_name(device), tree_bytes(tree) * copies))
  return moved


def key_on(key: jax.Array, device: jax.Device) -> jax.Array:
  """A copy of a typed PRNG key on `device`, routed through the host.

  Keys are tiny; taking them through the host keeps device-to-device traffic for real data alone.
  """
  raw = jax.device_get(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.device_put(np.asarray(raw), device),
                                  impl=jax.random.key_impl(key))
