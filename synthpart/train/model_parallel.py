"""Model-parallel backprop, compiled: the fair baseline the partitioned schedules are measured
against.

The network is cut exactly as for the partitioned methods, segment i on device i, and trained by
ordinary end-to-end backprop with the conventional run's settings, init and minibatch order. An
epoch is one program over a mesh of the segments' devices (`shard_map` over the axis "stage"), one
dispatch per epoch: a `lax.scan` over the steps, and in each step

  forward   stage k = 0 .. n-2 runs its segment (`jax.vjp`, keeping the residuals on its device)
            and `ppermute`s the cut activations [batch, *cut shape] to stage k+1
  loss      stage n-1: the loss, its parameter gradients and the gradient w.r.t. its input
  backward  stage k = n-2 .. 0 receives the cut's gradient by `ppermute` and turns it into its
            parameter gradients (and the gradient w.r.t. its own input)
  update    every stage applies its own optimizer to its own parameters

Every device runs the same program; `lax.switch` on the device's stage runs only its own
segment's code (the others' branches give zeros). So activations and gradients cross every cut
every step, inside the compiled epoch: no step is dispatched from Python. Stages are not
overlapped (no microbatches): this is synchronous backprop, the same updates as conventional
training up to floating-point reassociation.

An SPMD program holds arrays of one shape on every device, and segments differ: each stage's
parameters and optimizer state are packed into shared slots (`Slots`), 1-D arrays sized for the
largest stage, stage i's row on device i. A device therefore reserves the largest stage's size
(its own segment's leaves are views of the slots where sizes match). The dataset's inputs and
labels are on every stage's device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from synthpart.errors import ConfigError
from synthpart.flops import segment_flops, segment_step_flops
from synthpart.memory import compiled_memory, tree_bytes
from synthpart.model import Params, apply_segment, whole_network
from synthpart.optim import make_optimizer
from synthpart.partition import SegmentSpec
from synthpart.progress import Progress
from synthpart.records import LoopRecord, MethodRecord, Transfer
from synthpart.train.driver import drive
from synthpart.train.epoch import TrainState, epoch_order
from synthpart.train.evaluation import evaluator_of, make_evaluator
from synthpart.train.hooks import Evaluator
from synthpart.train.loop import Loop, LoopSpec
from synthpart.train.objectives import Constants, preprocess_pixels
from synthpart.train.problem import ORDER_STREAM, Problem, input_constants
from synthpart.train.schedules import RunHooks
from synthpart.train.segments import init_params
from synthpart.transfers import Ledger, device_name, key_on

METHOD = "model-parallel"
AXIS = "stage"


class Slots(NamedTuple):
  """Where each stage's leaves sit in slots shared by every stage.

  Slot j is a 1-D array of `sizes[j]` elements of `dtypes[j]`. Stage i's leaf l (in
  `jax.tree.leaves` order) is the first `prod(shapes[i][l])` elements of slot `places[i][l]`.
  Leaves are matched to slots largest to largest within a dtype, so slots are as small as the
  stages allow.
  """
  sizes: tuple[int, ...]
  dtypes: tuple[Any, ...]
  places: tuple[tuple[int, ...], ...]
  shapes: tuple[tuple[tuple[int, ...], ...], ...]
  treedefs: tuple[Any, ...]


class SlotState(NamedTuple):
  """A stage's training state packed into slots (`Slots`): parameters and optimizer state."""
  params: tuple[jax.Array, ...]
  opt_state: tuple[jax.Array, ...]


def plan_slots(trees: Sequence[Any]) -> Slots:
  """The shared slots of one pytree (arrays or abstract arrays) per stage."""
  flat = [jax.tree.flatten(tree) for tree in trees]
  dtypes = sorted({jnp.dtype(x.dtype) for leaves, _ in flat for x in leaves}, key=str)
  sizes: list[int] = []
  slot_dtypes: list[Any] = []
  places: list[list[int]] = [[-1] * len(leaves) for leaves, _ in flat]
  for dtype in dtypes:
    ranked = [sorted((i for i, x in enumerate(leaves) if jnp.dtype(x.dtype) == dtype),
                     key=functools.partial(_size_rank, leaves))
              for leaves, _ in flat]
    for rank in range(max(len(r) for r in ranked)):
      slot = len(sizes)
      holders = [(stage, r[rank]) for stage, r in enumerate(ranked) if rank < len(r)]
      sizes.append(max(math.prod(flat[stage][0][i].shape) for stage, i in holders))
      slot_dtypes.append(dtype)
      for stage, i in holders:
        places[stage][i] = slot
  return Slots(tuple(sizes), tuple(slot_dtypes), tuple(tuple(p) for p in places),
               tuple(tuple(tuple(x.shape) for x in leaves) for leaves, _ in flat),
               tuple(treedef for _, treedef in flat))


