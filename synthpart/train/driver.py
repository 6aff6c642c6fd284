"""The one epoch driver: every optax loop of every method trains through `drive`.

A `Loop` is one optax loop live on its device (or device group): its compiled epoch, its state,
its data and its key. `drive` trains a list of loops together, epoch by epoch: each round
dispatches one epoch of every unfinished loop before waiting on any of them (so loops on distinct
devices run concurrently), then records each loop's mean loss, stops a loop whose loss is no
longer finite, appends a point to the method's curve (with the composed network's accuracy where
asked), checkpoints and reports progress. Resuming, checkpointing, curves, divergence and progress
are defined here once:

- conventional training and recovery epochs drive one loop;
- the sequential schedule drives each segment's loop alone, one after another;
- the parallel schedule drives every segment's loop at once.

Loops restored from checkpoints at different epochs each resume from their own; the method's
curve resumes from the loop that got least far.

Where bars are shown, a long epoch (`epoch_chunks`) is dispatched as a few chunks of steps
(`Loop.dispatch_steps`, the very steps of the whole epoch in order, so the bits are the same)
and each bar moves as its chunks finish; the chunks are compiled before training, with the
epoch, so the timings exclude them. After every round the method's scalars go to the progress's
metric writer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from synthpart import checkpoint
from synthpart import groups as groups_lib
from synthpart.config import TrainConfig
from synthpart.flops import segment_flops, segment_step_flops
from synthpart.memory import compiled_memory, tree_bytes
from synthpart.model import Params
from synthpart.placement import device_name, key_on
from synthpart.progress import Progress
from synthpart.results import MethodResult, SegmentResult
from synthpart.train.loop import TrainState, make_epoch, make_steps
from synthpart.train.objectives import Constants, Task, make_loss
from synthpart.train.optim import make_optimizer

# A bar moves within an epoch of at least 2 * MIN_CHUNK_STEPS steps, in up to EPOCH_CHUNKS chunks.
EPOCH_CHUNKS = 8
MIN_CHUNK_STEPS = 50

# evaluate(params of every driven loop, in order) -> accuracy of the network they compose
Evaluate = Callable[[list[Params]], float]
# on_error(loop, error): a caller's failure policy; without one, errors propagate
OnError = Callable[["Loop", Exception], None]


@dataclasses.dataclass
class Loop:
  """One optax loop, live on its device: compiled epoch, state, data, constants, key."""
  result: SegmentResult
  device: groups_lib.Placement
  epoch_fn: Callable[..., tuple[TrainState, jax.Array]]  # compiled: see `make_epoch`
  state: TrainState
  data: dict[str, jax.Array]
  consts: Constants
  key: jax.Array
  last_checkpoint: str | None = None
  # chunk(num_steps) -> jitted steps of the epoch in chunks (`make_steps`), compiled on first use
  chunk: Callable[[int], jax.stages.Wrapped] | None = None
  # num_steps -> that chunk compiled ahead of training (`compile_chunks`)
  compiled_chunks: dict[int, Callable[..., Any]] = dataclasses.field(default_factory=dict)

  @property
  def done(self) -> int:
    """Epochs trained so far."""
    return len(self.result.loss_per_epoch)

  def dispatch(self, epoch: int, method: str = "") -> jax.Array:
    """Enqueues one epoch and returns its per-step losses without waiting for them."""
    epoch_index = jax.device_put(np.uint32(epoch), self.device)
    self.state, losses = self.epoch_fn(self.state, self.data, self.consts, self.key, epoch_index)
    checkpoint.crash_point(f"epoch-dispatched:{method}/{self.result.name}:{epoch + 1}")
    return losses

  def dispatch_steps(self, epoch: int, first: int, count: int) -> jax.Array:
    """Enqueues steps first .. first+count-1 of `epoch` (exactly as the whole epoch would run
    them) and returns their losses [count] without waiting; `count` steps to the epoch's end
    complete it."""
    if self.chunk is None:
      raise ValueError(f"{self.result.name}: this loop does not run epochs in chunks")
    index = jax.device_put(np.uint32(epoch), self.device)
    start = jax.device_put(np.int32(first), self.device)
    steps = self.compiled_chunks.get(count) or self.chunk(count)
    self.state, losses = steps(self.state, self.data, self.consts, self.key, index, start)
    return losses

  def compile_chunks(self, sizes: Sequence[int]) -> float:
    """Compiles the chunks of `sizes` steps ahead of training; returns the seconds it took."""
    if self.chunk is None:
      raise ValueError(f"{self.result.name}: this loop does not run epochs in chunks")
    start = time.perf_counter()
    with jax.default_device(groups_lib.lead_device(self.device)):
      for count in sorted(set(sizes) - set(self.compiled_chunks)):
        index = jax.device_put(np.uint32(0), self.device)
        first = jax.device_put(np.int32(0), self.device)
        self.compiled_chunks[count] = self.chunk(count).lower(
            self.state, self.data, self.consts, self.key, index, first).compile()
    return time.perf_counter() - start

  def dispatch_epoch(self, epoch: int, method: str, sizes: Sequence[int]) -> list[jax.Array]:
    """Enqueues one epoch, whole or as chunks of `sizes` steps (which add up to the epoch);
    returns the losses of each piece without waiting for them."""
    if len(sizes) <= 1:
      return [self.dispatch(epoch, method)]
    pieces, first = [], 0
    for count in sizes:
      pieces.append(self.dispatch_steps(epoch, first, count))
      first += count
    checkpoint.crash_point(f"epoch-dispatched:{method}/{self.result.name}:{epoch + 1}")
    return pieces

  def resume(self, policy: checkpoint.Policy | None, method: str) -> dict[str, Any]:
    """Restores this loop's newest checkpoint, if any; returns its meta ({} if none)."""
    restored = None if policy is None else checkpoint.restore(
        policy, method, self.result.name, self.state, self.device)
    if policy is None or restored is None:
      return {}
    self.state, meta = restored
    self.result.loss_per_epoch = list(meta["loss_per_epoch"])
    self.result.epoch_seconds = list(meta["epoch_seconds"])
    self.last_checkpoint = str(policy.loop_dir(method, self.result.name) / str(meta["epoch"]))
    return meta

  def save(self, policy: checkpoint.Policy | None, method: str, progress: MethodResult) -> None:
    """Checkpoints every `policy.every` epochs and after the last; never a non-finite state."""
    epoch = self.done
    if (policy is None or self.result.diverged
        or (epoch % policy.every and epoch != self.result.epochs)):
      return
    meta = {"epoch": epoch, "key": jax.device_get(jax.random.key_data(self.key)).tolist(),
            "loss_per_epoch": self.result.loss_per_epoch,
            "epoch_seconds": self.result.epoch_seconds,
            "curve": progress.curve, "wall_seconds": progress.wall_seconds}
    self.last_checkpoint = str(checkpoint.save(policy, method, self.result.name, epoch,
                                               self.state, meta))

  def record(self, losses: jax.Array | Sequence[jax.Array], seconds: float) -> bool:
    """Stores an epoch's mean loss (its per-step losses, whole or in pieces); returns False (and
    marks divergence) if it is not finite."""
    pieces = jax.device_get(list(losses) if isinstance(losses, (list, tuple)) else [losses])
    loss = float(np.mean(np.concatenate([np.ravel(p) for p in pieces])))
    self.result.loss_per_epoch.append(loss)
    self.result.epoch_seconds.append(seconds)
    if not math.isfinite(loss):
      self.result.diverged = True
    return not self.result.diverged


