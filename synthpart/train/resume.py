"""Checkpoints of a drive's loops, and resuming from them: the `Checkpoints` hook.

Each loop saves its state every `checkpoint.every` rounds and after its last epoch (never a
diverged one), under DIR/checkpoints/<method>/<loop>/<epoch>/ (`synthpart.checkpoint`). Rounds,
not the loop's own epochs: loops that start in later rounds (pipelined) then save at the same
rounds as the others, so that they can resume together. Every checkpoint written in a round
holds, beside the loop's own losses and times, the method's tally at that round's end
(`synthpart.records.Tally`: its curve, training seconds, evaluations and their cost,
transfers).

Resuming restores every loop from its newest checkpoint, and the method's tally from a
checkpoint written at the end of the round the drive resumes after: the round the least advanced
unfinished loop reached (loops that finished do not hold the others back). Loops that read each
other's parameters while they train (`coupled`: the pipelined schedule's refreshes) are all
restored at one round, the latest that all their checkpoints hold, so that the resumed run trains
exactly as an uninterrupted one; a loop with no checkpoint that early starts afresh, and the
checkpoints after that round are discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthpart import checkpoint
from synthpart.errors import CheckpointError
from synthpart.records import Tally
from synthpart.train.hooks import Hook, Resumed, RoundEnd
from synthpart.train.loop import Loop


def least_reached(reached: Sequence[int], finished: Sequence[bool]) -> int:
  """The round a drive resumes after: the least `reached` of the unfinished loops (loops that
  finished do not hold the others back), or the largest where every loop finished."""
  return min((r for r, done in zip(reached, finished, strict=True) if not done),
             default=max(reached, default=0))


def tally_of(meta: dict[str, Any], current: Tally) -> Tally:
  """The method's tally a checkpoint's meta holds; what it lacks (a checkpoint of an older
  version) as in `current`."""
  return Tally.from_meta(meta, default=current)


class Checkpoints(Hook):
  """Saves every loop of a drive under `policy` and resumes them (module docstring)."""

  def __init__(self, policy: checkpoint.Policy):
    self.policy = policy

  def _restore(self, loop: Loop, at_most: int | None = None) -> dict[str, Any]:
    """Restores the loop's newest checkpoint (of an epoch no later than `at_most`, where
    given), if any; returns its meta ({} if none: the loop is left as it is)."""
    restored = checkpoint.restore(self.policy, loop.method, loop.name, loop.state, loop.device,
                                  at_most)
    if restored is None:
      return {}
    state, meta = restored
    loop.restore(state, meta, str(self.policy.loop_dir(loop.method, loop.name)
                                  / str(meta["epoch"])))
    return meta

  def resume(self, loops: Sequence[Loop], tally: Tally, coupled: bool) -> Resumed | None:
    fresh = [(loop.state, list(loop.losses), list(loop.seconds)) for loop in loops]
    metas = [self._restore(loop) for loop in loops]

    def reached() -> list[int]:
      return [loop.start_round + loop.done for loop in loops]

    def least() -> int:
      return least_reached(reached(), [loop.finished for loop in loops])

    def afresh(i: int) -> None:
      loop = loops[i]
      loop.state, losses, seconds = fresh[i]
      loop.losses, loop.seconds = list(losses), list(seconds)
      loop.first_step_loss, loop.last_checkpoint = None, None

    while coupled:
      target = least()
      ahead = [i for i, loop in enumerate(loops) if loop.done > max(0, target - loop.start_round)]
      if not ahead:
        break
      for i in ahead:
        loop = loops[i]
        back = max(0, target - loop.start_round)
        metas[i] = self._restore(loop, at_most=back) if back else {}
        checkpoint.discard_after(self.policy, loop.method, loop.name, back)
        if not metas[i]:  # no checkpoint that early: the loop starts afresh
          afresh(i)
    start = least()
    if not start:
      return None
    donors = [i for i, r in enumerate(reached()) if metas[i] and r == start]
    if not donors:  # the checkpoints were pruned or moved by hand: nothing is deleted
      raise CheckpointError(f"cannot resume {loops[0].method}: no checkpoint holds its record at "
                            f"round {start}, where its loops stand; rerun with --overwrite")
    return Resumed(start, tally_of(metas[donors[0]], tally))

  def round_done(self, end: RoundEnd) -> None:
    for i in end.ran:
      self._save(end.loops[i], end.tally)

  def _save(self, loop: Loop, tally: Tally) -> None:
    """Checkpoints every `policy.every` rounds and after the loop's last epoch; never a
    diverged state."""
    epoch = loop.done
    if loop.diverged or ((loop.start_round + epoch) % self.policy.every
                         and epoch != loop.epochs):
      return
    path = checkpoint.save(self.policy, loop.method, loop.name, epoch, loop.state,
                           {**loop.meta(), **tally.to_meta()})
    loop.last_checkpoint = str(path)