def _size_rank(leaves: Sequence[Any], i: int) -> int:
  return -math.prod(leaves[i].shape)


def unpack(slots: Slots, stage: int, arrays: Sequence[jax.Array]) -> Any:
  """Stage `stage`'s pytree from the slot arrays (1-D each)."""
  leaves = [arrays[slot][:math.prod(shape)].reshape(shape)
            for slot, shape in zip(slots.places[stage], slots.shapes[stage], strict=True)]
  return jax.tree.unflatten(slots.treedefs[stage], leaves)


def pack(slots: Slots, stage: int, tree: Any,
         into: Sequence[jax.Array] | None = None) -> tuple[jax.Array, ...]:
  """Stage `stage`'s pytree written into the slot arrays `into` (zeros where not given); slots
  the stage does not use are left as they are."""
  arrays = list(into) if into is not None else [jnp.zeros(n, d) for n, d in
                                                 zip(slots.sizes, slots.dtypes, strict=True)]
  for slot, leaf in zip(slots.places[stage], jax.tree.leaves(tree), strict=True):
    flat = leaf.reshape(-1).astype(slots.dtypes[slot])
    arrays[slot] = (flat if flat.size == slots.sizes[slot]
                    else jax.lax.dynamic_update_slice(arrays[slot], flat, (0,)))
  return tuple(arrays)


