"""The one training loop: an epoch is a single jitted `lax.scan` over minibatches.

Every method (conventional, each segment, recovery) trains through `make_epoch`; the schedules
differ only in what data and objective they hand it and on which device they place it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from synthpart.model import Params
from synthpart.train.objectives import Constants

LossFn = Callable[[Params, dict, Constants, jax.Array], jax.Array]


class TrainState(NamedTuple):
  params: Params
  opt_state: optax.OptState


Carry = tuple[TrainState, dict, Constants]


def scaled_value_and_grad(loss_fn: LossFn, loss_scale: float = 1.0) -> Callable[..., Any]:
  """`jax.value_and_grad(loss_fn)`, with the loss multiplied by `loss_scale` before the backward
  pass and the loss and gradients divided by it after (static loss scaling for float16, so
  small gradients do not flush to zero). A scale of 1 is plain `value_and_grad`."""
  grad_fn = jax.value_and_grad(loss_fn)
  if loss_scale == 1.0:
    return grad_fn

  def scaled(params: Params, *args: Any) -> tuple[jax.Array, Any]:
    loss, grads = jax.value_and_grad(lambda p: loss_fn(p, *args) * loss_scale)(params)
    return loss / loss_scale, jax.tree.map(lambda g: g / loss_scale, grads)

  return scaled


# reduce((loss, grads)) -> (loss, grads) averaged over the devices of a `jax.pmap` group
Reduce = Callable[[tuple[jax.Array, Any]], tuple[jax.Array, Any]]


def _step(loss_fn: LossFn, optimizer: optax.GradientTransformation, loss_scale: float = 1.0,
          reduce: Reduce | None = None
          ) -> Callable[[Carry, tuple[jax.Array, jax.Array]], tuple[Carry, jax.Array]]:
  """One optimizer step on the minibatch `idx` [batch] gathered from the data on the device;
  under `jax.pmap`, `reduce` averages the loss and gradients over the group first."""
  grad_fn = scaled_value_and_grad(loss_fn, loss_scale)
  if reduce is not None:
    grad_fn = _reduced(grad_fn, reduce)

  def step(carry: tuple[TrainState, dict, Constants], xs: tuple[jax.Array, jax.Array]):
    state, data, consts = carry
    idx, key = xs
    batch = {name: array[idx] for name, array in data.items()}
    loss, grads = grad_fn(state.params, batch, consts, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (TrainState(params, opt_state), data, consts), loss

  return step


def epoch_order(key: jax.Array, epoch_index: jax.Array, num_examples: int,
                batch_size: int) -> jax.Array:
  """The minibatches of an epoch, [steps, batch] example indices: a permutation from
  fold_in(key, epoch), the last partial batch dropped. Every loop's epoch trains in this order;
  computed from a copy of the key, it gives any device the same order with nothing sent."""
  steps = num_examples // batch_size
  order_key, _ = jax.random.split(jax.random.fold_in(key, epoch_index))
  order = jax.random.permutation(order_key, num_examples)[:steps * batch_size]
  return order.reshape(steps, batch_size)


def _step_keys(key: jax.Array, epoch_index: jax.Array, steps: int) -> jax.Array:
  """One key per step of the epoch (the noise of SIL inputs), from fold_in(key, epoch)."""
  _, step_key = jax.random.split(jax.random.fold_in(key, epoch_index))
  return jax.random.split(step_key, steps)


def epoch_plan(key: jax.Array, epoch_index: jax.Array, num_examples: int,
               batch_size: int) -> tuple[jax.Array, jax.Array]:
  """An epoch's minibatches [steps, batch] (`epoch_order`) and step keys [steps], as the
  whole epoch (`make_epoch`) draws them: made once per epoch for the epoch's chunks."""
  steps = num_examples // batch_size
  return (epoch_order(key, epoch_index, num_examples, batch_size),
          _step_keys(key, epoch_index, steps))


def _reduced(grad_fn: Callable[..., Any], reduce: Reduce) -> Callable[..., Any]:
  def reduced(*args: Any) -> tuple[jax.Array, Any]:
    return reduce(grad_fn(*args))
  return reduced


def make_epoch(loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
               num_examples: int, loss_scale: float = 1.0,
               reduce: Reduce | None = None) -> jax.stages.Wrapped:
  """Returns jitted epoch(state, data, consts, key, epoch) -> (state, losses [steps]).

  `data` is a dict of per-example arrays [num_examples, ...] already on the device; each step
  gathers its minibatch from them, so nothing leaves the device during the epoch. The order is a
  fresh permutation per epoch from fold_in(key, epoch); the last partial batch is dropped. The
  state is donated: its buffers are reused for the updated state. `loss_scale`: see
  `scaled_value_and_grad`; `reduce`: see `_step` (`synthpart.placement.PmapEpoch`).
  """
  steps = num_examples // batch_size

  step = _step(loss_fn, optimizer, loss_scale, reduce)

  def epoch(state: TrainState, data: dict, consts: Constants, key: jax.Array,
            epoch_index: jax.Array) -> tuple[TrainState, jax.Array]:
    order = epoch_order(key, epoch_index, num_examples, batch_size)
    (state, _, _), losses = jax.lax.scan(step, (state, data, consts),
                                         (order, _step_keys(key, epoch_index, steps)))
    return state, losses

  return jax.jit(epoch, donate_argnums=0)


