"""The one epoch driver: every optax loop of every method trains through `drive`.

A `Loop` is one optax loop live on its device (or device group): its compiled epoch, its state,
its data and its key. `drive` trains a list of loops together, epoch by epoch: each round
dispatches one epoch of every unfinished loop before waiting on any of them (so loops on distinct
devices run concurrently), then records each loop's mean loss, stops a loop that diverged,
appends a point to the method's curve (with the composed network's accuracy where
asked), checkpoints and reports progress. Resuming, checkpointing, curves, divergence and progress
are defined here once:

- conventional training and recovery epochs drive one loop;
- the sequential schedule drives each segment's loop alone, one after another;
- the parallel schedule drives every segment's loop at once;
- the pipelined schedule drives every segment's loop at once in chunks of `chunk_steps` steps,
  its hook (`before_chunk`) refreshing each later segment's inputs from the earlier segments
  before every chunk, and may start a loop some rounds later than the one before it
  (`Loop.start_round`).

A round is one epoch of every loop that trains in it: loop i trains its epoch
`round - start_round` in a round. With `chunk_steps`, an `Evaluation` schedule inside epochs, or a
loop whose budget in steps (`train.steps`) ends inside an epoch, a round runs in chunks
(`Loop.dispatch_steps`, bit-identical to the whole epoch) that pause where
`synthpart.train.stops` says: at evaluation stops the composed network is evaluated and a
point inside the round joins the curve. Its evaluation is timed and counted apart (`eval_seconds`,
`eval_flops`), never in the training's seconds.

A loop diverges, and stops without checkpointing that epoch, where after an epoch

- its mean loss is not finite, or its parameters are not (an update overflowed);
- it classifies (its objective is the labels) and its mean loss has been no better than chance
  for the last `train.chance_epochs` epochs (default 5; 0: never). Chance is the cross-entropy
  of predicting the training labels' frequencies, log(num_classes) for balanced classes; "no
  better" means within `CHANCE_TOLERANCE` of it, or above it (a loss in the thousands, from a
  step size far too large, is no result either). One class alone has no chance level.

Loops regressing onto SIL targets are not judged against chance: their loss scale follows kappa
and the SIL loss, and a loop that starts far from its targets is legitimately worse than the
mean predictor for several epochs. A collapsed regression segment shows in the classifying loop
it feeds (sequential) or in the method's accuracy (parallel).

Running out of device or host memory raises `ResourceError` naming the loop and its size.

Loops restored from checkpoints at different epochs each resume from their own; the method's
curve resumes from the round that the least advanced loop reached.

Where bars are shown, a long epoch (`epoch_chunks`) is dispatched as a few chunks of steps too,
and each bar moves as its chunks finish; no chunk waits on the host for another (only
evaluations and the round's end do). After every round the method's scalars go to the
progress's metric writer.

This module is longer than most (over 400 lines) on purpose: it is the one place that defines
what an epoch round is (resume, chunks, evaluation points, divergence, checkpoints, progress).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from synthpart import checkpoint
from synthpart import groups as groups_lib
from synthpart.config import TrainConfig
from synthpart.errors import ResourceError
from synthpart.flops import segment_flops, segment_step_flops
from synthpart.memory import compiled_memory, tree_bytes
from synthpart.model import Params
from synthpart.placement import Transfer, device_name, key_on
from synthpart.progress import Progress
from synthpart.results import MethodResult, SegmentResult
from synthpart.train.loop import StepwiseEpoch, TrainState, epoch_plan, make_epoch, make_steps
from synthpart.train.objectives import Constants, Task, make_loss
from synthpart.train.optim import make_optimizer
from synthpart.train.stops import EvalSchedule, epoch_chunks, epochs_for, round_plan, steps_in_epoch

# evaluate(params of every driven loop, in order) -> accuracy of the network they compose
Evaluate = Callable[[list[Params]], float]
# on_error(loop, error): a caller's failure policy; without one, errors propagate
OnError = Callable[["Loop", Exception], None]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """When the composed network is evaluated besides every epoch's end, and what one evaluation
  costs: the composed network's forward pass over the evaluated split, in FLOPs."""
  schedule: EvalSchedule = EvalSchedule()
  flops: float = 0.0


