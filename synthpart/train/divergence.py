"""When a loop has diverged: its reference levels (chance for a classifying loop, the loss of
predicting zeros for a loop regressing onto SIL targets), the blow-up rule, and out-of-memory
errors told apart from others. The rules themselves are stated in `synthpart.train.driver`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from synthpart.labels import SIL_LOSSES

# A loss within this fraction of chance (or above it) is no better than chance.
CHANCE_TOLERANCE = 0.01
# A finite epoch loss past this many times its loop's reference (`blown_up`) blew up.
BLOWUP_FACTOR = 1e3


def is_out_of_memory(e: BaseException) -> bool:
  """Whether `e` is the host or XLA running out of memory (XLA reports RESOURCE_EXHAUSTED on
  accelerators and "Out of memory allocating" on CPU)."""
  text = str(e)
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
           if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def chance_loss(labels: Any) -> float | None:
  """The cross-entropy of predicting the labels' frequencies (log C for C balanced classes);
  None for fewer than two classes, where there is no chance level to judge."""
  counts = np.bincount(np.asarray(jax.device_get(labels)).ravel())
  p = counts[counts > 0] / counts.sum() if counts.sum() else np.zeros(0)
  entropy = float(-(p * np.log(p)).sum())
  return entropy if len(p) > 1 else None


@functools.partial(jax.jit, static_argnames="loss")
def _zero_losses(rows: jax.Array, loss: str) -> jax.Array:
  """The SIL loss of predicting zeros for each row [classes, width]: [classes]."""
  fn = SIL_LOSSES[loss]
  return jax.vmap(lambda row: fn(jnp.zeros_like(row[None]), row[None]))(rows)


def zero_prediction_loss(table: Any, labels: Any, loss: str) -> float:
  """The SIL loss `loss` of predicting zeros for every training target: the mean over the
  labels [n] of the loss between 0 and their class's row of `table` [classes, *shape]. Every
  transfer explicit (host, then the default device, then back)."""
  rows = np.asarray(jax.device_get(table), np.float32).reshape(len(table), -1)
  per_class = np.asarray(jax.device_get(_zero_losses(jax.device_put(rows), loss)))
  counts = np.bincount(np.asarray(jax.device_get(labels)).ravel(), minlength=len(per_class))
  return float((per_class * counts[:len(per_class)]).sum() / max(1, counts.sum()))


def blown_up(loss: float, epoch: int, level: float | None, first_step: float | None,
             what: str = "chance") -> str | None:
  """Why a finite epoch mean loss `loss` (of 1-based `epoch`) blew up, or None: it is above
  `BLOWUP_FACTOR` times the larger of the loop's `level` (`what` names it: chance, or the loss
  of predicting zeros) and the loss of its very first step (`first_step`, the network as
  initialised), either None where unknown. Neither known: never."""
  references = [(value, name) for value, name in ((level, what), (first_step,
                                                                   "its first step's loss"))
                if value is not None and math.isfinite(value) and value > 0]
  if not references:
    return None
  value, name = max(references)
  if loss > BLOWUP_FACTOR * value:
    return f"loss {loss:.4g} at epoch {epoch}, over {BLOWUP_FACTOR:g} times {name} ({value:.4g})"
  return None