class StepwiseEpoch:
  """An epoch as a Python loop over one jitted step, with `make_epoch`'s order and step keys.

  XLA's CPU backend runs convolutions inside a loop body (a `lax.scan`) about ten times slower
  than the same convolutions at the top level of a program (measured in benchmarks/RESULTS.md),
  so loops over convolutional blocks dispatch one step at a time (`train.scan = false`). Called
  as epoch(state, data, consts, key, epoch) -> (state, losses [steps]); `chunk(count)` runs
  steps first .. first+count-1 of an epoch planned by `epoch_plan`, as `make_steps` does.
  """

  def __init__(self, loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
               num_examples: int, loss_scale: float = 1.0):
    self.steps = num_examples // batch_size
    step = _step(loss_fn, optimizer, loss_scale)

    def one(state: TrainState, data: dict, consts: Constants, idx: jax.Array,
            key: jax.Array) -> tuple[TrainState, jax.Array]:
      (state, _, _), loss = step((state, data, consts), (idx, key))
      return state, loss

    self.plan = jax.jit(functools.partial(epoch_plan, num_examples=num_examples,
                                          batch_size=batch_size))
    self.one = jax.jit(one, donate_argnums=0)

  def compile(self, state: TrainState, data: dict, consts: Constants,
              key: jax.Array) -> jax.stages.Compiled:
    """Compiles the step (and the plan) for these arguments; returns the compiled step."""
    order, keys = jax.eval_shape(self.plan, key, jax.ShapeDtypeStruct((), jnp.uint32))
    self.plan.lower(key, jax.ShapeDtypeStruct((), jnp.uint32)).compile()
    idx = jax.ShapeDtypeStruct(order.shape[1:], order.dtype)
    step_key = jax.ShapeDtypeStruct(keys.shape[1:], keys.dtype)
    return self.one.lower(state, data, consts, idx, step_key).compile()

  def chunk(self, count: int) -> Callable[..., tuple[TrainState, jax.Array]]:
    """Steps first .. first+count-1, called as (state, data, consts, order, step_keys, first)."""
    return functools.partial(self.run, count=count)

  def run(self, state: TrainState, data: dict, consts: Constants, order: jax.Array,
          step_keys: jax.Array, first: int | jax.Array, count: int
          ) -> tuple[TrainState, jax.Array]:
    """Steps first .. first+count-1 of the planned epoch (`epoch_plan`)."""
    start = int(first)
    losses = []
    for i in range(start, start + count):
      state, loss = self.one(state, data, consts, order[i], step_keys[i])
      losses.append(loss)
    return state, jnp.stack(losses)

  def __call__(self, state: TrainState, data: dict, consts: Constants, key: jax.Array,
               epoch_index: jax.Array) -> tuple[TrainState, jax.Array]:
    order, step_keys = self.plan(key, epoch_index)
    return self.run(state, data, consts, order, step_keys, 0, self.steps)


def make_steps(loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
               num_examples: int, num_steps: int, loss_scale: float = 1.0) -> jax.stages.Wrapped:
  """Returns jitted steps(state, data, consts, order, step_keys, first) -> (state, losses
  [num_steps]): steps first .. first+num_steps-1 of the epoch that `epoch_plan` planned
  (order [steps, batch], step_keys [steps]), with the order and step keys `make_epoch` uses,
  so an epoch run in chunks trains exactly as the whole epoch does. The plan is made once per
  epoch, not once per chunk (a permutation of the training set is not free)."""
  steps = num_examples // batch_size
  if not 1 <= num_steps <= steps:
    raise ValueError(f"a chunk of {num_steps} steps does not fit an epoch of {steps}")

  step = _step(loss_fn, optimizer, loss_scale)

  def chunk(state: TrainState, data: dict, consts: Constants, order: jax.Array,
            step_keys: jax.Array, first: jax.Array) -> tuple[TrainState, jax.Array]:
    xs = (jax.lax.dynamic_slice_in_dim(order, first, num_steps),
          jax.lax.dynamic_slice_in_dim(step_keys, first, num_steps))
    (state, _, _), losses = jax.lax.scan(step, (state, data, consts), xs)
    return state, losses

  return jax.jit(chunk, donate_argnums=0)


def make_predict(apply_fn: Callable[[Params, jax.Array], jax.Array],
                 chunk: int = 1024) -> Callable[[Params, jax.Array], jax.Array]:
  """Jitted predict(params, x [n, ...]) -> outputs [n, out], in chunks to bound memory."""
  def predict(params: Params, x: jax.Array) -> jax.Array:
    n = x.shape[0]
    size = _chunk_size(n, chunk)
    padded = -(-n // size) * size
    if padded != n:
      x = jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
    out = jax.lax.map(lambda xb: apply_fn(params, xb), x.reshape(-1, size, *x.shape[1:]))
    out = out.reshape(padded, *out.shape[2:])
    return out if padded == n else out[:n]
  return jax.jit(predict)


def _chunk_size(n: int, chunk: int) -> int:
  """A divisor of n near `chunk` where there is one: padding the inputs and slicing the outputs
  would each copy the whole array (the sequential hand-over's training-set outputs)."""
  for size in range(min(chunk, n), max(min(chunk, n) // 4, 1) - 1, -1):
    if n % size == 0:
      return size
  return min(chunk, n)


def count_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.sum(jnp.argmax(logits, axis=-1) == labels)