@dataclasses.dataclass(frozen=True, order=True)
class Chunk:
  """Steps first .. first+count-1 of epoch `epoch` of loop `loop` (its index in `drive`)."""
  loop: int
  epoch: int
  first: int
  count: int


# before_chunk(chunks): called before the chunks that are about to be dispatched together
BeforeChunk = Callable[[list[Chunk]], None]


# A loss within this fraction of chance (or above it) is no better than chance.
CHANCE_TOLERANCE = 0.01


def is_out_of_memory(e: BaseException) -> bool:
  """Whether `e` is the host or XLA running out of memory (XLA reports RESOURCE_EXHAUSTED on
  accelerators and "Out of memory allocating" on CPU)."""
  text = str(e)
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
           if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def chance_loss(labels: Any) -> float | None:
  """The cross-entropy of predicting the labels' frequencies (log C for C balanced classes);
  None for fewer than two classes, where there is no chance level to judge."""
  counts = np.bincount(np.asarray(jax.device_get(labels)).ravel())
  p = counts[counts > 0] / counts.sum() if counts.sum() else np.zeros(0)
  entropy = float(-(p * np.log(p)).sum())
  return entropy if len(p) > 1 else None


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
  # chunk(num_steps) -> steps of the epoch in chunks (`make_steps`), compiled on first use
  chunk: Callable[[int], Callable[..., tuple[TrainState, jax.Array]]] | None = None
  compiled_chunks: dict[int, Any] = dataclasses.field(default_factory=dict)
  chance: float | None = None  # a classifying loop's chance-level loss (`chance_loss`)
  chance_epochs: int = 0  # epochs in a row at chance that stop it (0: never)
  start_round: int = 0  # the round of `drive` in which this loop trains its first epoch
  # plan(key, epoch) -> (order, step keys) of an epoch (`epoch_plan`), jitted; with the epoch
  # it was last made for, so the chunks of one epoch share it
  plan: Callable[..., tuple[jax.Array, jax.Array]] | None = None
  planned: tuple[int, tuple[jax.Array, jax.Array]] | None = None

  @property
  def done(self) -> int:
    """Epochs trained so far."""
    return len(self.result.loss_per_epoch)

  @property
  def finished(self) -> bool:
    """Whether every epoch of its budget is trained."""
    return self.done >= self.result.epochs

  def epoch_in(self, round_index: int) -> int | None:
    """The epoch this loop trains in round `round_index` of `drive`, or None outside its span."""
    epoch = round_index - self.start_round
    return epoch if 0 <= epoch < self.result.epochs else None

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
    self.prepare_chunk(count)
    order, step_keys = self.plan_of(epoch)
    self.state, losses = self.compiled_chunks[count](
        self.state, self.data, self.consts, order, step_keys,
        jax.device_put(np.int32(first), self.device))
    return losses

  def plan_of(self, epoch: int) -> tuple[jax.Array, jax.Array]:
    """The epoch's order and step keys, made on the device once for all its chunks."""
    if self.plan is None:
      raise ValueError(f"{self.result.name}: this loop does not run epochs in chunks")
    if self.planned is None or self.planned[0] != epoch:
      self.planned = (epoch, self.plan(self.key, jax.device_put(np.uint32(epoch), self.device)))
    return self.planned[1]

  def prepare_chunk(self, count: int) -> float:
    """Compiles the chunk of `count` steps unless done before; returns the seconds it took."""
    if count in self.compiled_chunks:
      return 0.0
    if self.chunk is None:
      raise ValueError(f"{self.result.name}: this loop does not run epochs in chunks")
    start = time.perf_counter()
    chunk = self.chunk(count)
    lower = getattr(chunk, "lower", None)  # a stepwise epoch's chunks are compiled already
    self.compiled_chunks[count] = chunk if lower is None else lower(
        self.state, self.data, self.consts, *self.plan_of(0),
        jax.device_put(np.int32(0), self.device)).compile()
    seconds = time.perf_counter() - start
    self.result.compile_seconds += seconds
    return seconds

  def resume(self, policy: checkpoint.Policy | None, method: str,
             at_most: int | None = None) -> dict[str, Any]:
    """Restores this loop's newest checkpoint (of an epoch no later than `at_most`, where
    given), if any; returns its meta ({} if none: the loop is left as it is)."""
    restored = None if policy is None else checkpoint.restore(
        policy, method, self.result.name, self.state, self.device, at_most)
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
            "curve": progress.curve, "wall_seconds": progress.wall_seconds,
            "evaluations": progress.evaluations, "eval_seconds": progress.eval_seconds,
            "eval_flops": progress.eval_flops,
            "transfers": [dataclasses.asdict(t) for t in progress.transfers]}
    self.last_checkpoint = str(checkpoint.save(policy, method, self.result.name, epoch,
                                               self.state, meta))

  def record(self, losses: jax.Array | np.ndarray, seconds: float) -> bool:
    """Stores an epoch's mean loss and time, then `judge`s it; returns False if it diverged."""
    self.store(losses, seconds)
    return self.judge()

  def store(self, losses: jax.Array | np.ndarray, seconds: float) -> None:
    """Stores an epoch's mean loss and time."""
    self.result.loss_per_epoch.append(float(np.mean(jax.device_get(losses))))
    self.result.epoch_seconds.append(seconds)

  def judge(self) -> bool:
    """Marks the loop diverged, saying why, where after its last epoch the loss or the parameters
    are not finite or the loss stayed at chance (module docstring); returns False then. The
    parameters are checked on their device, outside the timed part of a round."""
    if not self.result.diverged:
      reason = self._divergence(self.result.loss_per_epoch[-1])
      if reason:
        self.result.diverged = True
        self.result.divergence = reason
    return not self.result.diverged

  def _divergence(self, loss: float) -> str | None:
    if not math.isfinite(loss):
      return f"loss {loss} at epoch {self.done}"
    if not bool(_all_finite(self.state.params)):
      return f"parameters not finite after epoch {self.done}"
    n, recent = self.chance_epochs, self.result.loss_per_epoch[-self.chance_epochs:]
    if (self.chance is not None and n and len(recent) == n
        and all(l >= (1 - CHANCE_TOLERANCE) * self.chance for l in recent)):
      return (f"loss no better than chance ({self.chance:.4g}) for {n} epochs in a row, last "
              f"{loss:.4g}")
    return None


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
  classifies = task.spec.is_last or consts.sil_out is None  # as `make_loss` decides
  chance = chance_loss(data["y"]) if classifies else None
  try:
    with jax.default_device(groups_lib.lead_device(device)):
      params = jax.device_put(params, device)
      state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
      data = jax.device_put(data, device)
      key = key_on(key, device)
      start = time.perf_counter()
      chunk: Callable[[int], Callable[..., tuple[TrainState, jax.Array]]] | None = None
      plan = jax.jit(functools.partial(epoch_plan, num_examples=num_examples,
                                       batch_size=train.batch_size))
      run: Callable[..., tuple[TrainState, jax.Array]]
      compiled: Any  # what `compiled_memory` reads: a compiled program, or a bound pmap epoch
      if backend == "pmap" and groups_lib.is_group(device):
        size = len(groups_lib.group_devices(device))
        pmapped = groups_lib.PmapEpoch(
            make_epoch(groups_lib.pmap_loss(make_loss(task), size), optimizer, train.batch_size,
                       num_examples, train.loss_scale, reduce=groups_lib.pmap_mean),
            device, jax.random.key_impl(key))
        run = compiled = pmapped.lower(state, data, consts, key,
                                       jax.device_put(np.uint32(0), device)).compile()
      elif train.scan:
        loss = groups_lib.shard_batches(make_loss(task), device)
        epoch = make_epoch(loss, optimizer, train.batch_size, num_examples, train.loss_scale)
        chunk = functools.lru_cache(maxsize=None)(functools.partial(
            make_steps, loss, optimizer, train.batch_size, num_examples,
            loss_scale=train.loss_scale))
        run = compiled = epoch.lower(state, data, consts, key,
                                     jax.device_put(np.uint32(0), device)).compile()
      else:
        loss = groups_lib.shard_batches(make_loss(task), device)
        run = stepwise = StepwiseEpoch(loss, optimizer, train.batch_size, num_examples,
                                       train.loss_scale)
        chunk = functools.lru_cache(maxsize=None)(stepwise.chunk)
        compiled = stepwise.compile(state, data, consts, key)
      compile_seconds = time.perf_counter() - start
  except Exception as e:
    if is_out_of_memory(e):
      raise ResourceError(f"out of memory starting {name} on {device_name(device)}: its "
                          f"parameters take {_mib(tree_bytes(params))} and its data "
                          f"{_mib(tree_bytes(data))}; try smaller model.hidden or fewer "
                          f"examples") from None
    raise
  steps_per_epoch = num_examples // train.batch_size
  result = SegmentResult(
      name=name, layers=(task.spec.start, task.spec.stop), objective=objective(task),
      device=device_name(device), optimizer=train.optimizer, learning_rate=train.learning_rate,
      batch_size=train.batch_size, epochs=epochs_for(steps_per_epoch, train.epochs, train.steps),
      steps_per_epoch=steps_per_epoch, max_steps=train.steps, compile_seconds=compile_seconds,
      memory=compiled_memory(compiled, data=tree_bytes(data)).to_dict(),
      flops_per_step=segment_step_flops(task.spec, train.batch_size, train.optimizer),
      forward_flops=segment_flops(task.spec).forward)
  return Loop(result, device, run, state, data, consts, key, chunk=chunk, chance=chance,
              chance_epochs=train.chance_epochs, plan=None if chunk is None else plan)


