"""The training schedules: conventional, sequential (the paper's), parallel, and recovery.

Each segment trains through the same epoch loop on its own device (segment i on device i mod n).
`sequential` trains segment k on the outputs of the trained segment k-1, handed over once;
`parallel` trains every segment at once from the SIL tables alone, dispatching every segment's
epoch before waiting on any, so the devices run concurrently and nothing crosses between them.
A multi-process run (`synthpart.distributed`) trains each process's segments through these same
loops: `train_parallel(segments=...)`, and `train_sequential_segment` per segment, the caller
carrying the activations between segments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from synthpart import checkpoint
from synthpart import groups as groups_lib
from synthpart.config import Config, TrainConfig, validate_for_data
from synthpart.labels import sil_tables
from synthpart.model import Params, apply_segment, compose, init_segment, whole_network
from synthpart.partition import SegmentSpec, network_widths, plan_segments
from synthpart.placement import Transfer, device_name, hand_over, key_on
from synthpart.progress import Progress
from synthpart.train.loop import TrainState, count_correct, make_epoch, make_predict
from synthpart.train.objectives import Constants, Task, make_loss, preprocess_pixels
from synthpart.train.optim import make_optimizer

# Streams of the run's key, folded in so that each use draws independently of the others.
INIT_STREAM, SIL_STREAM, ORDER_STREAM, RECOVERY_STREAM = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Problem:
  """Everything the schedules share, prepared once: settings, data on the host, plan, devices."""
  config: Config
  dataset: str
  train_x: np.ndarray  # uint8 [N, features]
  train_y: np.ndarray  # int32 [N]
  test_x: np.ndarray  # uint8 [M, features]
  test_y: np.ndarray  # int32 [M]
  num_classes: int
  specs: tuple[SegmentSpec, ...]
  devices: tuple[jax.Device, ...]
  sil: dict[int, np.ndarray]  # cut layer -> [classes, width] table, on the host
  # Training-set statistics of the scaled pixels, [features] each; None unless standardising.
  pixel_mean: np.ndarray | None = None
  pixel_std: np.ndarray | None = None
  # Each segment's device group, where a caller chose them (a multi-process run places only its
  # own segments); empty: laid out from config.placement over `devices`.
  groups: tuple[tuple[jax.Device, ...], ...] = ()

  @property
  def widths(self) -> tuple[int, ...]:
    return whole_network(self.specs).widths

  def group_of(self, segment: int) -> tuple[jax.Device, ...]:
    """The devices `segment` trains on; without groups, device i mod n for segment i."""
    if self.groups:
      return self.groups[segment]
    sizes = self.config.placement.sizes(len(self.specs))
    return groups_lib.layout_groups(self.devices, sizes)[segment]

  def device_of(self, segment: int) -> groups_lib.Placement:
    """Where `segment` lives: its device, or a sharding replicated over its device group."""
    return groups_lib.placement_of(self.group_of(segment))

  def key(self, *path: int) -> jax.Array:
    """The run's key folded with `path`. Seeds and stream numbers are Python integers that
    must reach the device: allowed here even where a caller forbids implicit transfers."""
    with jax.transfer_guard("allow"):
      key = jax.random.key(self.config.seed)
      for p in path:
        key = jax.random.fold_in(key, p)
      return key


def make_problem(config: Config, dataset: Any, devices: list[jax.Device] | None = None) -> Problem:
  """Flattens the dataset, plans the segments and draws the SIL tables.

  `dataset` has uint8 `train_images` / `test_images` [N, ...] and int labels, plus `name` and
  `num_classes` (a `synthpart.data.Dataset`).
  """
  train_x = np.ascontiguousarray(dataset.train_images.reshape(len(dataset.train_images), -1))
  test_x = np.ascontiguousarray(dataset.test_images.reshape(len(dataset.test_images), -1))
  validate_for_data(config, len(train_x))
  widths = network_widths(train_x.shape[1], config.model.hidden, dataset.num_classes)
  specs = plan_segments(widths, config.model.cuts)
  problem = Problem(config=config, dataset=dataset.name, train_x=train_x,
                    train_y=np.asarray(dataset.train_labels, np.int32), test_x=test_x,
                    test_y=np.asarray(dataset.test_labels, np.int32),
                    num_classes=dataset.num_classes, specs=specs,
                    devices=tuple(devices or jax.devices()), sil={})
  tables = sil_tables(problem.key(SIL_STREAM), widths, config.model.cuts, dataset.num_classes,
                      config.sil.kind, config.sil.scale)
  mean = std = None
  if config.data.standardize:  # computed once here, not by every loop that needs them
    x = train_x.astype(np.float32) / 255.0
    mean, std = x.mean(0), x.std(0) + 1e-6
  return dataclasses.replace(problem, sil=jax.device_get(tables), pixel_mean=mean,
                             pixel_std=std)


def input_constants(problem: Problem, device: jax.Device) -> Constants:
  """Pixel statistics for standardisation (training set only), on `device`; else empty."""
  if problem.pixel_mean is None:
    return Constants()
  return Constants(mean=jax.device_put(problem.pixel_mean, device),
                   std=jax.device_put(problem.pixel_std, device))


@dataclasses.dataclass
class SegmentResult:
  """What one optax loop did: where, how long, and its loss after every epoch."""
  name: str
  layers: tuple[int, int]  # [start, stop) of the network's dense layers
  objective: str
  device: str
  optimizer: str
  learning_rate: float
  batch_size: int
  epochs: int
  steps_per_epoch: int
  loss_per_epoch: list[float] = dataclasses.field(default_factory=list)
  epoch_seconds: list[float] = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  diverged: bool = False


@dataclasses.dataclass
class MethodResult:
  """One method's outcome: test accuracy, time, every loop, and its accuracy along the way.

  `curve` holds one point per epoch round: cumulative training seconds, examples seen by each
  loop so far, and the test accuracy of the network composed at that point (where tracked).
  """
  method: str
  test_accuracy: float = math.nan
  wall_seconds: float = 0.0
  compile_seconds: float = 0.0
  segments: list[SegmentResult] = dataclasses.field(default_factory=list)
  curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  transfers: list[Transfer] = dataclasses.field(default_factory=list)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class SegmentRun:
  """One segment's optax loop, live on its device: compiled epoch, state, data, key."""
  result: SegmentResult
  device: jax.Device
  epoch_fn: Callable[..., tuple[TrainState, jax.Array]]
  state: TrainState
  data: dict[str, jax.Array]
  consts: Constants
  key: jax.Array
  last_checkpoint: str | None = None

  def dispatch(self, epoch: int, method: str = "") -> jax.Array:
    """Enqueues one epoch and returns its per-step losses without waiting for them."""
    epoch_index = jax.device_put(np.uint32(epoch), self.device)
    self.state, losses = self.epoch_fn(self.state, self.data, self.consts, self.key, epoch_index)
    checkpoint.crash_point(f"epoch-dispatched:{method}/{self.result.name}:{epoch + 1}")
    return losses

  def resume(self, policy: checkpoint.Policy | None, method: str) -> tuple[int, dict[str, Any]]:
    """Restores this loop's newest checkpoint, if any: (epochs already done, its meta)."""
    restored = None if policy is None else checkpoint.restore(
        policy, method, self.result.name, self.state, self.device)
    if restored is None:
      return 0, {}
    self.state, meta = restored
    self.result.loss_per_epoch = list(meta["loss_per_epoch"])
    self.result.epoch_seconds = list(meta["epoch_seconds"])
    self.last_checkpoint = str(policy.loop_dir(method, self.result.name) / str(meta["epoch"]))
    return meta["epoch"], meta

  def save(self, policy: checkpoint.Policy | None, method: str, progress: MethodResult) -> None:
    """Checkpoints every `policy.every` epochs and after the last; never a non-finite state."""
    epoch = len(self.result.loss_per_epoch)
    if (policy is None or self.result.diverged
        or (epoch % policy.every and epoch != self.result.epochs)):
      return
    meta = {"epoch": epoch, "key": jax.device_get(jax.random.key_data(self.key)).tolist(),
            "loss_per_epoch": self.result.loss_per_epoch,
            "epoch_seconds": self.result.epoch_seconds,
            "curve": progress.curve, "wall_seconds": progress.wall_seconds}
    self.last_checkpoint = str(checkpoint.save(policy, method, self.result.name, epoch,
                                               self.state, meta))

  def record(self, losses: jax.Array, seconds: float) -> bool:
    """Stores an epoch's mean loss; returns False (and marks divergence) if it is not finite."""
    loss = float(np.mean(jax.device_get(losses)))
    self.result.loss_per_epoch.append(loss)
    self.result.epoch_seconds.append(seconds)
    if not math.isfinite(loss):
      self.result.diverged = True
    return not self.result.diverged


