"""Putting arrays on devices, and a ledger of every transfer between devices.

Everything a segment needs is placed on its device with an explicit `jax.device_put`. Arrays that
must cross from one segment's device to another's go through `hand_over`, which records the bytes,
so the accounting of what each method moves is taken from what it really moved. Each record has a
kind: `TRAINING` (what training needs: activations, gradients) or `EVALUATION` (parameters
gathered to test the composed network between epochs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from synthpart.memory import tree_bytes

TRAINING, EVALUATION = "training", "evaluation"


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One copy between devices: what moved, from where to where, its bytes and its kind."""
  what: str
  source: str
  destination: str
  bytes: int
  kind: str = TRAINING


def device_name(device: jax.Device | jax.sharding.Sharding) -> str:
  """`platform:id`; for a sharding over a device group, its devices' names joined by commas."""
  if isinstance(device, jax.sharding.Sharding):
    return ",".join(device_name(d) for d in sorted(device.device_set, key=_device_id))
  return f"{device.platform}:{_device_id(device)}"


def _device_id(device: jax.Device) -> int:
  return int(device.id)


def _devices(target: jax.Device | jax.sharding.Sharding) -> set[jax.Device]:
  return set(target.device_set) if isinstance(target, jax.sharding.Sharding) else {target}


def hand_over(tree: Any, device: jax.Device | jax.sharding.Sharding, ledger: list[Transfer],
              what: str, kind: str = TRAINING) -> Any:
  """Moves `tree` to `device` (an explicit transfer) and records in `ledger` what crosses.

  `device` may be a sharding replicated over a device group: every device of the group that
  lacks a leaf receives a full copy of it, and the ledger counts each copy. Leaves already on
  every destination device, and host arrays, are not counted.
  """
  destinations = _devices(device)
  moving = [(x, destinations - x.devices()) for x in jax.tree.leaves(tree)
            if isinstance(x, jax.Array) and not destinations <= x.devices()]
  moved = jax.device_put(tree, device)
  if moving:
    sources = sorted({device_name(d) for x, _ in moving for d in x.devices()})
    ledger.append(Transfer(what, ",".join(sources), device_name(device),
                           sum(tree_bytes(x) * len(lacking) for x, lacking in moving), kind))
  return moved


def summarize(transfers: list[Transfer], label: str = "") -> list[Transfer]:
  """One record per (what, source, destination, kind), bytes summed, in order of first
  appearance; `what` says how many transfers it folds (and `label`) where more than one."""
  totals: dict[tuple[str, str, str, str], tuple[int, int]] = {}
  for t in transfers:
    count, size = totals.get((t.what, t.source, t.destination, t.kind), (0, 0))
    totals[(t.what, t.source, t.destination, t.kind)] = (count + 1, size + t.bytes)
  out = []
  for (what, source, destination, kind), (count, size) in totals.items():
    note = ", ".join(x for x in (label, f"{count} transfers" if count > 1 else "") if x)
    out.append(Transfer(f"{what} ({note})" if note else what, source, destination, size, kind))
  return out


def key_on(key: jax.Array, device: jax.Device) -> jax.Array:
  """A copy of a typed PRNG key on `device`, routed through the host.

  Keys are tiny; taking them through the host keeps device-to-device traffic for real data alone.
  """
  raw = jax.device_get(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.device_put(np.asarray(raw), device),
                                  impl=jax.random.key_impl(key))
