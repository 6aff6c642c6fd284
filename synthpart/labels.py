"""Synthetic intermediate labels (SIL): one fixed random vector per class at every cut.

A table is drawn once from a PRNG key and never trained. Each cut's key is the run's SIL key
folded with the cut's layer number, so adding or removing a cut leaves the other tables unchanged.

Targets a cut can reach: the cut block keeps its activation (so the composed segments are the
unpartitioned network), and a ReLU cannot output the negative entries of a gaussian or orthogonal
table. Where the cut block ends in an activation whose outputs are (almost) never negative
(`NON_NEGATIVE`: relu, gelu, silu, sigmoid), its table is shifted up by its smallest entry when
that is negative (`reachable`), so every entry is >= 0. A shift moves every class code alike, so
the distances between codes are unchanged; uniform tables (>= 0) stay as drawn. Linear and tanh
cuts keep their tables (tanh is symmetric about 0); sigmoid also caps the top at 1, which no
shift fixes: keep kappa within it. A cut after a block without an activation of its own (pool,
flatten) is treated as linear.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from synthpart.registry import Registry

# generator(key, num_classes, shape, scale) -> [num_classes, *shape] float32
Generator = Callable[[jax.Array, int, tuple[int, ...], float], jax.Array]
SIL_KINDS: Registry[Generator] = Registry("sil.kind")

# loss(pred [batch, width], target [batch, width]) -> scalar mean over the batch
RegressionLoss = Callable[[jax.Array, jax.Array], jax.Array]
SIL_LOSSES: Registry[RegressionLoss] = Registry("sil.loss")
SIL_LOSSES.add("mse", lambda pred, target: jnp.mean(jnp.square(pred - target)),
               "mean squared error")
SIL_LOSSES.add("l1", lambda pred, target: jnp.mean(jnp.abs(pred - target)),
               "mean absolute error")
SIL_LOSSES.add("cosine",
               lambda pred, target: jnp.mean(optax.cosine_distance(pred, target, epsilon=1e-8)),
               "cosine distance per example")


@SIL_KINDS.register("uniform", "the paper's kappa * U(0, 1)")
def uniform(key: jax.Array, num_classes: int, shape: tuple[int, ...], scale: float) -> jax.Array:
  """The paper's table: entries scale * U(0, 1). Returns [num_classes, *shape] float32."""
  return scale * jax.random.uniform(key, (num_classes, *shape), jnp.float32)


@SIL_KINDS.register("gaussian", "kappa * N(0, 1)")
def gaussian(key: jax.Array, num_classes: int, shape: tuple[int, ...], scale: float) -> jax.Array:
  """Entries scale * N(0, 1). Returns [num_classes, *shape] float32."""
  return scale * jax.random.normal(key, (num_classes, *shape), jnp.float32)


@SIL_KINDS.register("orthogonal", "orthonormal class vectors times kappa")
def orthogonal(key: jax.Array, num_classes: int, shape: tuple[int, ...],
               scale: float) -> jax.Array:
  """Orthonormal rows times scale where prod(shape) >= num_classes (else orthonormal columns),
  drawn flat and reshaped. Returns [num_classes, *shape] float32: every pair of classes is
  equally far apart."""
  flat = jax.nn.initializers.orthogonal(scale)(key, (num_classes, math.prod(shape)), jnp.float32)
  return flat.reshape(num_classes, *shape)


def sil_table(key: jax.Array, num_classes: int, shape: int | tuple[int, ...],
              kind: str = "uniform", scale: float = 1.0) -> jax.Array:
  """Draws one SIL table, [num_classes, *shape] float32 (an int shape is a width). Same key,
  same table, bit for bit."""
  shape = (shape,) if isinstance(shape, int) else tuple(shape)
  return SIL_KINDS[kind](key, num_classes, shape, scale)


def sil_distances(outputs: jax.Array, table: jax.Array, loss: str = "mse") -> jax.Array:
  """The SIL loss `loss` between every output [n, *shape] and every class's vector in `table`
  [classes, *shape]: [n, classes]. The argmin over classes is the nearest-SIL decode."""
  flat_out = outputs.reshape(outputs.shape[0], -1)
  flat_table = table.reshape(table.shape[0], -1)
  fn = SIL_LOSSES[loss]
  return jax.vmap(lambda o: jax.vmap(lambda t: fn(o[None], t[None]))(flat_table))(flat_out)


# Activations whose outputs cover [0, 1) and nothing (or next to nothing) below 0.
NON_NEGATIVE = frozenset({"relu", "gelu", "silu", "sigmoid"})


def reachable(table: jax.Array, activation: str) -> jax.Array:
  """`table` [classes, *shape] as targets for a cut block ending in `activation`: for an
  activation in `NON_NEGATIVE`, every entry raised by -min(table) where that is positive (the
  smallest becomes 0); otherwise unchanged."""
  if activation not in NON_NEGATIVE:
    return table
  return table - jnp.minimum(jnp.min(table), 0.0)


def sil_tables(key: jax.Array, shapes: tuple[tuple[int, ...], ...], cuts: tuple[int, ...],
               num_classes: int, kind: str = "uniform", scale: float = 1.0,
               activations: Mapping[int, str] | None = None) -> dict[int, jax.Array]:
  """One table per cut, keyed by the cut's block number; `shapes` are the network's per-example
  shapes at every block boundary, input first.

  The table at cut c has the shape of block c's output: [num_classes, *shapes[c]]. For a dense
  cut of width w this is the paper's table (transposed: one row per class); for a feature map it
  is one kappa * U(0, 1) tensor per class. `activations` maps a cut to the activation its block
  ends in (missing: "linear"); each table is shifted into its range (`reachable`).
  """
  activations = activations or {}
  return {c: reachable(sil_table(jax.random.fold_in(key, c), num_classes, shapes[c], kind, scale),
                       activations.get(c, "linear"))
          for c in cuts}