def _mib(size: int) -> str:
  return f"{size / 2**20:,.1f} MiB"


def _resource_error(loop: Loop, method: str, e: Exception) -> Exception:
  """An out-of-memory error of a loop's epoch as a `ResourceError` naming the loop and its size;
  any other error as it is."""
  if not is_out_of_memory(e):
    return e
  r = loop.result
  peak = (r.memory or {}).get("peak")
  return ResourceError(f"out of memory training {method} {r.name} on {r.device} (batch size "
                       f"{r.batch_size}, compiled peak {_mib(peak) if peak else 'unknown'}): try "
                       f"smaller model.hidden or train.batch_size")


def _examples(result: MethodResult) -> list[int]:
  return [s.examples for s in result.segments]


def _resume(loops: Sequence[Loop], result: MethodResult, checkpoints: checkpoint.Policy | None,
            evaluation: Evaluation, coupled: bool) -> int:
  """Restores every loop; the method's curve, time, evaluation cost and transfers from the
  round that the least advanced loop reached, taken from the checkpoint of the loop that saved
  at or nearest after it (less what that loop's checkpoint holds beyond the round).

  `coupled` loops read each other's parameters while they train (the pipelined schedule's
  refreshes): every one of them is restored at the same round, the latest that all their
  checkpoints hold, so that the resumed run trains exactly as an uninterrupted one; a loop with
  no checkpoint that early starts afresh. Returns the first round still to run.
  """
  fresh = [(loop.state, loop.result.loss_per_epoch, loop.result.epoch_seconds)
           for loop in loops]
  metas = [loop.resume(checkpoints, result.method) for loop in loops]
  reached = [loop.start_round + loop.done for loop in loops]
  while coupled and checkpoints is not None:
    target = min(reached, default=0)
    ahead = [i for i, loop in enumerate(loops) if loop.done > max(0, target - loop.start_round)]
    if not ahead:
      break
    for i in ahead:
      loop = loops[i]
      back = max(0, target - loop.start_round)
      metas[i] = loop.resume(checkpoints, result.method, at_most=back) if back else {}
      checkpoint.discard_after(checkpoints, result.method, loop.result.name, back)
      if not metas[i]:  # no checkpoint that early: the loop starts afresh
        loop.state, losses, seconds = fresh[i]
        loop.result.loss_per_epoch, loop.result.epoch_seconds = list(losses), list(seconds)
        loop.last_checkpoint = None
      reached[i] = loop.start_round + loop.done
  start = min(reached, default=0)
  saved = [i for i, meta in enumerate(metas) if meta and reached[i] >= start]
  if not start or not saved:
    return 0
  donor = min(saved, key=lambda i: reached[i])
  meta, prior = metas[donor], len(result.curve)
  # Points of earlier drives, then this drive's up to the end of the round resumed from.
  kept = [p for p in meta["curve"][prior:] if p["epoch"] <= start]
  beyond = [p for p in meta["curve"][prior:] if p["epoch"] > start]
  result.curve = meta["curve"][:prior] + kept
  result.wall_seconds = (result.curve[-1]["seconds"] if beyond and result.curve
                         else meta["wall_seconds"])
  evaluations = meta.get("evaluations", result.evaluations)
  dropped = sum("accuracy" in p for p in beyond)
  if evaluations:
    result.eval_seconds = (meta.get("eval_seconds", result.eval_seconds)
                           * (evaluations - dropped) / evaluations)
  result.evaluations = evaluations - dropped
  result.eval_flops = meta.get("eval_flops", result.eval_flops) - dropped * evaluation.flops
  if "transfers" in meta and reached[donor] == start:  # in place: evaluators hold the list
    result.transfers[:] = [Transfer(**t) for t in meta["transfers"]]
  return start


