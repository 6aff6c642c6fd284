"""The one epoch driver: every optax loop of every method trains through `drive`.

A `Loop` (`synthpart.train.live`) is one optax loop live on its device (or device group): its
compiled epoch, its state, its data and its key. `drive` trains a list of loops together, epoch
by epoch: each round dispatches one epoch of every unfinished loop before waiting on any of them
(so loops on distinct devices run concurrently), then records each loop's mean loss, stops a
loop that diverged, appends a point to the method's curve (with the composed network's accuracy
where asked), checkpoints and reports progress. Resuming, checkpointing, curves, divergence and
progress are defined here once:

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
- its mean loss, though finite, is above `live.BLOWUP_FACTOR` (1000) times the larger of its
  reference level and the loss of its very first step (the network as initialised, on its first
  batch; kept in its checkpoints): it blew up, say from a step size far too large, and stops at
  once, in any epoch. The reference is chance for a classifying loop and, for a loop regressing
  onto SIL targets, the SIL loss of predicting zeros (kappa^2/3 for uniform tables and MSE).
  The first step keeps a healthy loop whose loss starts high (inputs of a large scale, a large
  kappa) from counting as blown up: a loop that trains never climbs to 1000 times its start.

Loops regressing onto SIL targets are not judged against chance: their loss scale follows kappa
and the SIL loss, and a loop that starts far from its targets is legitimately worse than the
mean predictor for several epochs (the blow-up rule above judges them, against predicting
zeros). A collapsed regression segment shows in the classifying loop it feeds (sequential) or in
the method's accuracy (parallel).

Running out of device or host memory raises `ResourceError` naming the loop and its size.

Loops restored from checkpoints at different epochs each resume from their own; the method's
curve resumes from the round that the least advanced loop reached. Loops that read each other's
parameters while they train (the pipelined schedule's refreshes) are all restored at one round.

Where bars are shown, a long epoch (`epoch_chunks`) is dispatched as a few chunks of steps too,
and each bar moves as its chunks finish; no chunk waits on the host for another (only
evaluations and the round's end do). After every round the method's scalars go to the
progress's metric writer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from synthpart import checkpoint
from synthpart.model import Params
from synthpart.placement import Transfer
from synthpart.progress import Progress
from synthpart.results import MethodResult
from synthpart.train.live import Loop, resource_error
from synthpart.train.stops import EvalSchedule, epoch_chunks, round_plan, steps_in_epoch

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

  def least() -> int:
    """The round the least advanced unfinished loop reached: loops that finished (or never
    run again) do not hold the others back."""
    return min((r for r, loop in zip(reached, loops, strict=True) if not loop.finished),
               default=max(reached, default=0))

  while coupled and checkpoints is not None:
    target = least()
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
  start = least()
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
      if any(i not in failed | stopped and loop.start_round > round_index
             for i, loop in enumerate(loops)):
        continue  # nothing trains in this round, but a later loop starts after it
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
      _fail(on_error, loops[i], resource_error(loops[i], result.method, e), failed, i)
  ran = []
  for i, losses in pending:
    try:
      jax.block_until_ready(losses)
    except Exception as e:
      _fail(on_error, loops[i], resource_error(loops[i], result.method, e), failed, i)
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
        _fail(on_error, loops[c.loop], resource_error(loops[c.loop], result.method, e), failed,
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
        _fail(on_error, loops[i], resource_error(loops[i], result.method, e), failed, i)
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