def objective(task: Task) -> str:
  """What a loop learns, for results: ``inputs -> sil``, ``activations -> labels``..."""
  source = {"pixels": "inputs", "features": "activations", "sil": "sil+noise"}[task.inputs]
  return f"{source} -> {'labels' if task.spec.is_last else 'sil'}"


def start_loop(task: Task, train: TrainConfig, params: Params, data: dict[str, Any],
               consts: Constants, key: jax.Array, device: groups_lib.Placement,
               name: str, backend: str = "sharding") -> Loop:
  """Commits params, optimizer state and data to `device` and compiles the epoch there.

  `device` may be a sharding replicated over a device group (`Problem.device_of`): everything is
  replicated over the group and each minibatch split over it (`synthpart.groups`), by `jax.jit`
  over the group's mesh, or with `backend="pmap"` by `jax.pmap` (whose epochs run whole).
  """
  num_examples = len(data["y"])
  optimizer = make_optimizer(train, num_examples // train.batch_size)
  with jax.default_device(groups_lib.lead_device(device)):
    params = jax.device_put(params, device)
    state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
    data = jax.device_put(data, device)
    key = key_on(key, device)
    chunk = None
    if backend == "pmap" and groups_lib.is_group(device):
      size = len(groups_lib.group_devices(device))
      epoch = groups_lib.PmapEpoch(
          make_epoch(groups_lib.pmap_loss(make_loss(task), size), optimizer, train.batch_size,
                     num_examples, train.loss_scale, reduce=groups_lib.pmap_mean),
          device, jax.random.key_impl(key))
    else:
      loss = groups_lib.shard_batches(make_loss(task), device)
      epoch = make_epoch(loss, optimizer, train.batch_size, num_examples, train.loss_scale)
      chunk = functools.lru_cache(maxsize=None)(functools.partial(
          make_steps, loss, optimizer, train.batch_size, num_examples,
          loss_scale=train.loss_scale))
    start = time.perf_counter()
    compiled = epoch.lower(state, data, consts, key, jax.device_put(np.uint32(0), device)).compile()
    compile_seconds = time.perf_counter() - start
  result = SegmentResult(
      name=name, layers=(task.spec.start, task.spec.stop), objective=objective(task),
      device=device_name(device), optimizer=train.optimizer, learning_rate=train.learning_rate,
      batch_size=train.batch_size, epochs=train.epochs,
      steps_per_epoch=num_examples // train.batch_size, compile_seconds=compile_seconds,
      memory=compiled_memory(compiled, data=tree_bytes(data)).to_dict(),
      flops_per_step=segment_step_flops(task.spec, train.batch_size, train.optimizer),
      forward_flops=segment_flops(task.spec).forward)
  return Loop(result, device, compiled, state, data, consts, key, chunk=chunk)


def epoch_chunks(steps: int) -> tuple[int, ...]:
  """The chunk sizes an epoch of `steps` steps is dispatched in where bars are shown: the whole
  epoch when it is short, else up to EPOCH_CHUNKS nearly equal chunks of at least
  MIN_CHUNK_STEPS steps (two sizes at most, so at most two more programs to compile)."""
  count = min(EPOCH_CHUNKS, steps // MIN_CHUNK_STEPS)
  if count <= 1:
    return (steps,)
  size, extra = divmod(steps, count)
  return tuple(size + 1 if k < extra else size for k in range(count))


def _prepare_chunks(loops: Sequence[Loop], result: MethodResult,
                    progress: Progress) -> list[tuple[int, ...]]:
  """Each loop's chunk sizes; chunks compiled now, their time counted as compile time."""
  plans = []
  for loop in loops:
    sizes = (loop.result.steps_per_epoch,)
    if not progress.quiet and loop.chunk is not None and loop.done < loop.result.epochs:
      sizes = epoch_chunks(loop.result.steps_per_epoch)
    if len(sizes) > 1:
      seconds = loop.compile_chunks(sizes)
      loop.result.compile_seconds += seconds
      result.compile_seconds += seconds
    plans.append(sizes)
  return plans


def _examples(result: MethodResult) -> list[int]:
  return [s.examples for s in result.segments]


def _resume(loops: Sequence[Loop], result: MethodResult,
            checkpoints: checkpoint.Policy | None) -> int:
  """Restores every loop; the method's curve and time from the loop that got least far.

  Returns the first epoch round still to run.
  """
  metas = [loop.resume(checkpoints, result.method) for loop in loops]
  first = min(range(len(loops)), key=lambda i: loops[i].done, default=None)
  if first is None or not metas[first]:
    return 0
  start = loops[first].done
  result.curve = list(metas[first]["curve"])[:len(result.curve) + start]
  result.wall_seconds = metas[first]["wall_seconds"]
  return start


def _diverged(loop: Loop, method: str, epoch: int, progress: Progress) -> bool:
  if loop.result.diverged:
    progress.message(f"{method} {loop.result.name} diverged at epoch {epoch + 1} (loss "
                     f"{loop.result.loss_per_epoch[-1]}); last good checkpoint: "
                     f"{loop.last_checkpoint or 'none'}")
  return loop.result.diverged


def drive(loops: Sequence[Loop], result: MethodResult, progress: Progress, *,
          label: str, checkpoints: checkpoint.Policy | None = None,
          evaluate: Evaluate | None = None, on_error: OnError | None = None) -> None:
  """Trains `loops` together to their epoch budgets, recording into `result`.

  The loops' results must already be in `result.segments`. Each round dispatches one epoch of
  every unfinished loop, then waits for each; `result.wall_seconds` grows by the round's time
  and each loop's `epoch_seconds` by the time until its own losses were ready. After a round,
  `evaluate` (if given, and if no loop diverged or failed) gives the curve point's accuracy.
  A loop whose loss is not finite is marked diverged and stops; the others go on. `on_error`
  takes a loop whose dispatch or epoch raised, and that loop stops; without it, errors propagate.
  """
  loops = list(loops)
  start_epoch = _resume(loops, result, checkpoints)
  bars = [progress.bar(f"{label} {loop.result.name}" if label else loop.result.name,
                       loop.result.epochs, position=i, done=loop.done)
          for i, loop in enumerate(loops)]
  plans = _prepare_chunks(loops, result, progress)
  failed: set[int] = set()
  stopped: set[int] = set()
  for epoch in range(start_epoch, max((loop.result.epochs for loop in loops), default=0)):
    active = [i for i, loop in enumerate(loops)
              if i not in failed | stopped and epoch < loop.result.epochs]
    if not active:
      break
    start = time.perf_counter()
    pending = []
    for i in active:
      if epoch >= loops[i].done:
        try:
          pending.append((i, loops[i].dispatch_epoch(epoch, result.method, plans[i])))
        except Exception as e:
          _fail(on_error, loops[i], e, failed, i)
    ran = []
    for i, losses in pending:
      try:
        for k, piece in enumerate(losses, start=1):
          jax.block_until_ready(piece)
          bars[i].advance(k / len(losses))
      except Exception as e:
        _fail(on_error, loops[i], e, failed, i)
        continue
      loops[i].record(losses, time.perf_counter() - start)
      ran.append(i)
    result.wall_seconds += time.perf_counter() - start
    for i in ran:
      if _diverged(loops[i], result.method, epoch, progress):
        stopped.add(i)
    point: dict[str, Any] = {"epoch": epoch + 1, "seconds": result.wall_seconds,
                             "examples": _examples(result)}
    if evaluate is not None and not failed and not any(l.result.diverged for l in loops):
      point["accuracy"] = evaluate([loop.state.params for loop in loops])
    progress.scalars(result.method, len(result.curve) + 1, _scalars(loops, ran, point))
    if len(loops) == 1 and loops[0].result.diverged:
      pass  # a lone loop that diverged ends the method without a point
    else:
      result.curve.append(point)
    for i in ran:
      loops[i].save(checkpoints, result.method, result)
      if i not in stopped:
        metrics = {"loss": loops[i].result.loss_per_epoch[-1]}
        if "accuracy" in point:
          metrics["acc"] = point["accuracy"]
        bars[i].update(**metrics)
  for bar in bars:
    bar.close()


def _scalars(loops: Sequence[Loop], ran: Sequence[int], point: dict[str, Any]) -> dict[str, float]:
  """A round's scalars for the metric writer: each loop's loss, the accuracy, the seconds."""
  values = {f"loss/{loops[i].result.name}": loops[i].result.loss_per_epoch[-1] for i in ran}
  values["seconds"] = point["seconds"]
  if "accuracy" in point:
    values["accuracy/test"] = point["accuracy"]
  return values


def _fail(on_error: OnError | None, loop: Loop, e: Exception, failed: set[int], i: int) -> None:
  if on_error is None:
    raise e
  failed.add(i)
  on_error(loop, e)
