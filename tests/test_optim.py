"""Optax chains per loop: defaults unchanged bit for bit; schedules, clipping, decay masks and
loss scaling do what they say."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from synthpart import config as config_lib
from synthpart.config import TrainConfig
from synthpart.errors import ConfigError
from synthpart.optim import OPTIMIZERS, learning_rate, make_optimizer
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.epoch import scaled_value_and_grad

from tiny import tiny_config, tiny_dataset

# What each optimizer was before chains: the plain optax transformation at the plain rate.
BEFORE = {"adam": lambda t: optax.adam(t.learning_rate),
          "adamw": lambda t: optax.adamw(t.learning_rate, weight_decay=t.weight_decay),
          "sgd": lambda t: optax.sgd(t.learning_rate),
          "momentum": lambda t: optax.sgd(t.learning_rate, momentum=t.momentum, nesterov=True),
          "rmsprop": lambda t: optax.rmsprop(t.learning_rate),
          "lamb": lambda t: optax.lamb(t.learning_rate, weight_decay=t.weight_decay)}


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"kernel": jax.random.normal(k1, (5, 3)), "bias": jax.random.normal(k2, (3,))}


def _run(optimizer, params, grads_seq):
  state = optimizer.init(params)
  for grads in grads_seq:
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _grads(n=3):
  keys = jax.random.split(jax.random.key(1), n)
  return [jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), _params()) for k in keys]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_defaults_give_the_plain_optimizer_bit_for_bit(name):
  assert set(BEFORE) == set(OPTIMIZERS)
  train = TrainConfig(optimizer=name, weight_decay=1e-2 if name in ("adamw", "lamb") else 0.0)
  new_params, new_state = _run(make_optimizer(train, 10), _params(), _grads())
  old_params, old_state = _run(BEFORE[name](train), _params(), _grads())
  assert jax.tree.structure(new_state) == jax.tree.structure(old_state)
  for a, b in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves((old_params,
                                                                             old_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert learning_rate(train, 10) == train.learning_rate  # a number, not a schedule


def test_schedules_follow_their_shape():
  spe = 10
  cosine = learning_rate(TrainConfig(lr_schedule="cosine", epochs=4, warmup_epochs=1,
                                     final_lr_factor=0.1), spe)
  assert [float(cosine(s)) for s in (0, 5, 10)] == pytest.approx([0, 5e-4, 1e-3])
  assert float(cosine(40)) == pytest.approx(1e-4)  # learning_rate * final_lr_factor at the end
  assert float(cosine(25)) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway through the decay
  step = learning_rate(TrainConfig(lr_schedule="step", step_epochs=2, step_factor=0.5), spe)
  assert [float(step(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
      [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def _losses(**overrides):
  config = tiny_config(**{"train.epochs": 4, **overrides})
  problem = P.make_problem(config, tiny_dataset(), jax.devices()[:1])
  _, result = S.train_conventional(problem, Progress(quiet=True))
  return np.array(result.segments[0].loss_per_epoch)


def test_schedules_change_the_loss_curve_as_expected():
  constant = _losses()
  assert np.all(np.diff(constant) < 0)
  # A step to a near-zero rate after the first epoch: that epoch as before, then flat.
  step = _losses(**{"train.lr_schedule": "step", "train.step_factor": 1e-6})
  assert step[0] == pytest.approx(constant[0], rel=1e-5)
  assert np.abs(np.diff(step[1:])).max() < 1e-3 * step[1] < constant[1] - constant[3]
  # Warmup from 0 over two epochs: a slower start, the same rate after.
  warm = _losses(**{"train.warmup_epochs": 2})
  assert warm[0] > constant[0] and warm[1] > constant[1]
  # Cosine to 0: the last epoch gains less than the constant rate's last epoch.
  cosine = _losses(**{"train.lr_schedule": "cosine"})
  assert cosine[2] - cosine[3] < constant[2] - constant[3]


def test_clipping_bounds_the_update():
  train = TrainConfig(optimizer="sgd", learning_rate=1.0, clip_norm=0.5)
  grads = jax.tree.map(lambda p: 100 * jnp.ones_like(p), _params())
  updates, _ = make_optimizer(train).update(grads, make_optimizer(train).init(_params()))
  assert float(optax.global_norm(updates)) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_mask_spares_biases(name):
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  for mask, bias_decayed in (("all", True), ("kernels", False)):
    train = TrainConfig(optimizer=name, learning_rate=0.1, weight_decay=0.5, decay_mask=mask)
    optimizer = make_optimizer(train)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    assert float(jnp.abs(updates["kernel"]).min()) > 0
    assert bool(jnp.any(updates["bias"] != 0)) is bias_decayed


def test_loss_scaling_unscales_and_skips_overflow():
  params = _params()

  def loss(p, x):
    return jnp.sum((x @ p["kernel"] + p["bias"]) ** 2)

  x = jnp.ones((2, 5))
  plain = jax.value_and_grad(loss)(params, x)
  scaled = scaled_value_and_grad(loss, 1024.0)(params, x)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  optimizer = make_optimizer(TrainConfig(loss_scale=1024.0))
  state = optimizer.init(params)
  inf = jax.tree.map(lambda p: jnp.full_like(p, jnp.inf), params)
  updates, state = optimizer.update(inf, state, params)  # an overflowed step: skipped
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))


def test_float16_with_loss_scaling_trains():
  losses = _losses(**{"model.dtype": "float16", "train.loss_scale": 256.0})
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("key,value,words", [
    ("train.lr_schedule", "linear", "train.lr_schedule"),
    ("train.decay_mask", "biases", "train.decay_mask"),
    ("train.warmup_epochs", 20, "warmup_epochs"),
    ("train.step_factor", 0, "step_factor"),
    ("train.clip_norm", -1, "clip_norm"),
    ("recovery.loss_scale", 0, "recovery.loss_scale"),
    ("segments.1.lr_schedule", "nope", "segments.1.lr_schedule"),
])
def test_bad_optimizer_settings_are_one_line_errors(key, value, words):
  with pytest.raises(ConfigError, match=words):
    config_lib.load(overrides={key: value})


def test_segment_overrides_reach_the_schedule():
  config = config_lib.load(overrides={"train.lr_schedule": "cosine",
                                      "segments.1.lr_schedule": "step"})
  assert [config.segment_train(i).lr_schedule for i in (0, 1)] == ["cosine", "step"]
  assert dataclasses.asdict(config.recovery)["lr_schedule"] == "constant"