def _diverged(loop: Loop, method: str, epoch: int, progress: Progress) -> bool:
  if not loop.judge():
    progress.message(f"{method} {loop.result.name} diverged at epoch {epoch + 1} "
                     f"({loop.result.divergence}); last good checkpoint: "
                     f"{loop.last_checkpoint or 'none'}")
  return loop.result.diverged


def drive(loops: Sequence[Loop], result: MethodResult, progress: Progress, *,
          label: str, checkpoints: checkpoint.Policy | None = None,
          evaluate: Evaluate | None = None, on_error: OnError | None = None,
          evaluation: Evaluation = Evaluation(), chunk_steps: int = 0,
          before_chunk: BeforeChunk | None = None) -> None:
  """Trains `loops` together to their budgets (epochs, or steps), recording into `result`.

  The loops' results must already be in `result.segments`. Each round dispatches one epoch of
  every unfinished loop whose span covers it (`Loop.start_round`), then waits for each;
  `result.wall_seconds` grows by the round's time and each loop's `epoch_seconds` by the time
  until its own losses were ready. With `chunk_steps` (0: none), the round's epochs are
  dispatched in chunks of at most that many steps, chunk c of every loop together, each group
  after `before_chunk(chunks)`; a chunked epoch trains exactly as a whole one. After a round,
  `evaluate` (if given, and if no loop diverged or failed) gives the curve point's accuracy;
  with `evaluation.schedule` inside epochs, points inside the round too (see the module
  docstring). A loop that diverges (module docstring) is marked so and stops; the others go on.
  `on_error` takes a loop whose dispatch or epoch raised, and that loop stops; without it, errors
  propagate (running out of memory as `ResourceError`).
  """
  loops = list(loops)
  start_round = _resume(loops, result, checkpoints, evaluation,
                        coupled=before_chunk is not None)
  bars = [progress.bar(f"{label} {loop.result.name}" if label else loop.result.name,
                       loop.result.epochs, position=i, done=loop.done)
          for i, loop in enumerate(loops)]
  chunked = (chunk_steps > 0 or (evaluate is not None and evaluation.schedule.within_epochs)
             or any(loop.result.max_steps % loop.result.steps_per_epoch for loop in loops))
  # Bars move within long epochs where every loop can run chunks (a pmap epoch runs whole).
  show = (not progress.quiet and all(loop.chunk is not None for loop in loops)
          and any(len(epoch_chunks(loop.result.steps_per_epoch)) > 1 for loop in loops))

  def advance(i: int, fraction: float) -> None:
    bars[i].advance(fraction)

  failed: set[int] = set()
  stopped: set[int] = set()
  end = max((loop.start_round + loop.result.epochs for loop in loops), default=0)
  for round_index in range(start_round, end):
    epochs = {i: e for i, loop in enumerate(loops)
              if i not in failed | stopped and (e := loop.epoch_in(round_index)) is not None}
    if not epochs:
      break
    due = {i: e for i, e in epochs.items() if e >= loops[i].done}
    if chunked or show:
      ran = _chunked_round(loops, due, round_index, result, failed, on_error, evaluate,
                           evaluation, chunk_steps, before_chunk, advance if show else None)
    else:
      ran = _whole_round(loops, due, result, failed, on_error)
    for i in ran:
      if _diverged(loops[i], result.method, epochs[i], progress):
        stopped.add(i)
    point: dict[str, Any] = {"epoch": round_index + 1, "seconds": result.wall_seconds,
                             "examples": _examples(result)}
    if chunked:
      point["steps"] = [s.steps for s in result.segments]
    if evaluate is not None and not failed and not any(l.result.diverged for l in loops):
      point["accuracy"] = _evaluate(evaluate, loops, result, evaluation)
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