def _zeros_like(struct: Any) -> Any:
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the compiled epoch needs to know of the stages."""
  specs: tuple[SegmentSpec, ...]
  params: Slots  # parameters, and their gradients
  opt: Slots  # optimizer states
  optimizer: optax.GradientTransformation
  batch_size: int
  num_examples: int
  input_scale: float


def _stage_fns(plan: Plan) -> tuple[list[Callable], list[Callable], list[Callable], Callable]:
  """The per-stage branches: forward (stages 0..n-2), backward (0..n-2), update (every stage)
  and the last stage's loss. Each forward keeps only the vjp residuals that are not parameters;
  its backward takes the parameters from the slots again (found while forward traces)."""
  n = len(plan.specs)
  structures: list[dict[str, Any]] = [{} for _ in range(n)]

  def forward(k: int) -> Callable:
    spec = plan.specs[k]

    def fn(param_slots, x_data, consts, idx, h):
      params = unpack(plan.params, k, param_slots)
      if spec.is_first:
        x = preprocess_pixels(x_data[idx], consts, plan.input_scale)
        out, vjp = jax.vjp(lambda p: apply_segment(p, x, spec), params)
      else:
        out, vjp = jax.vjp(functools.partial(apply_segment, spec=spec), params, h)
      leaves, treedef = jax.tree.flatten(vjp)
      slot_of = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}
      where = tuple(slot_of.get(id(leaf), -1) for leaf in leaves)
      structures[k].update(treedef=treedef, where=where)
      return out, [leaf for leaf, w in zip(leaves, where, strict=True) if w < 0]
    return fn

  def backward(k: int) -> Callable:
    spec = plan.specs[k]

    def fn(param_slots, tape, g, grad_slots):
      param_leaves = jax.tree.leaves(unpack(plan.params, k, param_slots))
      rest = iter(tape)
      leaves = [param_leaves[w] if w >= 0 else next(rest) for w in structures[k]["where"]]
      cotangents = jax.tree.unflatten(structures[k]["treedef"], leaves)(g)
      g_in = None if spec.is_first else cotangents[1]
      return pack(plan.params, k, cotangents[0], grad_slots), g_in
    return fn

  def last(param_slots, labels, idx, h, grad_slots):
    spec = plan.specs[-1]
    y = labels[idx]

    def loss_fn(params: Params, x: jax.Array) -> jax.Array:
      logits = apply_segment(params, x, spec)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params = unpack(plan.params, n - 1, param_slots)
    loss, (grads, g_in) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, h)
    return loss, pack(plan.params, n - 1, grads, grad_slots), g_in

  def update(k: int) -> Callable:
    def fn(state, grad_slots):
      params = unpack(plan.params, k, state.params)
      opt_state = unpack(plan.opt, k, state.opt_state)
      grads = unpack(plan.params, k, grad_slots)
      updates, opt_state = plan.optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return SlotState(pack(plan.params, k, params, state.params),
                        pack(plan.opt, k, opt_state, state.opt_state))
    return fn

  return ([forward(k) for k in range(n - 1)], [backward(k) for k in range(n - 1)],
          [update(k) for k in range(n)], last)


def _only(stage: jax.Array, k: int, n: int, fn: Callable, *args: Any,
          keep: int | None = None) -> Any:
  """fn(*args) on stage k's device; on the others zeros of the same structure, except that with
  `keep` the first output (fn returns a tuple) is args[keep] as it is."""
  struct = jax.eval_shape(fn, *args)

  def idle(*values: Any) -> Any:
    zeros = _zeros_like(struct)
    return zeros if keep is None else (values[keep], *zeros[1:])

  return jax.lax.switch(stage, [fn if j == k else idle for j in range(n)], *args)


def make_epoch(plan: Plan) -> Callable[..., tuple[SlotState, jax.Array]]:
  """The per-device epoch: (state slots [1, size] each, data, consts, key, epoch) ->
  (state slots, losses [steps]), to run under `shard_map` over `AXIS`."""
  n = len(plan.specs)
  forwards, backwards, updates, last = _stage_fns(plan)

  def step(state: SlotState, idx: jax.Array, data: dict, consts: Constants
           ) -> tuple[SlotState, jax.Array]:
    stage = jax.lax.axis_index(AXIS)
    grads = tuple(jnp.zeros(size, dtype) for size, dtype in
                  zip(plan.params.sizes, plan.params.dtypes, strict=True))
    h: Any = None
    tapes = []
    for k in range(n - 1):
      if k:
        h = jax.lax.ppermute(h, AXIS, [(k - 1, k)])
      h, tape = _only(stage, k, n, forwards[k], state.params, data["x"], consts, idx, h)
      tapes.append(tape)
    h = jax.lax.ppermute(h, AXIS, [(n - 2, n - 1)])
    loss, grads, g = _only(stage, n - 1, n, last, state.params, data["y"], idx, h, grads)
    for k in reversed(range(n - 1)):
      g = jax.lax.ppermute(g, AXIS, [(k + 1, k)])
      grads, g = _only(stage, k, n, backwards[k], state.params, tapes[k], g, grads, keep=3)
    state = jax.lax.switch(stage, updates, state, grads)
    return state, loss

  def epoch(state: SlotState, data: dict, consts: Constants, key: jax.Array,
            epoch_index: jax.Array) -> tuple[SlotState, jax.Array]:
    order = epoch_order(key, epoch_index, plan.num_examples, plan.batch_size)
    local = jax.tree.map(lambda x: x[0], state)
    local, losses = jax.lax.scan(lambda s, idx: step(s, idx, data, consts), local, order)
    return jax.tree.map(lambda x: x[None], local), jax.lax.psum(losses, AXIS)

  return epoch


@functools.partial(jax.jit, static_argnums=(0, 1))
def _unpack_rows(slots: Slots, stage: int, rows: list[jax.Array]) -> Any:
  return unpack(slots, stage, [r[0] for r in rows])


def stage_params(plan: Plan, param_slots: Sequence[jax.Array],
                 devices: Sequence[jax.Device]) -> list[Params]:
  """Every stage's parameters, each on its own device, from the sharded slots."""
  def row(array: jax.Array, device: jax.Device) -> jax.Array:
    (shard,) = [s for s in array.addressable_shards if s.device == device]
    return shard.data
  return [_unpack_rows(plan.params, i, [row(a, d) for a in param_slots])
          for i, d in enumerate(devices)]


def _devices(problem: Problem) -> list[jax.Device]:
  """One distinct device per segment, or a `ConfigError`."""
  groups = [problem.group_of(i) for i in range(len(problem.specs))]
  devices = [g[0] for g in groups]
  if any(len(g) != 1 for g in groups) or len(set(devices)) != len(devices):
    raise ConfigError(f"model-parallel training needs a device of its own for each of the "
                      f"{len(devices)} segments (one device per segment, no groups); "
                      f"{len(problem.devices)} devices given")
  return devices


def _stacked(rows: Sequence[jax.Array], sharding: NamedSharding) -> jax.Array:
  """[n, size] from one [size] row per device, each staying on its device."""
  return jax.make_array_from_single_device_arrays((len(rows), *rows[0].shape), sharding,
                                                  [r[None] for r in rows])


