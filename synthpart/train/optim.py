"""Optimizers by name (`train.optimizer`), built as optax transformations for one loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import optax

from synthpart.registry import Registry


class LoopSettings(Protocol):
  """What an optimizer reads of a loop's settings (a `synthpart.config.TrainConfig`)."""

  @property
  def optimizer(self) -> str: ...

  @property
  def learning_rate(self) -> float: ...

  @property
  def weight_decay(self) -> float: ...

  @property
  def momentum(self) -> float: ...


# builder(learning rate or schedule, the loop's settings) -> transformation
Builder = Callable[[optax.ScalarOrSchedule, LoopSettings], optax.GradientTransformation]
OPTIMIZERS: Registry[Builder] = Registry("train.optimizer")
OPTIMIZERS.add("adam", lambda lr, t: optax.adam(lr), "Adam")
OPTIMIZERS.add("adamw", lambda lr, t: optax.adamw(lr, weight_decay=t.weight_decay),
               "Adam with decoupled weight decay (train.weight_decay)")
OPTIMIZERS.add("sgd", lambda lr, t: optax.sgd(lr), "plain stochastic gradient descent")
OPTIMIZERS.add("momentum", lambda lr, t: optax.sgd(lr, momentum=t.momentum, nesterov=True),
               "SGD with Nesterov momentum (train.momentum)")
OPTIMIZERS.add("rmsprop", lambda lr, t: optax.rmsprop(lr), "RMSProp")
OPTIMIZERS.add("lamb", lambda lr, t: optax.lamb(lr, weight_decay=t.weight_decay),
               "LAMB (layer-wise adaptive large-batch optimizer)")


def make_optimizer(train: LoopSettings) -> optax.GradientTransformation:
  """The optax transformation `train.optimizer` names, at `train.learning_rate`."""
  return OPTIMIZERS[train.optimizer](train.learning_rate, train)
