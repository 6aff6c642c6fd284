"""Optimizers by name (`train.optimizer`), built as one optax chain per loop.

A loop's settings (a `synthpart.config.TrainConfig`) choose, each by name from a registry here:

- the optimizer (`OPTIMIZERS`): adam, adamw, sgd, momentum, rmsprop, lamb;
- the learning-rate schedule (`LR_SCHEDULES`): constant, cosine or step decay, after an optional
  linear warmup from 0 over `warmup_epochs`;
- which parameters weight decay reaches (`DECAY_MASKS`): all, or kernels only (no decay on
  biases and normalisation scales: every leaf of one dimension or fewer is left out).

Then `clip_norm` clips the gradients' global norm first, and `weight_decay` decays the weights
(decoupled for adamw and lamb, which take it themselves; added to the gradients, as L2, for the
others). `loss_scale` is the static loss scale for float16 compute: the loop multiplies the
loss by it before differentiating and divides the gradients after (`synthpart.train.epoch`),
and the optimizer skips any step whose gradients overflowed (`optax.apply_if_finite`).

With every default (constant rate, no warmup, no clipping, no decay, no loss scaling) the
chain is exactly the named optax optimizer at the plain learning rate, as it always was: the
same state and the same updates, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import optax

from synthpart.registry import Registry

# Consecutive overflowed steps `apply_if_finite` skips before it lets one through (and the
# loop's loss turns non-finite, so the driver stops it as diverged).
MAX_SKIPPED_STEPS = 20


class LoopSettings(Protocol):
  """What an optimizer reads of a loop's settings (a `synthpart.config.TrainConfig`)."""

  @property
  def optimizer(self) -> str: ...

  @property
  def learning_rate(self) -> float: ...

  @property
  def epochs(self) -> int: ...

  @property
  def weight_decay(self) -> float: ...

  @property
  def momentum(self) -> float: ...

  @property
  def lr_schedule(self) -> str: ...

  @property
  def warmup_epochs(self) -> float: ...

  @property
  def final_lr_factor(self) -> float: ...

  @property
  def step_epochs(self) -> int: ...

  @property
  def step_factor(self) -> float: ...

  @property
  def clip_norm(self) -> float: ...

  @property
  def decay_mask(self) -> str: ...

  @property
  def loss_scale(self) -> float: ...


# mask(params) -> a tree of booleans (True: decayed), or None for every parameter
Mask = Callable[[Any], Any] | None


def kernels_only(params: Any) -> Any:
  """True for leaves of two or more dimensions (kernels), False for biases and scales."""
  return jax.tree.map(lambda leaf: getattr(leaf, "ndim", 0) > 1, params)


DECAY_MASKS: Registry[Mask] = Registry("train.decay_mask")
DECAY_MASKS.add("all", None, "every parameter")
DECAY_MASKS.add("kernels", kernels_only,
                "kernels only: no decay on biases and normalisation scales (1-D leaves)")


def decay_mask(train: LoopSettings) -> Mask:
  return DECAY_MASKS[train.decay_mask]


# builder(learning rate or schedule, the loop's settings) -> transformation
Builder = Callable[[optax.ScalarOrSchedule, LoopSettings], optax.GradientTransformation]
OPTIMIZERS: Registry[Builder] = Registry("train.optimizer")
OPTIMIZERS.add("adam", lambda lr, t: optax.adam(lr), "Adam")
OPTIMIZERS.add("adamw", lambda lr, t: optax.adamw(lr, weight_decay=t.weight_decay,
                                                  mask=decay_mask(t)),
               "Adam with decoupled weight decay (train.weight_decay)")
OPTIMIZERS.add("sgd", lambda lr, t: optax.sgd(lr), "plain stochastic gradient descent")
OPTIMIZERS.add("momentum", lambda lr, t: optax.sgd(lr, momentum=t.momentum, nesterov=True),
               "SGD with Nesterov momentum (train.momentum)")
OPTIMIZERS.add("rmsprop", lambda lr, t: optax.rmsprop(lr), "RMSProp")
OPTIMIZERS.add("lamb", lambda lr, t: optax.lamb(lr, weight_decay=t.weight_decay,
                                                mask=decay_mask(t)),
               "LAMB (layer-wise adaptive large-batch optimizer)")
# The optimizers that apply train.weight_decay themselves (decoupled from the gradients).
DECOUPLED_DECAY = frozenset({"adamw", "lamb"})


def _constant(lr: float, train: LoopSettings, steps_per_epoch: int) -> optax.Schedule:
  del train, steps_per_epoch
  return optax.constant_schedule(lr)


def _cosine(lr: float, train: LoopSettings, steps_per_epoch: int) -> optax.Schedule:
  decay = max(train.epochs * steps_per_epoch - warmup_steps(train, steps_per_epoch), 1)
  return optax.cosine_decay_schedule(lr, decay, alpha=train.final_lr_factor)


def _step(lr: float, train: LoopSettings, steps_per_epoch: int) -> optax.Schedule:
  return optax.exponential_decay(lr, transition_steps=max(train.step_epochs * steps_per_epoch, 1),
                                 decay_rate=train.step_factor, staircase=True)


# schedule(learning rate, settings, steps per epoch) -> optax schedule, after any warmup
ScheduleBuilder = Callable[[float, LoopSettings, int], optax.Schedule]
LR_SCHEDULES: Registry[ScheduleBuilder] = Registry("train.lr_schedule")
LR_SCHEDULES.add("constant", _constant, "the learning rate throughout")
LR_SCHEDULES.add("cosine", _cosine, "cosine decay to learning_rate * final_lr_factor by the "
                 "loop's last step")
LR_SCHEDULES.add("step", _step, "multiplied by step_factor every step_epochs epochs")


def warmup_steps(train: LoopSettings, steps_per_epoch: int) -> int:
  """The linear warmup's length in optimizer steps."""
  return round(train.warmup_epochs * steps_per_epoch)


def learning_rate(train: LoopSettings, steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """The loop's learning rate: a plain number for a constant rate without warmup (as optax
  takes it), else a schedule of the optimizer step."""
  warmup = warmup_steps(train, steps_per_epoch)
  if train.lr_schedule == "constant" and warmup == 0:
    return train.learning_rate
  after = LR_SCHEDULES[train.lr_schedule](train.learning_rate, train, steps_per_epoch)
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, train.learning_rate, warmup), after], [warmup])


def make_optimizer(train: LoopSettings, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The loop's optax chain: clipping, weight decay, the named optimizer at its learning-rate
  schedule; skipping overflowed steps under loss scaling. `steps_per_epoch` turns the
  schedule's epochs into optimizer steps."""
  optimizer = OPTIMIZERS[train.optimizer](learning_rate(train, steps_per_epoch), train)
  parts = []
  if train.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train.clip_norm))
  if train.weight_decay > 0 and train.optimizer not in DECOUPLED_DECAY:
    parts.append(optax.add_decayed_weights(train.weight_decay, mask=decay_mask(train)))
  if parts:
    optimizer = optax.chain(*parts, optimizer)
  if train.loss_scale != 1.0:
    optimizer = optax.apply_if_finite(optimizer, MAX_SKIPPED_STEPS)
  return optimizer
