"""Model-parallel backprop dispatched step by step: the reference that shows what dispatching
costs. The fair baseline is `synthpart.train.model_parallel` (one compiled program per epoch).

The network is cut exactly as for the partitioned methods and segment i lives on
`problem.device_of(i)`, but training is ordinary end-to-end backprop, one call per segment per
step from Python. Every step:

  forward   segment 0 .. n-2: jitted `jax.vjp` of the segment -> cut activations + vjp residuals;
            the activations are handed over (an explicit, ledgered transfer) to the next device
  loss      segment n-1: loss, its parameter gradients and the gradient w.r.t. its input cut,
            optimizer update, all in one jitted call
  backward  segment n-2 .. 0: the cut cotangent is handed back, the segment's vjp turns it into
            parameter gradients (and, except for segment 0, the cotangent of its own input cut)
            and its own optimizer updates its own parameters

So every step moves batch x cut-width activations forward and as many cotangents back across each
cut, and costs 2n-1 dispatches. Each segment keeps its own optax state on its device. It reaches
conventional training's network (same init, minibatch order and updates, up to floating-point
reassociation). It is a benchmark, not a training method: `synthpart bench` times it beside
the compiled baseline (`synthpart.bench.loops`) and measures its memory
(`synthpart.bench.compiled`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from synthpart.config import TrainConfig
from synthpart.errors import ConfigError
from synthpart.model import Params, apply_segment
from synthpart.optim import make_optimizer
from synthpart.partition import SegmentSpec
from synthpart.progress import Progress
from synthpart.records import CurvePoint, LoopRecord, MethodRecord, summarize
from synthpart.train.epoch import TrainState, epoch_order
from synthpart.train.evaluation import make_evaluator
from synthpart.train.objectives import Constants, preprocess_pixels
from synthpart.train.problem import ORDER_STREAM, Problem, input_constants
from synthpart.train.segments import init_params
from synthpart.transfers import Ledger, device_name, hand_over, key_on

METHOD = "model-parallel-stepwise"


class Stage(NamedTuple):
  """One segment's compiled step functions, bound to its device.

  forward(params, x_or_data, consts, order, step) -> (out [b, w_out] f32, residuals); not last.
  backward(residuals, g_out [b, w_out], state) -> (state, g_in [b, w_in] or None); not last.
  last(state, x [b, w_in], labels, order, step) -> (state, loss, g_in [b, w_in]); last only.
  """
  spec: SegmentSpec
  device: jax.Device
  # Jitted, then replaced by their compiled executables (`_compile`); None where not used.
  forward: Any
  backward: Any
  last: Any


class StageState(NamedTuple):
  """What lives on one segment's device between steps."""
  state: TrainState
  # The training inputs [N, *input shape] (uint8 images or float inputs, as the dataset has them)
  # on the first device, labels [N] on the last, None in between.
  inputs: jax.Array | None
  consts: Constants
  key: jax.Array  # the order key, a copy on this device


def _batch_indices(order: jax.Array, step: jax.Array) -> jax.Array:
  """Row `step` of order [steps, batch]: the minibatch's example indices."""
  return jax.lax.dynamic_index_in_dim(order, step, keepdims=False)


