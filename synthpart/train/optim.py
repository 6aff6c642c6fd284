"""Optimizers by name, from a `TrainConfig`."""

from __future__ import annotations

import optax

from synthpart.config import TrainConfig
from synthpart.errors import ConfigError


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
  """The optax transformation a `TrainConfig` names, at its learning rate."""
  lr = train.learning_rate
  if train.optimizer == "adam":
    return optax.adam(lr)
  if train.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=train.weight_decay)
  if train.optimizer == "sgd":
    return optax.sgd(lr)
  if train.optimizer == "momentum":
    return optax.sgd(lr, momentum=train.momentum, nesterov=True)
  if train.optimizer == "rmsprop":
    return optax.rmsprop(lr)
  if train.optimizer == "lamb":
    return optax.lamb(lr, weight_decay=train.weight_decay)
  raise ConfigError(f"optimizer {train.optimizer!r} is not one of adam, adamw, sgd, momentum, "
                    "rmsprop, lamb")
