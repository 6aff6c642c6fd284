"""Where an epoch round pauses: after the steps at which the composed network is evaluated.

A round trains every active loop through one epoch (or through what is left of its step budget,
`train.steps`). `drive` runs it whole, or in chunks (`Loop.dispatch_steps`) that end at the
round's *stops*: after every step the evaluation schedule (`synthpart.config.EvalConfig`) names,
and at the round's end. Steps are counted per loop from its first step (1-based), so a loop that
starts later (the sequential schedule's next segment) is evaluated from its own first step on.

Where the loops of a round take different numbers of steps per epoch (different batch sizes),
the schedule follows the loop with the most steps per epoch (the *reference*), and every other
loop advances in proportion: to the same fraction of its epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class EvalSchedule:
  """After which of a loop's steps (1-based) the composed network is evaluated, besides every
  epoch's end: multiples of `every_steps` (0: none), and powers of two with `log_spaced`
  (below `every_steps` where it is set)."""
  every_steps: int = 0
  log_spaced: bool = False

  @property
  def within_epochs(self) -> bool:
    """Whether any evaluation falls inside an epoch."""
    return self.every_steps > 0 or self.log_spaced

  def evaluates_after(self, step: int) -> bool:
    """Whether the network is evaluated after the loop's global step `step` (1-based)."""
    if step < 1:
      return False
    if self.log_spaced and step & (step - 1) == 0 and (not self.every_steps
                                                        or step < self.every_steps):
      return True
    return self.every_steps > 0 and step % self.every_steps == 0


def steps_in_epoch(epoch: int, steps_per_epoch: int, max_steps: int = 0) -> int:
  """Steps a loop trains in epoch `epoch` (0-based): a whole epoch, or what its budget of
  `max_steps` (0: none) leaves; 0 once the budget is spent."""
  if not max_steps:
    return steps_per_epoch
  return max(0, min(steps_per_epoch, max_steps - epoch * steps_per_epoch))


def epochs_for(steps_per_epoch: int, epochs: int, max_steps: int = 0) -> int:
  """Epochs a loop runs: `epochs`, or as many as its budget of `max_steps` starts."""
  return -(-max_steps // steps_per_epoch) if max_steps else epochs


def round_stops(schedule: EvalSchedule, start: int, count: int, evaluate: bool) -> list[int]:
  """Positions (1..count) in a round of `count` steps of the reference loop, which has trained
  `start` steps before it, where the round pauses: its evaluations (when `evaluate`) and its
  end."""
  inside = ([p for p in range(1, count) if schedule.evaluates_after(start + p)]
            if evaluate and schedule.within_epochs else [])
  return [*inside, count] if count else []


def positions(stops: Sequence[int], reference_steps: int, steps_per_epoch: int,
              count: int) -> list[int]:
  """Where a loop stands at each stop: the same fraction of its own epoch as the reference
  loop's (`reference_steps` per epoch), rounded up, at most the `count` steps of its round."""
  return [min(count, -(-stop * steps_per_epoch // reference_steps)) for stop in stops]


def chunks(stops: Sequence[int]) -> list[tuple[int, int]]:
  """(first, count) of each chunk between consecutive positions, empty chunks included."""
  out, first = [], 0
  for stop in stops:
    out.append((first, stop - first))
    first = stop
  return out


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """How a chunked round runs: per loop, its chunks (first, count), one per stop; whether the
  network is evaluated after each stop; and, where a chunk opens a refresh span (every
  `chunk_steps` steps), that span's (first, count) per loop, else None."""
  chunks: dict[int, list[tuple[int, int]]]
  evaluated: list[bool]
  spans: list[dict[int, tuple[int, int]] | None]


def round_plan(steps_per_epoch: Mapping[int, int], counts: Mapping[int, int],
               epochs: Mapping[int, int], schedule: EvalSchedule | None,
               chunk_steps: int) -> RoundPlan:
  """The stops of a round in which loop i ({loop: ...}) trains `counts[i]` steps of its epoch
  `epochs[i]`: after the evaluations of `schedule` (None: no evaluation), every `chunk_steps`
  steps (0: none), and at the end. The pipelined schedule's refreshes see the spans of
  `chunk_steps` steps only, so where the network is evaluated changes no result."""
  reference = max(counts, key=lambda i: steps_per_epoch[i])
  per_epoch = steps_per_epoch[reference]
  length = max(-(-counts[i] * per_epoch // steps_per_epoch[i]) for i in counts)
  evaluated = (set(round_stops(schedule, epochs[reference] * per_epoch, length, True)[:-1])
               if schedule is not None else set())
  refreshes = sorted((set(range(chunk_steps, length, chunk_steps)) if chunk_steps else set())
                     | {length})
  stops = sorted(evaluated | set(refreshes) | {length})

  def plan(at: list[int]) -> dict[int, list[tuple[int, int]]]:
    return {i: chunks(positions(at, per_epoch, steps_per_epoch[i], counts[i])) for i in counts}

  spans = plan(refreshes)
  opens = {0: 0} | {stop: k + 1 for k, stop in enumerate(refreshes[:-1])}
  return RoundPlan(plan(stops), [stop in evaluated for stop in stops],
                   [None if start not in opens else {i: spans[i][opens[start]] for i in counts}
                    for start in [0, *stops[:-1]]])
