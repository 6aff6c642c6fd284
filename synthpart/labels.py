"""Synthetic intermediate labels (SIL): one fixed random vector per class at every cut.

A table is drawn once from a PRNG key and never trained. Each cut's key is the run's SIL key
folded with the cut's layer number, so adding or removing a cut leaves the other tables unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from synthpart.registry import Registry

# generator(key, num_classes, width, scale) -> [num_classes, width] float32
Generator = Callable[[jax.Array, int, int, float], jax.Array]
SIL_KINDS: Registry[Generator] = Registry("sil.kind")


@SIL_KINDS.register("uniform", "the paper's kappa * U(0, 1)")
def uniform(key: jax.Array, num_classes: int, width: int, scale: float) -> jax.Array:
  """The paper's table: entries scale * U(0, 1). Returns [num_classes, width] float32."""
  return scale * jax.random.uniform(key, (num_classes, width), jnp.float32)


@SIL_KINDS.register("gaussian", "kappa * N(0, 1)")
def gaussian(key: jax.Array, num_classes: int, width: int, scale: float) -> jax.Array:
  """Entries scale * N(0, 1). Returns [num_classes, width] float32."""
  return scale * jax.random.normal(key, (num_classes, width), jnp.float32)


@SIL_KINDS.register("orthogonal", "orthonormal class vectors times kappa")
def orthogonal(key: jax.Array, num_classes: int, width: int, scale: float) -> jax.Array:
  """Orthonormal rows times scale where width >= num_classes (else orthonormal columns).

  Returns [num_classes, width] float32: every pair of classes is equally far apart.
  """
  return jax.nn.initializers.orthogonal(scale)(key, (num_classes, width), jnp.float32)


def sil_table(key: jax.Array, num_classes: int, width: int, kind: str = "uniform",
              scale: float = 1.0) -> jax.Array:
  """Draws one SIL table, [num_classes, width] float32. Same key, same table, bit for bit."""
  return SIL_KINDS[kind](key, num_classes, width, scale)


def sil_tables(key: jax.Array, widths: tuple[int, ...], cuts: tuple[int, ...], num_classes: int,
               kind: str = "uniform", scale: float = 1.0) -> dict[int, jax.Array]:
  """One table per cut, keyed by the cut's layer number; `widths` are the network's layer widths.

  The table at cut c is as wide as the output of dense layer c, widths[c].
  """
  return {c: sil_table(jax.random.fold_in(key, c), num_classes, widths[c], kind, scale)
          for c in cuts}