def start_model_parallel(problem: Problem, name: str = METHOD) -> tuple[Loop, Plan]:
  """Places every stage's parameters and optimizer state on its device, the data on every
  device, and compiles the epoch. Returns the loop (for `drive`) and its plan."""
  if len(problem.specs) < 2:
    raise ConfigError("model-parallel training needs at least one cut (model.cuts)")
  train = problem.config.train
  devices = _devices(problem)
  mesh = Mesh(np.array(devices), (AXIS,))
  rows_sharding, everywhere = NamedSharding(mesh, PS(AXIS)), NamedSharding(mesh, PS())
  optimizer = make_optimizer(train, len(problem.train_y) // train.batch_size)
  states = [jax.jit(lambda p: TrainState(p, optimizer.init(p)))(
      init_params(problem, spec, device)) for spec, device in zip(problem.specs, devices)]
  plan = Plan(problem.specs, plan_slots([s.params for s in states]),
              plan_slots([s.opt_state for s in states]), optimizer, train.batch_size,
              len(problem.train_y), problem.input_scale)
  packed = [jax.jit(functools.partial(lambda i, s: SlotState(pack(plan.params, i, s.params),
                                                              pack(plan.opt, i, s.opt_state)),
                                      i))(s) for i, s in enumerate(states)]
  state = jax.tree.map(lambda *rows: _stacked(rows, rows_sharding), *packed)
  data = jax.device_put({"x": problem.train_x, "y": problem.train_y}, everywhere)
  consts = input_constants(problem, everywhere)
  key = key_on(problem.key(ORDER_STREAM, 0), everywhere)
  epoch = jax.jit(jax.shard_map(make_epoch(plan), mesh=mesh, in_specs=(PS(AXIS), PS(), PS(), PS(),
                                                                       PS()),
                                out_specs=(PS(AXIS), PS()), check_vma=False), donate_argnums=0)
  start = time.perf_counter()
  compiled = epoch.lower(state, data, consts, key,
                         jax.device_put(np.uint32(0), everywhere)).compile()
  compile_seconds = time.perf_counter() - start
  whole = whole_network(problem.specs)
  info = LoopRecord(
      name=name, layers=(whole.start, whole.stop),
      objective=f"inputs -> labels (backprop over {len(devices)} devices)",
      device=device_name(everywhere), optimizer=train.optimizer,
      learning_rate=train.learning_rate, batch_size=train.batch_size, epochs=train.epochs,
      steps_per_epoch=len(problem.train_y) // train.batch_size, compile_seconds=compile_seconds,
      memory=compiled_memory(compiled, data=tree_bytes(data)).to_dict(),
      flops_per_step=segment_step_flops(whole, train.batch_size, train.optimizer),
      forward_flops=segment_flops(whole).forward)
  spec = LoopSpec(method=METHOD, name=name, task=None, train=train, device=everywhere)
  return Loop(spec, info, compiled, state, data, consts, key), plan


def cut_transfers(problem: Problem, epoch: int, steps: int) -> list[Transfer]:
  """What one epoch moves across each cut: activations forward and gradients back, one
  [batch, *cut shape] float32 array each way per step."""
  devices = [device_name(d) for d in _devices(problem)]
  out = []
  for k, spec in enumerate(problem.specs[:-1]):
    size = steps * problem.config.train.batch_size * math.prod(spec.shapes[-1]) * 4
    note = f"(epoch {epoch}, {steps} transfers)"
    out += [Transfer(f"cut {spec.output_cut} activations {note}", devices[k], devices[k + 1],
                     size),
            Transfer(f"cut {spec.output_cut} gradients {note}", devices[k + 1], devices[k], size)]
  return out


def train_model_parallel(problem: Problem, progress: Progress, track_accuracy: bool = True
                         ) -> tuple[list[Params], MethodRecord]:
  """End-to-end backprop with segment i on device i, one compiled program per epoch: activations
  and gradients cross every cut every step. Conventional training's settings, init and order;
  returns the segments' params (on the host) and the record. The ledger holds one record per
  cut, direction and epoch. Its epochs run whole: the composed network is evaluated after each
  (outside the timing), never inside one."""
  loop, plan = start_model_parallel(problem)
  devices = _devices(problem)
  ledger = Ledger()
  evaluator = make_evaluator(problem, problem.device_of(0), ledger)

  def evaluate(states: list[Params]) -> float:
    return evaluator(stage_params(plan, states[0], devices))

  first = ((Evaluator(evaluate, flops=evaluator_of(problem, evaluate).flops),)
           if track_accuracy else ())
  record = drive([loop], MethodRecord(METHOD), RunHooks(progress).of(METHOD, *first),
                 ledger=ledger)
  moved = [t for epoch in range(loop.done)
           for t in cut_transfers(problem, epoch + 1, loop.steps_per_epoch)]
  params = jax.device_get(stage_params(plan, loop.state.params, devices))
  accuracy = evaluator(params)
  return params, dataclasses.replace(record, test_accuracy=accuracy,
                                     transfers=(*moved, *ledger.transfers))
