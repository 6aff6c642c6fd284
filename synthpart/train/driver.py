"""The one epoch driver: every optax loop of every method trains through `drive`.

A `Loop` (`synthpart.train.loop`) is one optax loop live on its device (or device group). `drive`
trains a list of loops together in rounds and returns the method's record: each round
dispatches one epoch of every unfinished loop before waiting on any of them (so loops on
distinct devices run concurrently), records each loop's mean loss, stops a loop that diverged,
and appends a point to the method's curve. Everything else is a hook
(`synthpart.train.hooks`): evaluating the composed network, checkpoints and resume, bars,
metrics, the pipelined schedule's refreshes. Each hook declares what it needs; the driver reads
those needs and nothing else.

- conventional training and recovery epochs drive one loop;
- the sequential schedule drives each segment's loop alone, one after another;
- the parallel schedule drives every segment's loop at once;
- the pipelined schedule drives every segment's loop at once in spans of `refresh_steps` steps,
  its `Feeds` hook refreshing each later segment's inputs before every span, and may start a
  loop some rounds later than the one before it (`LoopSpec.start_round`).

A round is one epoch of every loop that trains in it: loop i trains its epoch
`round - start_round` in a round. With spans, an evaluation schedule inside epochs, or a loop
whose budget in steps (`train.steps`) ends inside an epoch, a round runs in chunks
(`Loop.dispatch_steps`, bit-identical to the whole epoch) that pause where
`synthpart.train.stops` says: at evaluation stops the composed network is evaluated and a point
inside the round joins the curve. Its evaluation is timed and counted apart (`eval_seconds`,
`eval_flops`), never in the training's seconds. Whether bars are shown changes nothing of this.

A loop diverges, and stops without checkpointing that epoch, where after an epoch

- its mean loss is not finite, or its parameters are not (an update overflowed);
- it classifies (its objective is the labels) and its mean loss has been no better than chance
  for the last `train.chance_epochs` epochs (default 5; 0: never). Chance is the cross-entropy
  of predicting the training labels' frequencies, log(num_classes) for balanced classes; "no
  better" means within `CHANCE_TOLERANCE` of it, or above it (a loss in the thousands, from a
  step size far too large, is no result either). One class alone has no chance level.
- its mean loss, though finite, is above `divergence.BLOWUP_FACTOR` (1000) times the larger of its
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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from synthpart.records import CurvePoint, MethodRecord, Tally
from synthpart.train.hooks import Chunk, Hook, Needs, RoundEnd, needs_of
from synthpart.train.loop import Loop, resource_error
from synthpart.train.stops import round_plan, steps_in_epoch
from synthpart.transfers import Ledger

# on_error(loop, error): a caller's failure policy; without one, errors propagate
OnError = Callable[[Loop, Exception], None]


@dataclasses.dataclass
class _Running:
  """What a drive adds up as it goes: the method's curve, times and evaluation cost (its
  transfers are the ledger's). `tally()` is the immutable snapshot a checkpoint keeps."""
  curve: list[CurvePoint]
  wall_seconds: float
  evaluations: int
  eval_seconds: float
  eval_flops: float
  ledger: Ledger

  @classmethod
  def of(cls, tally: Tally, ledger: Ledger) -> _Running:
    """Running from `tally`, its transfers in `ledger` (which holds the method's transfers)."""
    return cls(list(tally.curve), tally.wall_seconds, tally.evaluations, tally.eval_seconds,
               tally.eval_flops, ledger)

  def tally(self) -> Tally:
    return Tally(tuple(self.curve), self.wall_seconds, self.evaluations, self.eval_seconds,
                 self.eval_flops, self.ledger.transfers)


