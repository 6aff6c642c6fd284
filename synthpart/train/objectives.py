"""What a segment learns: its inputs, its targets and the loss between them.

A `Task` is static (hashable) and describes how one minibatch becomes a loss. The arrays it needs
(SIL tables, input statistics) travel as `Constants`, already on the segment's device.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from synthpart.labels import SIL_LOSSES
from synthpart.model import Params, apply_segment
from synthpart.partition import SegmentSpec


class Constants(NamedTuple):
  """Arrays a task reads but never trains; None where unused."""
  sil_in: jax.Array | None = None  # [classes, *input shape] table at the input cut
  sil_out: jax.Array | None = None  # [classes, *output shape] table at the output cut
  mean: jax.Array | None = None  # [*input shape] training-set mean of the scaled inputs
  std: jax.Array | None = None  # [*input shape]


class Inputs(enum.StrEnum):
  """What a loop is fed: the dataset's inputs (divided by the dataset's input scale on the
  device: 255 for uint8 images, 1 for float inputs), float activations handed over from the
  previous segment, or the input cut's SIL tensor of each label plus noise."""
  PIXELS = "pixels"
  FEATURES = "features"
  SIL = "sil"


class Task(NamedTuple):
  """How segment `spec` turns a batch into a loss.

  `inputs` says what it is fed (`Inputs`); pixels are divided by `input_scale`.
  """
  spec: SegmentSpec
  inputs: Inputs
  input_scale: float
  sil_loss: str = "mse"
  noise: float = 0.0


def preprocess_pixels(x: jax.Array, consts: Constants, scale: float) -> jax.Array:
  """Inputs [batch, ...] -> float32 divided by `scale` (uint8 images: [0, 1]), standardised
  where statistics are given."""
  x = x.astype(jnp.float32) / scale
  if consts.mean is not None and consts.std is not None:
    x = (x - consts.mean) / consts.std
  return x


def segment_forward(params: Params, x: jax.Array, task: Task, consts: Constants) -> jax.Array:
  """Segment `task.spec`'s outputs [batch, *output shape] for its inputs `x` [batch, ...]:
  pixels are preprocessed first (`preprocess_pixels`, with the task's input scale), activations
  go in as they are."""
  if task.inputs == Inputs.PIXELS:
    x = preprocess_pixels(x, consts, task.input_scale)
  return apply_segment(params, x, task.spec)


def regression_loss(kind: str, pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean loss between predictions and SIL targets [batch, *shape], each example flattened
  (`SIL_LOSSES[kind]`)."""
  return SIL_LOSSES[kind](pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1))


def segment_inputs(task: Task, batch: dict[str, jax.Array], consts: Constants,
                   key: jax.Array) -> jax.Array:
  """The float inputs of one minibatch, [batch, *spec.shapes[0]]."""
  if task.inputs == Inputs.PIXELS:
    return preprocess_pixels(batch["x"], consts, task.input_scale)
  if task.inputs == Inputs.FEATURES or consts.sil_in is None:
    return batch["x"]
  x = consts.sil_in[batch["y"]]
  if task.noise > 0:
    x = x + task.noise * jax.random.normal(key, x.shape, x.dtype)
  return x


def make_loss(task: Task) -> Callable[[Params, dict, Constants, jax.Array], jax.Array]:
  """loss(params, batch, consts, key) -> scalar, for batch = {"x": [b, ...], "y": [b]}."""
  def loss(params: Params, batch: dict, consts: Constants, key: jax.Array) -> jax.Array:
    x = segment_inputs(task, batch, consts, key)
    out = apply_segment(params, x, task.spec)
    if task.spec.is_last or consts.sil_out is None:
      return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()
    return regression_loss(task.sil_loss, out, consts.sil_out[batch["y"]])
  return loss
