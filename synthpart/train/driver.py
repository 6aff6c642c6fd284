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
    self.state, losses = self.chunk(count)(self.state, self.data, self.consts, self.key, index,
                                           start)
    return losses

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

  def record(self, losses: jax.Array, seconds: float) -> bool:
    """Stores an epoch's mean loss; returns False (and marks divergence) if it is not finite."""
    loss = float(np.mean(jax.device_get(losses)))
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
               name: str) -> Loop:
  """Commits params, optimizer state and data to `device` and compiles the epoch there.

  `device` may be a sharding replicated over a device group (`Problem.device_of`): everything is
  replicated over the group and each minibatch split over it (`synthpart.groups`).
  """
  num_examples = len(data["y"])
  optimizer = make_optimizer(train, num_examples // train.batch_size)
  with jax.default_device(groups_lib.lead_device(device)):
    params = jax.device_put(params, device)
    state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
    data = jax.device_put(data, device)
    key = key_on(key, device)
    loss = groups_lib.shard_batches(make_loss(task), device)
    epoch = make_epoch(loss, optimizer, train.batch_size, num_examples, train.loss_scale)
    chunk = functools.lru_cache(maxsize=None)(functools.partial(
        make_steps, loss, optimizer, train.batch_size, num_examples, loss_scale=train.loss_scale))
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
          pending.append((i, loops[i].dispatch(epoch, result.method)))
        except Exception as e:
          _fail(on_error, loops[i], e, failed, i)
    ran = []
    for i, losses in pending:
      try:
        jax.block_until_ready(losses)
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


def _fail(on_error: OnError | None, loop: Loop, e: Exception, failed: set[int], i: int) -> None:
  if on_error is None:
    raise e
  failed.add(i)
  on_error(loop, e)