def start_segment(task: Task, train: TrainConfig, params: Params, data: dict[str, Any],
                  consts: Constants, key: jax.Array, device: jax.Device, name: str) -> SegmentRun:
  """Commits params, optimizer state and data to `device` and compiles the epoch there.

  `device` may be a sharding replicated over a device group (`Problem.device_of`): everything is
  replicated over the group and each minibatch split over it (`synthpart.groups`).
  """
  optimizer = make_optimizer(train)
  with jax.default_device(groups_lib.lead_device(device)):
    params = jax.device_put(params, device)
    state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
    data = jax.device_put(data, device)
    key = key_on(key, device)
    num_examples = len(data["y"])
    loss = groups_lib.shard_batches(make_loss(task), device)
    epoch = make_epoch(loss, optimizer, train.batch_size, num_examples)
    start = time.perf_counter()
    compiled = epoch.lower(state, data, consts, key, jax.device_put(np.uint32(0), device)).compile()
    compile_seconds = time.perf_counter() - start
  result = SegmentResult(
      name=name, layers=(task.spec.start, task.spec.stop), objective=_objective(task),
      device=device_name(device), optimizer=train.optimizer, learning_rate=train.learning_rate,
      batch_size=train.batch_size, epochs=train.epochs,
      steps_per_epoch=num_examples // train.batch_size, compile_seconds=compile_seconds)
  return SegmentRun(result, device, compiled, state, data, consts, key)


def _objective(task: Task) -> str:
  source = {"pixels": "inputs", "features": "activations", "sil": "sil+noise"}[task.inputs]
  return f"{source} -> {'labels' if task.spec.is_last else 'sil'}"


def init_params(problem: Problem, spec: SegmentSpec, device: jax.Device) -> Params:
  """Initialises a segment directly on its device (layer l from the init key folded with l)."""
  key = key_on(problem.key(INIT_STREAM), device)
  init = functools.partial(init_segment, spec=spec, param_dtype=problem.config.model.param_dtype)
  return jax.jit(init)(key)


def segment_task(problem: Problem, spec: SegmentSpec, inputs: str) -> Task:
  m, s = problem.config.model, problem.config.sil
  return Task(spec=spec, inputs=inputs, activation=m.activation, dtype=m.dtype, sil_loss=s.loss,
              noise=s.noise if inputs == "sil" else 0.0)


def segment_constants(problem: Problem, spec: SegmentSpec, inputs: str,
                      device: jax.Device) -> Constants:
  consts = input_constants(problem, device) if inputs == "pixels" else Constants()
  if inputs == "sil":
    consts = consts._replace(sil_in=jax.device_put(problem.sil[spec.input_cut], device))
  if not spec.is_last:
    consts = consts._replace(sil_out=jax.device_put(problem.sil[spec.output_cut], device))
  return consts


def make_evaluator(problem: Problem, device: jax.Device) -> Callable[[list[Params]], float]:
  """Returns accuracy(segment_params) of the composed network on the test set, on `device`."""
  whole = whole_network(problem.specs)
  m = problem.config.model
  x = jax.device_put(problem.test_x, device)
  y = jax.device_put(problem.test_y, device)
  consts = input_constants(problem, device)
  predict = make_predict(lambda p, xb: apply_segment(p, preprocess_pixels(xb, consts), whole,
                                                     m.activation, m.dtype))
  # The test set goes in as an argument: closed over, XLA would constant-fold it at compile time.
  correct = jax.jit(lambda p, x, y: count_correct(predict(p, x), y))

  def accuracy(segment_params: list[Params]) -> float:
    params = hand_over(compose(segment_params), device, [], "evaluation")
    return int(jax.device_get(correct(params, x, y))) / len(problem.test_y)

  return accuracy


def _stop_if_diverged(run: SegmentRun, method: str, epoch: int, progress: Progress) -> bool:
  if run.result.diverged:
    progress.message(f"{method} {run.result.name} diverged at epoch {epoch + 1} (loss "
                     f"{run.result.loss_per_epoch[-1]}); last good checkpoint: "
                     f"{run.last_checkpoint or 'none'}")
  return run.result.diverged


def _restore_progress(result: MethodResult, meta: dict[str, Any]) -> None:
  if meta:
    result.curve = list(meta["curve"])
    result.wall_seconds = meta["wall_seconds"]


def _examples(segments: Sequence[SegmentResult]) -> list[int]:
  return [len(s.loss_per_epoch) * s.steps_per_epoch * s.batch_size for s in segments]


def train_whole(problem: Problem, method: str, train: TrainConfig, params: Params,
                key: jax.Array, progress: Progress, result: MethodResult | None = None,
                evaluate: Callable[[list[Params]], float] | None = None,
                name: str = "network",
                checkpoints: checkpoint.Policy | None = None) -> tuple[Params, MethodResult]:
  """End-to-end backprop of the whole network on device 0: the baseline, and recovery epochs.

  With `result`, the epochs extend an earlier method's result (recovery after segments).
  """
  device = problem.device_of(0)
  whole = whole_network(problem.specs)
  evaluate = evaluate or make_evaluator(problem, device)
  result = result or MethodResult(method)
  result.method = method
  offset_examples = result.curve[-1]["examples"] if result.curve else []
  run = start_segment(segment_task(problem, whole, "pixels"), train, params,
                      {"x": problem.train_x, "y": problem.train_y},
                      input_constants(problem, device), key, device, name)
  result.segments.append(run.result)
  result.compile_seconds += run.result.compile_seconds
  done, meta = run.resume(checkpoints, method)
  _restore_progress(result, meta)
  bar = progress.bar(f"{method} {name}", train.epochs, done=done)
  for epoch in range(done, train.epochs):
    start = time.perf_counter()
    losses = jax.block_until_ready(run.dispatch(epoch, method))
    run.record(losses, time.perf_counter() - start)
    result.wall_seconds += run.result.epoch_seconds[-1]
    if _stop_if_diverged(run, method, epoch, progress):
      break
    accuracy = evaluate([run.state.params])
    result.curve.append({"epoch": epoch + 1, "seconds": result.wall_seconds,
                         "examples": offset_examples + _examples([run.result]),
                         "accuracy": accuracy})
    run.save(checkpoints, method, result)
    bar.update(loss=run.result.loss_per_epoch[-1], acc=accuracy)
  bar.close()
  params = jax.device_get(run.state.params)
  result.test_accuracy = evaluate([params])
  return params, result


def train_conventional(problem: Problem, progress: Progress,
                       checkpoints: checkpoint.Policy | None = None
                       ) -> tuple[Params, MethodResult]:
  """The baseline: the same network and optimizer, end to end on one device."""
  whole = whole_network(problem.specs)
  params = init_params(problem, whole, problem.device_of(0))
  return train_whole(problem, "conventional", problem.config.train, params,
                     problem.key(ORDER_STREAM, 0), progress, checkpoints=checkpoints)


def train_sequential(problem: Problem, progress: Progress, track_accuracy: bool = True,
                     checkpoints: checkpoint.Policy | None = None
                     ) -> tuple[list[Params], MethodResult]:
  """The paper's schedule: segment k learns from the trained segment k-1's outputs.

  The outputs over the training set are computed once on segment k-1's device and handed over
  once to segment k's: the only transfer between devices.
  """
  result = MethodResult("pnn-sequential")
  evaluator = make_evaluator(problem, problem.device_of(0)) if track_accuracy else None
  trained: list[Params] = []
  features: jax.Array | None = None
  for spec in problem.specs:
    if spec.is_first:
      x: Any = problem.train_x
    else:
      checkpoint.crash_point(f"handover:{result.method}:cut {spec.input_cut}")
      start = time.perf_counter()
      x = jax.block_until_ready(hand_over(features, problem.device_of(spec.index),
                                          result.transfers, f"cut {spec.input_cut} activations"))
      result.wall_seconds += time.perf_counter() - start
    # Only the last segment completes a network to evaluate.
    evaluate = (None if evaluator is None or not spec.is_last
                else lambda params: evaluator(trained + [params]))
    params, features = train_sequential_segment(problem, spec, x, progress, result, checkpoints,
                                                evaluate)
    trained.append(params)
    if result.segments[-1].diverged:
      progress.message(f"{result.method}: later segments not trained, segment {spec.index} "
                       "diverged")
      return jax.device_get(trained), result
  params = jax.device_get(trained)
  result.test_accuracy = (evaluator or make_evaluator(problem, problem.device_of(0)))(params)
  return params, result


def train_sequential_segment(problem: Problem, spec: SegmentSpec, inputs_x: Any,
                             progress: Progress, result: MethodResult,
                             checkpoints: checkpoint.Policy | None = None,
                             evaluate: Callable[[Params], float] | None = None
                             ) -> tuple[Params, jax.Array | None]:
  """One segment of the sequential schedule, on its device: (params, its outputs or None).

  `inputs_x` is the training set for the first segment, else the previous segment's outputs,
  already handed over by the caller (in one process, `hand_over`; across processes, a file).
  The loop, its curve points and timings are added to `result`. The outputs over the training
  set are computed on this segment's device for the next segment, unless this is the last
  segment or it diverged (then None). `evaluate(params)`, if given, is the accuracy after each
  epoch.
  """
  device = problem.device_of(spec.index)
  inputs = "pixels" if spec.is_first else "features"
  task = segment_task(problem, spec, inputs)
  train = problem.config.segment_train(spec.index)
  run = start_segment(task, train, init_params(problem, spec, device),
                      {"x": inputs_x, "y": problem.train_y},
                      segment_constants(problem, spec, inputs, device),
                      problem.key(ORDER_STREAM, spec.start), device, f"segment {spec.index}")
  result.segments.append(run.result)
  result.compile_seconds += run.result.compile_seconds
  done, meta = run.resume(checkpoints, result.method)
  _restore_progress(result, meta)
  bar = progress.bar(f"sequential segment {spec.index}", train.epochs, done=done)
  for epoch in range(done, train.epochs):
    start = time.perf_counter()
    losses = jax.block_until_ready(run.dispatch(epoch, result.method))
    run.record(losses, time.perf_counter() - start)
    result.wall_seconds += run.result.epoch_seconds[-1]
    if _stop_if_diverged(run, result.method, epoch, progress):
      break
    point: dict[str, Any] = {"epoch": epoch + 1, "seconds": result.wall_seconds,
                             "examples": _examples(result.segments)}
    if evaluate is not None:
      point["accuracy"] = evaluate(run.state.params)
    result.curve.append(point)
    run.save(checkpoints, result.method, result)
    bar.update(loss=run.result.loss_per_epoch[-1], **_acc(point))
  bar.close()
  if spec.is_last or run.result.diverged:
    return run.state.params, None
  start = time.perf_counter()
  features = jax.block_until_ready(_forward(task, run)(run.state.params, run.data["x"]))
  result.wall_seconds += time.perf_counter() - start
  return run.state.params, features


def _acc(point: dict[str, Any]) -> dict[str, float]:
  return {"acc": point["accuracy"]} if "accuracy" in point else {}


def _forward(task: Task, run: SegmentRun) -> Callable[[Params, jax.Array], jax.Array]:
  """The trained segment's outputs over a whole array, chunked, on the segment's device."""
  consts = run.consts

  def apply(params: Params, xb: jax.Array) -> jax.Array:
    x = preprocess_pixels(xb, consts) if task.inputs == "pixels" else xb
    return apply_segment(params, x, task.spec, task.activation, task.dtype)

  return make_predict(apply)


def train_parallel(problem: Problem, progress: Progress, track_accuracy: bool = True,
                   checkpoints: checkpoint.Policy | None = None,
                   segments: Sequence[int] | None = None,
                   errors: dict[int, Exception] | None = None
                   ) -> tuple[list[Params], MethodResult]:
  """Every segment at once, from the SIL tables alone: nothing crosses devices while training.

  Each round dispatches one epoch of every unfinished segment before waiting on any of them.
  With `track_accuracy`, the composed network is evaluated between rounds (outside the timing).
  `segments` trains only those (default all; a process of a multi-process run trains its own);
  the network is evaluated only when all are trained here. With `errors`, a segment that raises
  is recorded there and dropped while the others go on (a multi-process run keeps the segments
  that trained); the params and `result.segments` returned are those of the others, in order.
  Without it, the error propagates.
  """
  result = MethodResult("pnn-parallel")
  failed = {} if errors is None else errors  # without `errors`, nothing gets here: it raises
  runs: list[SegmentRun] = []
  indices: list[int] = []  # the segment of each run
  for k in range(len(problem.specs)) if segments is None else segments:
    spec = problem.specs[k]
    device = problem.device_of(k)
    inputs = "pixels" if spec.is_first else "sil"
    data = {"x": problem.train_x, "y": problem.train_y} if spec.is_first else {"y": problem.train_y}
    try:
      runs.append(start_segment(
          segment_task(problem, spec, inputs), problem.config.segment_train(k),
          init_params(problem, spec, device), data,
          segment_constants(problem, spec, inputs, device),
          problem.key(ORDER_STREAM, spec.start), device, f"segment {k}"))
      indices.append(k)
    except Exception as e:
      _keep_going(errors, k, e)
  whole = segments is None
  evaluate = make_evaluator(problem, problem.device_of(0)) if track_accuracy and whole else None
  # Loops may have been checkpointed at different epochs: each resumes from its own, and the
  # method's curve from the one that got least far.
  resumed = [r.resume(checkpoints, result.method) for r in runs]
  done = [d for d, _ in resumed]
  _restore_progress(result, min(resumed, key=lambda dm: dm[0], default=(0, {}))[1])
  result.curve = result.curve[:min(done, default=0)]
  bars = [progress.bar(f"parallel {r.result.name}", r.result.epochs, position=i, done=done[i])
          for i, r in enumerate(runs)]
  active = list(range(len(runs)))
  for epoch in range(min(done, default=0), max((r.result.epochs for r in runs), default=0)):
    active = [i for i in active if epoch < runs[i].result.epochs]
    if not active:
      break
    start = time.perf_counter()
    pending = []
    for i in active:
      if epoch >= done[i]:
        try:
          pending.append((i, runs[i].dispatch(epoch, result.method)))
        except Exception as e:
          _keep_going(errors, indices[i], e)
    for i, losses in pending:
      try:
        jax.block_until_ready(losses)
      except Exception as e:
        _keep_going(errors, indices[i], e)
        continue
      runs[i].record(losses, time.perf_counter() - start)
      bars[i].update(loss=runs[i].result.loss_per_epoch[-1])
    result.wall_seconds += time.perf_counter() - start
    active = [i for i in active if indices[i] not in failed
              and not _stop_if_diverged(runs[i], result.method, epoch, progress)]
    point: dict[str, Any] = {"epoch": epoch + 1, "seconds": result.wall_seconds,
                             "examples": _examples([r.result for r in runs])}
    if evaluate is not None and not failed and not any(r.result.diverged for r in runs):
      point["accuracy"] = evaluate([r.state.params for r in runs])
    result.curve.append(point)
    for i, _ in pending:
      if indices[i] not in failed:
        runs[i].save(checkpoints, result.method, result)
  for bar in bars:
    bar.close()
  kept = [r for k, r in zip(indices, runs) if k not in failed]
  result.segments = [r.result for r in kept]
  result.compile_seconds = sum(r.result.compile_seconds for r in kept)
  params = jax.device_get([r.state.params for r in kept])
  if whole and not failed:
    result.test_accuracy = (evaluate or make_evaluator(problem, problem.device_of(0)))(params)
  return params, result


def _keep_going(errors: dict[int, Exception] | None, segment: int, e: Exception) -> None:
  """Records a segment's error where the caller keeps the other segments going, else raises."""
  if errors is None:
    raise e
  errors[segment] = e


def train_recovery(problem: Problem, segment_params: list[Params], base: MethodResult,
                   progress: Progress, checkpoints: checkpoint.Policy | None = None
                   ) -> tuple[Params, MethodResult]:
  """Recovery epochs: end-to-end training of the composed network, with its own optimizer."""
  result = dataclasses.replace(base, segments=list(base.segments), curve=list(base.curve),
                               transfers=list(base.transfers))
  return train_whole(problem, f"{base.method}+recovery", problem.config.recovery,
                     compose(segment_params), problem.key(RECOVERY_STREAM), progress,
                     result=result, name="recovery", checkpoints=checkpoints)


SCHEDULES = {"sequential": train_sequential, "parallel": train_parallel}