def drive(loops: Sequence[Loop], record: MethodRecord, hooks: Sequence[Hook] = (), *,
          ledger: Ledger | None = None, on_error: OnError | None = None) -> MethodRecord:
  """Trains `loops` together to their budgets (epochs, or steps); returns `record` with their
  loop records added after its own and the curve, time, evaluations and transfers of the drive.

  Each round dispatches one epoch of every unfinished loop whose span covers it
  (`LoopSpec.start_round`), then waits for each; the method's training seconds grow by the
  round's time and each loop's epoch seconds by the time until its own losses were ready. After
  a round, the hook that evaluates (if any, and if no loop diverged or failed) gives the curve
  point's accuracy; with its evaluation schedule inside epochs, points inside the round too. A
  loop that diverges (module docstring) is marked so and stops; the others go on. `on_error`
  takes a loop whose dispatch or epoch raised, and that loop stops; without it, errors propagate
  (running out of memory as `ResourceError`). `ledger` holds the method's transfers, the
  hooks' hand-overs added to it (without one: a ledger of `record.transfers`).
  """
  loops, hooks = list(loops), list(hooks)
  needs = needs_of(hooks)
  evaluators = [h for h in hooks if h.evaluates]
  if len(evaluators) > 1:
    raise ValueError("at most one hook evaluates the composed network")
  evaluator = evaluators[0] if evaluators else None
  running = _Running.of(record.tally(), ledger if ledger is not None
                        else Ledger(record.transfers))
  start_round = 0
  for hook in hooks:
    resumed = hook.resume(loops, running.tally(), needs.coupled)
    if resumed is not None:
      start_round = resumed.round
      running.ledger.reset(resumed.tally.transfers)
      running = _Running.of(resumed.tally, running.ledger)
  for hook in hooks:
    hook.started(loops, start_round)
  chunked = (needs.span_steps > 0
             or (evaluator is not None and needs.evaluation.within_epochs)
             or any(loop.max_steps % loop.steps_per_epoch for loop in loops))
  failed: set[int] = set()
  stopped: set[int] = set()
  end = max((loop.start_round + loop.epochs for loop in loops), default=0)
  for round_index in range(start_round, end):
    epochs = {i: e for i, loop in enumerate(loops)
              if i not in failed | stopped and (e := loop.epoch_in(round_index)) is not None}
    if not epochs:
      if any(i not in failed | stopped and loop.start_round > round_index
             for i, loop in enumerate(loops)):
        continue  # nothing trains in this round, but a later loop starts after it
      break
    due = {i: e for i, e in epochs.items() if e >= loops[i].done}
    step = _Step(loops, running, failed, on_error, hooks, evaluator, record)
    ran = (step.chunked_round(due, round_index, needs) if chunked else step.whole_round(due))
    diverged = tuple(i for i in ran if not loops[i].judge())
    stopped.update(diverged)
    steps = step.steps_by_loop({}) if chunked else None
    point = CurvePoint(epoch=round_index + 1, seconds=running.wall_seconds,
                       examples=step.examples_by_loop({}), steps=steps)
    if evaluator is not None and not failed and not any(l.diverged for l in loops):
      point = dataclasses.replace(point, accuracy=step.evaluate())
    metric_step = len(running.curve) + 1
    appended = not (len(loops) == 1 and loops[0].diverged)  # a lone loop that diverged: none
    if appended:
      running.curve.append(point)
    event = RoundEnd(round_index, loops, tuple(ran), diverged, point, metric_step,
                     running.tally(), appended)
    for hook in hooks:
      hook.round_done(event)
  for hook in hooks:
    hook.finished()
  return dataclasses.replace(
      record.with_tally(running.tally()),
      segments=(*record.segments, *(loop.record() for loop in loops)),
      compile_seconds=record.compile_seconds + sum(loop.compile_seconds for loop in loops))


