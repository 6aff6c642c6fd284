"""Run a synthpart command that dies (SIGKILL) at a chosen point: resume is tested against real
deaths, and the training code has no branch for it.

    python tests/faults.py POINT COMMAND [ARGS...]

POINT names where the process kills itself:

  epoch-dispatched:METHOD/LOOP:EPOCH       after the loop's epoch EPOCH (1-based) is dispatched
  steps-dispatched:METHOD/LOOP:EPOCH:STEP  after a chunk of that epoch ending at step STEP
  handover:pnn-sequential:cut C            before the sequential schedule hands over cut C
  anything else                            `synthpart.checkpoint.crash_point`'s points (I/O:
                                           checkpoint-write, checkpoint-saved, run-dir, ...)

The first three are seams patched here (`Loop.dispatch`, `Loop.dispatch_steps`, the sequential
schedule's `hand_over`); the others are the checkpoint module's own crash points, set through
its environment variable.
"""

from __future__ import annotations

import os
import signal
import sys

from synthpart import checkpoint, cli
from synthpart.train import loop, schedules


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
  """Patches the seams so that this process dies at `point`."""
  dispatch, dispatch_steps, hand_over = (loop.Loop.dispatch, loop.Loop.dispatch_steps,
                                         schedules.hand_over)

  def dying_dispatch(self, epoch):
    losses = dispatch(self, epoch)
    if point == f"epoch-dispatched:{self.method}/{self.name}:{epoch + 1}":
      _die()
    return losses

  def dying_dispatch_steps(self, epoch, first, count):
    losses = dispatch_steps(self, epoch, first, count)
    if point == f"steps-dispatched:{self.method}/{self.name}:{epoch + 1}:{first + count}":
      _die()
    return losses

  def dying_hand_over(tree, device, ledger, what, *args, **kwargs):
    if point == f"handover:pnn-sequential:{what.removesuffix(' activations')}":
      _die()
    return hand_over(tree, device, ledger, what, *args, **kwargs)

  loop.Loop.dispatch = dying_dispatch  # type: ignore[method-assign]
  loop.Loop.dispatch_steps = dying_dispatch_steps  # type: ignore[method-assign]
  schedules.hand_over = dying_hand_over  # type: ignore[assignment]
  if not point.startswith(("epoch-dispatched:", "steps-dispatched:", "handover:")):
    os.environ[checkpoint.CRASH_ENV] = point


if __name__ == "__main__":
  install(sys.argv[1])
  sys.exit(cli.main(sys.argv[2:]))