def _whole_round(loops: Sequence[Loop], due: dict[int, int], result: MethodResult,
                 failed: set[int], on_error: OnError | None) -> list[int]:
  """One epoch of every due loop ({loop index: epoch}), dispatched whole; returns the loops that
  ran it."""
  start = time.perf_counter()
  pending = []
  for i, epoch in due.items():
    try:
      pending.append((i, loops[i].dispatch(epoch, result.method)))
    except Exception as e:
      _fail(on_error, loops[i], _resource_error(loops[i], result.method, e), failed, i)
  ran = []
  for i, losses in pending:
    try:
      jax.block_until_ready(losses)
    except Exception as e:
      _fail(on_error, loops[i], _resource_error(loops[i], result.method, e), failed, i)
      continue
    loops[i].store(losses, time.perf_counter() - start)
    ran.append(i)
  result.wall_seconds += time.perf_counter() - start
  return ran


def _evaluate(evaluate: Evaluate, loops: Sequence[Loop], result: MethodResult,
              evaluation: Evaluation) -> float:
  """The composed network's accuracy; its time and FLOPs go to the result's evaluation cost."""
  start = time.perf_counter()
  accuracy = evaluate([loop.state.params for loop in loops])
  result.eval_seconds += time.perf_counter() - start
  result.evaluations += 1
  result.eval_flops += evaluation.flops
  return accuracy