@dataclasses.dataclass
class _Step:
  """One round of a drive: its loops, the running tally, the failure policy and the hooks."""
  loops: list[Loop]
  running: _Running
  failed: set[int]
  on_error: OnError | None
  hooks: list[Hook]
  evaluator: Hook | None
  record: MethodRecord  # the method before this drive: its earlier loops come first

  def fail(self, i: int, e: Exception) -> None:
    e = resource_error(self.loops[i], e)
    if self.on_error is None:
      raise e
    self.failed.add(i)
    self.on_error(self.loops[i], e)

  def steps_by_loop(self, trained: dict[int, int]) -> tuple[int, ...]:
    """Steps each loop of the method has trained (the earlier drives' loops first), with
    `trained` more steps of this round for the loops it names."""
    before = tuple(s.steps for s in self.record.segments)
    return before + tuple(loop.steps + trained.get(i, 0) for i, loop in enumerate(self.loops))

  def examples_by_loop(self, trained: dict[int, int]) -> tuple[int, ...]:
    sizes = [s.batch_size for s in self.record.segments] + [l.batch_size for l in self.loops]
    return tuple(n * b for n, b in zip(self.steps_by_loop(trained), sizes, strict=True))

  def evaluate(self) -> float:
    """The composed network's accuracy; its time and FLOPs go to the evaluation cost."""
    assert self.evaluator is not None
    start = time.perf_counter()
    accuracy = self.evaluator.evaluate([loop.state.params for loop in self.loops])
    self.running.eval_seconds += time.perf_counter() - start
    self.running.evaluations += 1
    self.running.eval_flops += self.evaluator.flops
    return accuracy

  def whole_round(self, due: dict[int, int]) -> list[int]:
    """One epoch of every due loop ({loop index: epoch}), dispatched whole; returns the loops
    that ran it."""
    start = time.perf_counter()
    pending = []
    for i, epoch in due.items():
      try:
        pending.append((i, self.loops[i].dispatch(epoch)))
      except Exception as e:
        self.fail(i, e)
    ran = []
    for i, losses in pending:
      try:
        jax.block_until_ready(losses)
      except Exception as e:
        self.fail(i, e)
        continue
      self.loops[i].store(losses, time.perf_counter() - start)
      ran.append(i)
    self.running.wall_seconds += time.perf_counter() - start
    return ran

  def chunked_round(self, due: dict[int, int], round_index: int, needs: Needs) -> list[int]:
    """One epoch (or what the step budget leaves of it) of every due loop ({loop index: epoch}),
    in chunks that end at the round's stops, each span's chunks after the hooks' `before_span`;
    a point inside the round after each evaluation stop, evaluated where every loss so far is
    finite. Hooks hear `chunk_done` where the driver waits on a chunk. Compiling the chunks is
    not timed as training."""
    if not due:
      return []
    loops = self.loops
    schedule = needs.evaluation if self.evaluator is not None else None
    rounds = round_plan({i: loops[i].steps_per_epoch for i in due},
                        {i: steps_in_epoch(e, loops[i].steps_per_epoch, loops[i].max_steps)
                         for i, e in due.items()}, due, schedule, needs.span_steps)
    plan, evaluated = rounds.chunks, rounds.evaluated
    for i in due:
      for first, count in plan[i]:
        if count and not _whole(loops[i], first, count):
          loops[i].prepare_chunk(count)
    pieces: dict[int, list[jax.Array]] = {i: [] for i in due}
    ends: dict[int, list[int]] = {i: [] for i in due}  # each piece's last step in the round
    host: dict[int, list[np.ndarray]] = {i: [] for i in due}  # the pieces fetched so far
    seconds = dict.fromkeys(due, 0.0)
    live, finite, last = list(due), True, len(evaluated) - 1
    start = time.perf_counter()  # of the stretch of training since the last evaluation
    for k, evaluates in enumerate(evaluated):
      group = [Chunk(i, due[i], *plan[i][k]) for i in live if plan[i][k][1]]
      span = rounds.spans[k]
      if span is not None:
        opened = [Chunk(i, due[i], *span[i]) for i in live if span[i][1]]
        if opened:
          for hook in self.hooks:
            if hook.needs.span_steps:
              hook.before_span(opened)
      for c in group:
        try:
          pieces[c.loop].append(_dispatch(loops[c.loop], c.epoch, c.first, c.count))
          ends[c.loop].append(c.first + c.count)
        except Exception as e:
          self.fail(c.loop, e)
      live = [i for i in live if i not in self.failed]
      if not evaluates and k < last:
        continue  # chunks queue on without waiting: only evaluations and the round's end wait
      for i in live:
        try:
          for k_piece in range(len(host[i]), len(pieces[i])):
            host[i].append(np.asarray(jax.device_get(pieces[i][k_piece])))
            finite = finite and bool(np.isfinite(host[i][-1]).all())
            fraction = (ends[i][k_piece] - plan[i][0][0]) / sum(c for _, c in plan[i])
            for hook in self.hooks:
              hook.chunk_done(i, fraction)
        except Exception as e:
          self.fail(i, e)
          continue
        seconds[i] += time.perf_counter() - start
      self.running.wall_seconds += time.perf_counter() - start
      live = [i for i in live if i not in self.failed]
      if evaluates:
        trained = {i: sum(c for _, c in plan[i][:k + 1]) for i in due if i not in self.failed}
        point = CurvePoint(epoch=round_index + 1, partial=True,
                           seconds=self.running.wall_seconds,
                           examples=self.examples_by_loop(trained),
                           steps=self.steps_by_loop(trained))
        if finite and not self.failed:
          point = dataclasses.replace(point, accuracy=self.evaluate())
        self.running.curve.append(point)
      start = time.perf_counter()
    for i in live:
      loops[i].store(np.concatenate(host[i]), seconds[i])
    return live


def _whole(loop: Loop, first: int, count: int) -> bool:
  return first == 0 and count == loop.steps_per_epoch


def _dispatch(loop: Loop, epoch: int, first: int, count: int) -> jax.Array:
  """A whole epoch through the loop's compiled epoch, a part of one through its chunks."""
  if _whole(loop, first, count):
    return loop.dispatch(epoch)
  return loop.dispatch_steps(epoch, first, count)