def make_stage_fns(spec: SegmentSpec, optimizer: optax.GradientTransformation, input_scale: float
                   ) -> tuple[Callable | None, Callable | None, Callable | None]:
  """The jitted step functions of one segment: (forward, backward, last); see `Stage`.

  The first segment divides its inputs by `input_scale` (`Problem.input_scale`: 255 for uint8
  images, 1 for float inputs).
  """
  apply = functools.partial(apply_segment, spec=spec)

  def update(state: TrainState, grads: Params) -> TrainState:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state)

  if spec.is_last:
    def last(state: TrainState, x: jax.Array, labels: jax.Array, order: jax.Array,
             step: jax.Array) -> tuple[TrainState, jax.Array, jax.Array | None]:
      y = labels[_batch_indices(order, step)]

      def loss_fn(params: Params, x: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

      # The first segment's input is data: no gradient w.r.t. it is needed (one segment only).
      argnums = (0,) if spec.is_first else (0, 1)
      loss, grads = jax.value_and_grad(loss_fn, argnums=argnums)(state.params, x)
      g_in = None if spec.is_first else grads[1]
      return update(state, grads[0]), loss, g_in
    return None, None, jax.jit(last, donate_argnums=0)

  # The vjp's residuals include the parameters themselves (a dense layer's input gradient reads
  # its kernel). Returned from `forward`, they would be copied on every step; instead `forward`
  # returns only the other residuals and `backward` takes the parameters from the state it is
  # given. Which residual leaves are parameters is found while `forward` traces, by identity,
  # and kept here for `backward`'s trace, which always comes after (it needs forward's output).
  structure: dict[str, Any] = {}

  def forward(params: Params, x: jax.Array, consts: Constants, order: jax.Array,
              step: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    if spec.is_first:
      x = preprocess_pixels(x[_batch_indices(order, step)], consts, input_scale)
      out, vjp = jax.vjp(lambda p: apply(p, x), params)
    else:
      out, vjp = jax.vjp(apply, params, x)
    leaves, treedef = jax.tree.flatten(vjp)
    slot_of = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}
    slots = tuple(slot_of.get(id(leaf), -1) for leaf in leaves)
    structure.update(treedef=treedef, slots=slots)
    return out, [leaf for leaf, slot in zip(leaves, slots) if slot < 0]

  def backward(residuals: list[jax.Array], g_out: jax.Array,
               state: TrainState) -> tuple[TrainState, jax.Array | None]:
    param_leaves = jax.tree.leaves(state.params)
    rest = iter(residuals)
    leaves = [param_leaves[slot] if slot >= 0 else next(rest) for slot in structure["slots"]]
    cotangents = jax.tree.unflatten(structure["treedef"], leaves)(g_out)
    g_in = None if spec.is_first else cotangents[1]
    return update(state, cotangents[0]), g_in

  return jax.jit(forward), jax.jit(backward, donate_argnums=2), None


@dataclasses.dataclass
class ModelParallelRun:
  """All segments of one model-parallel training run, live on their devices."""
  stages: list[Stage]
  states: list[StageState]
  results: list[LoopRecord]
  batch_size: int
  num_examples: int
  order_fns: list[Any]  # jitted, then compiled: order(key, epoch) -> [steps, batch]
  # Step numbers 0..steps-1 as scalars on each device, made once: passing Python ints instead
  # would be an implicit host-to-device transfer on every call.
  step_indices: list[list[jax.Array]]

  @property
  def steps(self) -> int:
    return self.num_examples // self.batch_size


def _objective(spec: SegmentSpec) -> str:
  source = "inputs" if spec.is_first else "activations"
  target = "labels" if spec.is_last else "activations"
  return f"{source} -> {target} (backprop)"


def start_model_parallel(problem: Problem, train: TrainConfig, key: jax.Array,
                         num_examples: int | None = None) -> ModelParallelRun:
  """Places every segment's params, optimizer state and inputs on its device and compiles.

  `num_examples` trains on the first that many training examples (benchmarks); default all.
  Compilation lowers each function on real, committed arguments from one dry forward pass,
  whose outputs are discarded: it changes no state.
  """
  if len(problem.specs) < 2:
    raise ConfigError("model-parallel training needs at least one cut (model.cuts)")
  n = len(problem.train_y) if num_examples is None else num_examples
  if train.batch_size > n:
    raise ConfigError(f"train.batch_size {train.batch_size} is larger than the {n} training "
                      "examples")
  optimizer = make_optimizer(train, n // train.batch_size)
  stages, states, results, order_fns = [], [], [], []
  for spec in problem.specs:
    device = problem.device_of(spec.index)
    with jax.default_device(device):
      params = init_params(problem, spec, device)
      state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
      inputs = (problem.train_x[:n] if spec.is_first else
                problem.train_y[:n] if spec.is_last else None)
      consts = input_constants(problem, device) if spec.is_first else Constants()
      states.append(StageState(state, None if inputs is None else jax.device_put(inputs, device),
                               consts, key_on(key, device)))
    forward, backward, last = make_stage_fns(spec, optimizer, problem.input_scale)
    stages.append(Stage(spec, device, forward, backward, last))
    order_fns.append(jax.jit(functools.partial(epoch_order, num_examples=n,
                                               batch_size=train.batch_size)))
    results.append(LoopRecord(
        name=f"segment {spec.index}", layers=(spec.start, spec.stop), objective=_objective(spec),
        device=device_name(device), optimizer=train.optimizer,
        learning_rate=train.learning_rate, batch_size=train.batch_size, epochs=train.epochs,
        steps_per_epoch=n // train.batch_size))
  step_indices = [[jax.device_put(np.int32(step), problem.device_of(i))
                   for step in range(n // train.batch_size)] for i in range(len(problem.specs))]
  run = ModelParallelRun(stages, states, results, train.batch_size, n, order_fns, step_indices)
  _compile(run)
  return run


def _timed_compile(fn: Any, *args: Any) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _compile(run: ModelParallelRun) -> None:
  """Replaces every jitted function by its compiled executable; records compile seconds."""
  x: Any = None
  pending = []  # (stage index, residuals, output) of the dry forward pass, to lower backward
  for i, (stage, st) in enumerate(zip(run.stages, run.states)):
    epoch = jax.device_put(np.uint32(0), stage.device)
    step = run.step_indices[i][0]
    order_fn, seconds = _timed_compile(run.order_fns[i], st.key, epoch)
    run.order_fns[i] = order_fn
    order = order_fn(st.key, epoch)
    if stage.spec.is_last:
      last, s = _timed_compile(stage.last, st.state, x, st.inputs, order, step)
      run.stages[i] = stage._replace(last=last)
      run.results[i] = dataclasses.replace(run.results[i], compile_seconds=seconds + s)
      break
    source = st.inputs if stage.spec.is_first else x
    forward, s = _timed_compile(stage.forward, st.state.params, source, st.consts, order, step)
    out, residuals = forward(st.state.params, source, st.consts, order, step)
    pending.append((i, residuals, out))
    run.stages[i] = stage._replace(forward=forward)
    run.results[i] = dataclasses.replace(run.results[i], compile_seconds=seconds + s)
    x = jax.device_put(out, run.stages[i + 1].device)  # a dry run: not a ledgered transfer
  for i, residuals, out in pending:
    backward, s = _timed_compile(run.stages[i].backward, residuals, out, run.states[i].state)
    run.stages[i] = run.stages[i]._replace(backward=backward)
    run.results[i] = dataclasses.replace(
        run.results[i], compile_seconds=run.results[i].compile_seconds + s)


def run_epoch(run: ModelParallelRun, epoch: int, ledger: Ledger) -> jax.Array:
  """Dispatches one epoch, step by step; returns the per-step losses [steps] (not waited on).

  Every crossing of a cut goes through `hand_over`, so `ledger` gets one record per transfer.
  """
  stages, states = run.stages, run.states
  orders = [fn(st.key, jax.device_put(np.uint32(epoch), stage.device))
            for fn, st, stage in zip(run.order_fns, states, stages)]
  losses = []
  for step in range(run.steps):
    x: Any = None
    tape = []
    for i, (stage, st) in enumerate(zip(stages, states)):
      if stage.spec.is_last:
        state, loss, g = stage.last(st.state, x, st.inputs, orders[i],
                                    run.step_indices[i][step])
        states[i] = st._replace(state=state)
        losses.append(loss)
        break
      source = st.inputs if stage.spec.is_first else x
      out, residuals = stage.forward(st.state.params, source, st.consts, orders[i],
                                     run.step_indices[i][step])
      tape.append(residuals)
      x = hand_over(out, stages[i + 1].device, ledger, f"cut {stage.spec.output_cut} activations")
    for i in reversed(range(len(tape))):
      g = hand_over(g, stages[i].device, ledger, f"cut {stages[i].spec.output_cut} gradients")
      state, g = stages[i].backward(tape[i], g, states[i].state)
      states[i] = states[i]._replace(state=state)
  last_device = stages[-1].device
  return jnp.stack([jax.device_put(l, last_device) for l in losses])


def segment_params(run: ModelParallelRun) -> list[Params]:
  return [st.state.params for st in run.states]


def train_model_parallel(problem: Problem, progress: Progress,
                         track_accuracy: bool = True) -> tuple[list[Params], MethodRecord]:
  """End-to-end backprop with segment i on device i, dispatched step by step: activations and
  gradients cross every step.

  Uses the conventional baseline's settings (`train`), init and minibatch order, so it reaches
  the same network; returns the trained segments' params (on the host) and the record. The
  ledger holds one record per cut, direction and epoch, with the bytes of all its steps.
  """
  train = problem.config.train
  run = start_model_parallel(problem, train, problem.key(ORDER_STREAM, 0))
  ledger = Ledger()
  evaluate = (make_evaluator(problem, problem.device_of(0), ledger) if track_accuracy else None)
  bar = progress.bar(METHOD, train.epochs)
  wall, losses_per_epoch, seconds_per_epoch, diverged = 0.0, [], [], False
  curve: list[CurvePoint] = []
  for epoch in range(train.epochs):
    step_ledger = Ledger()
    start = time.perf_counter()
    losses = jax.block_until_ready(run_epoch(run, epoch, step_ledger))
    seconds = time.perf_counter() - start
    wall += seconds
    for t in summarize(step_ledger.transfers, f"epoch {epoch + 1}"):
      ledger.add(t)
    loss = float(np.mean(jax.device_get(losses)))
    # Every segment learns from the one end-to-end loss, so each records it.
    losses_per_epoch.append(loss)
    seconds_per_epoch.append(seconds)
    if not np.isfinite(loss):
      diverged = True
      progress.message(f"{METHOD} diverged at epoch {epoch + 1}: loss {loss}")
      break
    examples = ((epoch + 1) * run.steps * run.batch_size,) * len(run.stages)
    point = CurvePoint(epoch=epoch + 1, seconds=wall, examples=examples)
    if evaluate is not None:
      accuracy = evaluate(segment_params(run))
      point = dataclasses.replace(point, accuracy=accuracy)
      bar.update(loss=loss, acc=accuracy)
    else:
      bar.update(loss=loss)
    curve.append(point)
  bar.close()
  params = jax.device_get(segment_params(run))
  final = (evaluate or make_evaluator(problem, problem.device_of(0)))(params)
  segments = tuple(dataclasses.replace(r, loss_per_epoch=tuple(losses_per_epoch),
                                       epoch_seconds=tuple(seconds_per_epoch),
                                       diverged=diverged) for r in run.results)
  return params, MethodRecord(METHOD, test_accuracy=final, wall_seconds=wall,
                              compile_seconds=sum(r.compile_seconds for r in run.results),
                              segments=segments, curve=tuple(curve),
                              transfers=ledger.transfers)
