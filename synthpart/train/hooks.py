"""What the epoch driver calls besides training: hooks, each declaring what it needs.

`synthpart.train.driver.drive` only runs rounds of epochs. Everything else a run does while its
loops train is a `Hook`: evaluating the composed network (`Evaluator`), checkpointing and
resuming (`synthpart.train.resume.Checkpoints`), bars and the log (`Bars`), live metrics
(`Scalars`), and the pipelined schedule's refreshes (`synthpart.train.refresh.Feeds`).

A hook says what it needs of the driver in `needs` (`Needs`), and nothing is inferred from
which hooks were passed:

- `span_steps`: the rounds run in spans of that many steps, `before_span` called before each;
- `coupled`: the loops read each other's parameters while they train, so a resume restores all
  of them at one round;
- `evaluation`: when the composed network is evaluated inside epochs (`EvalSchedule`), for the
  one hook that evaluates (`evaluates`).

Showing bars or not needs nothing: bars move where the driver pauses anyway, so `--quiet`
compiles, runs and records exactly what a run with bars does.

Every method is a no-op here; a hook overrides those it uses. Hooks are called in the order
given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from synthpart.model import Params
from synthpart.progress import Bar, Progress
from synthpart.records import CurvePoint, Tally
from synthpart.train.loop import Loop
from synthpart.train.stops import EvalSchedule


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a hook needs of the driver (module docstring)."""
  span_steps: int = 0
  coupled: bool = False
  evaluation: EvalSchedule = EvalSchedule()


@dataclasses.dataclass(frozen=True, order=True)
class Chunk:
  """Steps first .. first+count-1 of epoch `epoch` of loop `loop` (its index in `drive`)."""
  loop: int
  epoch: int
  first: int
  count: int


@dataclasses.dataclass(frozen=True)
class RoundEnd:
  """What a round did: the loops that trained in it (`ran`, indices into `loops`), those that
  diverged in it (`diverged`), its curve point and whether it joined the method's curve
  (`appended`: not where a lone loop diverged, which ends the method without one), the metric
  step of its scalars (the point's position, 1-based) and the method's tally at the round's
  end."""
  round: int
  loops: Sequence[Loop]
  ran: tuple[int, ...]
  diverged: tuple[int, ...]
  point: CurvePoint
  step: int
  tally: Tally
  appended: bool


@dataclasses.dataclass(frozen=True)
class Resumed:
  """Where a resumed drive starts: its first round still to run and the method's tally at the
  end of the round before it."""
  round: int
  tally: Tally


class Hook:
  """A driver hook (module docstring): override what you use."""
  needs: Needs = Needs()
  evaluates: bool = False
  flops: float = 0.0  # what one evaluation costs, for the hook that `evaluates`

  def resume(self, loops: Sequence[Loop], tally: Tally, coupled: bool) -> Resumed | None:
    """Restores the loops (and says where to start); None: nothing to resume."""
    return None

  def started(self, loops: Sequence[Loop], first_round: int) -> None:
    """The drive starts at `first_round` (after any resume)."""

  def before_span(self, chunks: list[Chunk]) -> None:
    """Before the chunks of a span (`Needs.span_steps`) are dispatched together."""

  def chunk_done(self, loop: int, fraction: float) -> None:
    """`fraction` of loop `loop`'s round is trained (where the driver waited on it)."""

  def evaluate(self, params: list[Params]) -> float:
    """The composed network's accuracy (for the hook that `evaluates`)."""
    raise NotImplementedError

  def round_done(self, end: RoundEnd) -> None:
    """A round ended (`RoundEnd`)."""

  def finished(self) -> None:
    """The drive ended."""


def needs_of(hooks: Sequence[Hook]) -> Needs:
  """What the hooks need together: the one span length and evaluation schedule declared (two
  different ones are an error), coupled where any is."""
  spans = {h.needs.span_steps for h in hooks if h.needs.span_steps}
  schedules = {h.needs.evaluation for h in hooks if h.needs.evaluation.within_epochs}
  if len(spans) > 1 or len(schedules) > 1:
    raise ValueError(f"hooks need different spans {sorted(spans)} or evaluation schedules")
  return Needs(span_steps=spans.pop() if spans else 0,
               coupled=any(h.needs.coupled for h in hooks),
               evaluation=schedules.pop() if schedules else EvalSchedule())


# evaluate(params of every driven loop, in order) -> accuracy of the network they compose
Evaluate = Callable[[list[Params]], float]


class Evaluator(Hook):
  """Evaluates the composed network after every round and at the stops of `schedule` inside
  rounds; one evaluation costs `flops` (the network's forward pass over the evaluated split),
  counted apart from training."""
  evaluates = True

  def __init__(self, evaluate: Evaluate, schedule: EvalSchedule | None = None,
               flops: float = 0.0):
    self._evaluate, self.flops = evaluate, flops
    self.needs = Needs(evaluation=schedule or EvalSchedule())

  def evaluate(self, params: list[Params]) -> float:
    return self._evaluate(params)


class Bars(Hook):
  """One bar per loop (labelled "METHOD LOOP"), moved where the driver waits within a round and
  by whole epochs with their loss and accuracy; a note where a loop diverged. Quiet progress
  shows nothing, and the log file gets the same lines either way."""

  def __init__(self, progress: Progress):
    self.progress = progress
    self._bars: list[Bar] = []

  def started(self, loops: Sequence[Loop], first_round: int) -> None:
    self._bars = [self.progress.bar(f"{loop.method} {loop.name}" if loop.method else loop.name,
                                    loop.epochs, position=i, done=loop.done)
                  for i, loop in enumerate(loops)]

  def chunk_done(self, loop: int, fraction: float) -> None:
    self._bars[loop].advance(fraction)

  def round_done(self, end: RoundEnd) -> None:
    for i in end.diverged:
      loop = end.loops[i]
      self.progress.message(f"{loop.method} {loop.name} diverged at epoch {loop.done} "
                            f"({loop.divergence}); last good checkpoint: "
                            f"{loop.last_checkpoint or 'none'}")
    for i in end.ran:
      if i in end.diverged:
        continue
      metrics = {"loss": end.loops[i].losses[-1]}
      if end.point.accuracy is not None:
        metrics["acc"] = end.point.accuracy
      self._bars[i].update(**metrics)

  def finished(self) -> None:
    for bar in self._bars:
      bar.close()


class Scalars(Hook):
  """After every round, the method's scalars to the progress's metric writer: each loop's loss
  that trained in it, the training seconds and the test accuracy where evaluated."""

  def __init__(self, progress: Progress, method: str):
    self.progress, self.method = progress, method

  def round_done(self, end: RoundEnd) -> None:
    values: dict[str, float] = {f"loss/{end.loops[i].name}": end.loops[i].losses[-1]
                                for i in end.ran}
    values["seconds"] = end.point.seconds
    if end.point.accuracy is not None:
      values["accuracy/test"] = end.point.accuracy
    self.progress.scalars(self.method, end.step, values)


def shown(progress: Progress, method: str) -> list[Hook]:
  """The hooks that show a method's training: its bars and its live scalars."""
  return [Bars(progress), Scalars(progress, method)]
