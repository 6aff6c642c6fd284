"""The key-value store of `jax.distributed`: the one private JAX API synthpart uses, kept here.

A launch sends one start signal through the store that `jax.distributed.initialize` sets up
(process 0 checks the run directory, then tells the others to go, or why not). jax 0.10 to 0.12
have no public accessor for the store: `jax.distributed` exports `initialize`, `shutdown` and
`is_initialized`, and the store's client lives only in `jax._src.distributed.global_state`
(jax's own array serialization and multihost utilities reach it the same way). The public
alternatives are device collectives (`jax.experimental.multihost_utils`), which need every
process's devices to take part and, on CPU, a collectives backend; a start signal needs neither.

So this module is the only place that names the private module, and `missing()` says in one line
what moved when a jax release moves it; tests/test_distributed.py checks it on every jax.
"""

from __future__ import annotations

import importlib
from typing import Any

PRIVATE_MODULE = "jax._src.distributed"
METHODS = ("key_value_set", "blocking_key_value_get")


class JaxMoved(RuntimeError):
  """This jax keeps the key-value store's client elsewhere: the adapter must follow it."""


def missing() -> str | None:
  """What this jax lacks of the adapter's assumptions, or None where it has them all."""
  try:
    module = importlib.import_module(PRIVATE_MODULE)
  except ImportError as e:
    return f"{PRIVATE_MODULE} cannot be imported ({e})"
  state = getattr(module, "global_state", None)
  if state is None:
    return f"{PRIVATE_MODULE} has no global_state"
  if not hasattr(state, "client"):
    return f"{PRIVATE_MODULE}.global_state has no client"
  client = state.client
  absent = [m for m in METHODS if client is not None and not hasattr(client, m)]
  if absent:
    return f"the key-value store client has no {', '.join(absent)}"
  return None


def _client() -> Any:
  problem = missing()
  if problem:
    raise JaxMoved(f"this jax keeps the key-value store of jax.distributed elsewhere: {problem}; "
                   "synthpart/distributed/jaxkv.py must be updated to follow it")
  client = importlib.import_module(PRIVATE_MODULE).global_state.client
  if client is None:
    raise RuntimeError("the key-value store needs jax.distributed.initialize() first")
  return client


def put(key: str, value: str) -> None:
  """Stores `value` under `key`, for every process of the launch."""
  _client().key_value_set(key, value)


def get(key: str, timeout_ms: int) -> str:
  """The value under `key`, waiting up to `timeout_ms` for some process to store it."""
  return str(_client().blocking_key_value_get(key, timeout_ms))
