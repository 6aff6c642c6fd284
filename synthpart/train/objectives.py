"""What a segment learns: its inputs, its targets and the loss between them.

A `Task` is static (hashable) and describes how one minibatch becomes a loss. The arrays it needs
(SIL tables, input statistics) travel as `Constants`, already on the segment's device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from synthpart.model import Params, apply_segment
from synthpart.partition import SegmentSpec
from synthpart.registry import Registry

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


class Constants(NamedTuple):
  """Arrays a task reads but never trains; None where unused."""
  sil_in: jax.Array | None = None  # [classes, width_in] table at the input cut
  sil_out: jax.Array | None = None  # [classes, width_out] table at the output cut
  mean: jax.Array | None = None  # [features] training-set mean of the scaled inputs
  std: jax.Array | None = None  # [features]


class Task(NamedTuple):
  """How segment `spec` turns a batch into a loss.

  inputs: "pixels" (uint8, scaled on the device), "features" (float activations handed over
  from the previous segment) or "sil" (the input cut's SIL vector of each label, plus noise).
  """
  spec: SegmentSpec
  inputs: str
  activation: str = "relu"
  dtype: str = "float32"
  sil_loss: str = "mse"
  noise: float = 0.0


def preprocess_pixels(x: jax.Array, consts: Constants) -> jax.Array:
  """uint8 [batch, features] -> float32 in [0, 1], standardised where statistics are given."""
  x = x.astype(jnp.float32) / 255.0
  if consts.mean is not None:
    x = (x - consts.mean) / consts.std
  return x


def regression_loss(kind: str, pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean loss between [batch, width] predictions and SIL targets (`SIL_LOSSES[kind]`)."""
  return SIL_LOSSES[kind](pred, target)


def segment_inputs(task: Task, batch: dict[str, jax.Array], consts: Constants,
                   key: jax.Array) -> jax.Array:
  """The float inputs of one minibatch, [batch, spec.widths[0]]."""
  if task.inputs == "pixels":
    return preprocess_pixels(batch["x"], consts)
  if task.inputs == "features":
    return batch["x"]
  x = consts.sil_in[batch["y"]]
  if task.noise > 0:
    x = x + task.noise * jax.random.normal(key, x.shape, x.dtype)
  return x


def make_loss(task: Task) -> Callable[[Params, dict, Constants, jax.Array], jax.Array]:
  """loss(params, batch, consts, key) -> scalar, for batch = {"x": [b, ...], "y": [b]}."""
  def loss(params: Params, batch: dict, consts: Constants, key: jax.Array) -> jax.Array:
    x = segment_inputs(task, batch, consts, key)
    out = apply_segment(params, x, task.spec, task.activation, task.dtype)
    if task.spec.is_last:
      return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()
    return regression_loss(task.sil_loss, out, consts.sil_out[batch["y"]])
  return loss
