"""Putting arrays on devices, and a ledger of every transfer between devices.

Everything a segment needs is placed on its device with an explicit `jax.device_put`. Arrays that
must cross from one segment's device to another's go through `hand_over`, which records the bytes,
so the accounting of what each method moves is taken from what it really moved. Each record has a
kind: `TRAINING` (what training needs: activations, gradients) or `EVALUATION` (parameters
gathered to test the composed network between epochs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from synthpart.memory import tree_bytes
from synthpart.records import TRAINING, Transfer


class Ledger:
  """The transfers of one method, in the order they happened: `hand_over` adds to it, and a
  resumed method takes up the transfers its checkpoint kept (`reset`)."""

  def __init__(self, transfers: Iterable[Transfer] = ()):
    self._transfers = list(transfers)

  def add(self, transfer: Transfer) -> None:
    self._transfers.append(transfer)

  def reset(self, transfers: Iterable[Transfer]) -> None:
    self._transfers = list(transfers)

  @property
  def transfers(self) -> tuple[Transfer, ...]:
    return tuple(self._transfers)


def device_name(device: jax.Device | jax.sharding.Sharding) -> str:
  """`platform:id`; for a sharding over a device group, its devices' names joined by commas."""
  if isinstance(device, jax.sharding.Sharding):
    return ",".join(device_name(d) for d in sorted(device.device_set, key=_device_id))
  return f"{device.platform}:{_device_id(device)}"


def _device_id(device: jax.Device) -> int:
  return int(device.id)


def _devices(target: jax.Device | jax.sharding.Sharding) -> set[jax.Device]:
  return set(target.device_set) if isinstance(target, jax.sharding.Sharding) else {target}


def hand_over(tree: Any, device: jax.Device | jax.sharding.Sharding, ledger: Ledger | None,
              what: str, kind: str = TRAINING) -> Any:
  """Moves `tree` to `device` (an explicit transfer) and records in `ledger` what crosses.

  `device` may be a sharding replicated over a device group: every device of the group that
  lacks a leaf receives a full copy of it, and the ledger counts each copy. Leaves already on
  every destination device, and host arrays, are not counted. Without a ledger nothing is
  recorded.
  """
  destinations = _devices(device)
  moving = [(x, destinations - x.devices()) for x in jax.tree.leaves(tree)
            if isinstance(x, jax.Array) and not destinations <= x.devices()]
  moved = jax.device_put(tree, device)
  if moving and ledger is not None:
    sources = sorted({device_name(d) for x, _ in moving for d in x.devices()})
    ledger.add(Transfer(what, ",".join(sources), device_name(device),
                           sum(tree_bytes(x) * len(lacking) for x, lacking in moving), kind))
  return moved


def key_on(key: jax.Array, device: jax.Device) -> jax.Array:
  """A copy of a typed PRNG key on `device`, routed through the host.

  Keys are tiny; taking them through the host keeps device-to-device traffic for real data alone.
  """
  raw = jax.device_get(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.device_put(np.asarray(raw), device),
                                  impl=jax.random.key_impl(key))