def _chunked_round(loops: Sequence[Loop], due: dict[int, int], round_index: int,
                   result: MethodResult, failed: set[int], on_error: OnError | None,
                   evaluate: Evaluate | None, evaluation: Evaluation, chunk_steps: int,
                   before_chunk: BeforeChunk | None,
                   advance: Callable[[int, float], None] | None = None) -> list[int]:
  """One epoch (or what the step budget leaves of it) of every due loop ({loop index: epoch}),
  in chunks that end at the round's stops, each group of chunks after `before_chunk`; a point
  inside the round after each evaluation stop, evaluated where every loss so far is finite.
  With `advance`, `advance(loop index, fraction of its round done)` as each chunk finishes.
  Compiling the chunks is not timed as training."""
  if not due:
    return []
  rounds = round_plan({i: loops[i].result.steps_per_epoch for i in due},
                      {i: steps_in_epoch(e, loops[i].result.steps_per_epoch,
                                         loops[i].result.max_steps) for i, e in due.items()},
                      due, evaluation.schedule if evaluate is not None else None, chunk_steps,
                      advance is not None)
  plan, evaluated = rounds.chunks, rounds.evaluated
  for i in due:
    for first, count in plan[i]:
      if count and not _whole(loops[i], first, count):
        result.compile_seconds += loops[i].prepare_chunk(count)
  pieces: dict[int, list[jax.Array]] = {i: [] for i in due}
  ends: dict[int, list[int]] = {i: [] for i in due}  # each piece's last step in the round
  host: dict[int, list[np.ndarray]] = {i: [] for i in due}  # the pieces fetched so far
  seconds = dict.fromkeys(due, 0.0)
  live, finite, last = list(due), True, len(evaluated) - 1
  start = time.perf_counter()  # of the stretch of training since the last evaluation
  for k, evaluates in enumerate(evaluated):
    group = [Chunk(i, due[i], *plan[i][k]) for i in live if plan[i][k][1]]
    span = rounds.spans[k]
    if before_chunk is not None and span is not None:
      opened = [Chunk(i, due[i], *span[i]) for i in live if span[i][1]]
      if opened:
        before_chunk(opened)
    for c in group:
      try:
        pieces[c.loop].append(_dispatch(loops[c.loop], c.epoch, c.first, c.count, result.method))
        ends[c.loop].append(c.first + c.count)
      except Exception as e:
        _fail(on_error, loops[c.loop], _resource_error(loops[c.loop], result.method, e), failed,
              c.loop)
    live = [i for i in live if i not in failed]
    pause = evaluate if evaluates else None
    if pause is None and k < last:
      continue  # chunks queue on without waiting: only evaluations and the round's end wait
    for i in live:
      try:
        for k_piece in range(len(host[i]), len(pieces[i])):
          host[i].append(np.asarray(jax.device_get(pieces[i][k_piece])))
          finite = finite and bool(np.isfinite(host[i][-1]).all())
          if advance is not None:
            advance(i, (ends[i][k_piece] - plan[i][0][0]) / sum(c for _, c in plan[i]))
      except Exception as e:
        _fail(on_error, loops[i], _resource_error(loops[i], result.method, e), failed, i)
        continue
      seconds[i] += time.perf_counter() - start
    result.wall_seconds += time.perf_counter() - start
    live = [i for i in live if i not in failed]
    if pause is not None:
      trained = {id(loops[i].result): sum(c for _, c in plan[i][:k + 1]) for i in due}
      steps = [s.steps + trained.get(id(s), 0) for s in result.segments]
      point: dict[str, Any] = {
          "epoch": round_index + 1, "partial": True, "seconds": result.wall_seconds,
          "examples": [n * s.batch_size for n, s in zip(steps, result.segments, strict=True)],
          "steps": steps}
      if finite and not failed:
        point["accuracy"] = _evaluate(pause, loops, result, evaluation)
      result.curve.append(point)
    start = time.perf_counter()
  for i in live:
    loops[i].store(np.concatenate(host[i]), seconds[i])
  return live


def _whole(loop: Loop, first: int, count: int) -> bool:
  return first == 0 and count == loop.result.steps_per_epoch


def _dispatch(loop: Loop, epoch: int, first: int, count: int, method: str) -> jax.Array:
  """A whole epoch through the loop's compiled epoch, a part of one through its chunks."""
  if _whole(loop, first, count):
    return loop.dispatch(epoch, method)
  losses = loop.dispatch_steps(epoch, first, count)
  checkpoint.crash_point(f"steps-dispatched:{method}/{loop.result.name}:{epoch + 1}:"
                         f"{first + count}")
  return losses


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
