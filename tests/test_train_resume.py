"""The `Checkpoints` hook: when loops save, and an interrupted drive resumed in-process with fresh
loops trains exactly as an uninterrupted one; `least_reached` and `tally_of`."""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synthpart import checkpoint
from synthpart.records import CurvePoint, MethodRecord, Tally, Transfer
from synthpart.train.driver import drive
from synthpart.train.hooks import Evaluator, Hook, Needs
from synthpart.train.resume import Checkpoints, least_reached, tally_of
from synthpart.train.stops import EvalSchedule

import tiny_loops as T

pytestmark = pytest.mark.xdist_group("tiny_loops")  # one worker compiles the loops once


class Crash(Exception):
  pass


class CrashAfter(Hook):
  """Raises after round `round` (0-based) has ended, as a kill there would stop the run."""

  def __init__(self, round: int):
    self.round = round

  def round_done(self, end):
    if end.round == self.round:
      raise Crash(f"after round {end.round}")


class Coupled(Hook):
  """Declares the loops coupled: a resume restores them all at one round."""
  needs = Needs(coupled=True)


def saved(policy: checkpoint.Policy, loop) -> list[int]:
  """The epochs of `loop`'s checkpoints."""
  directory = policy.loop_dir(loop.method, loop.name)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_loops_save_every_few_rounds_and_at_their_last_epoch(tmp_path):
  policy = checkpoint.Policy(tmp_path, every=2, keep=10)
  loops = [T.parallel(0), T.parallel(1, start_round=1)]
  out = drive(loops, MethodRecord("m"), [Checkpoints(policy)])
  # Rounds, not epochs: the later loop saves after rounds 1 and 3 (0-based), its epochs 1 and 3.
  assert saved(policy, loops[0]) == [2, 3] and saved(policy, loops[1]) == [1, 3]
  assert loops[1].last_checkpoint == str(policy.loop_dir(loops[1].method, "segment 1") / "3")
  # Each checkpoint holds the method's tally at the end of its round.
  _, meta = checkpoint.restore(policy, loops[0].method, "segment 0", loops[0].state,
                               loops[0].device, 2)
  assert tally_of(meta, Tally()) == Tally(out.curve[:2], out.curve[1].seconds,
                                          transfers=out.transfers)


def test_a_diverged_epoch_is_not_saved(tmp_path):
  policy = checkpoint.Policy(tmp_path, every=1)
  loop = T.network(**T.DIVERGING)
  drive([loop], MethodRecord("m"), [Checkpoints(policy)])
  assert loop.diverged and not policy.loop_dir(loop.method, loop.name).exists()


def _same_training(resumed: MethodRecord, whole: MethodRecord, loops_a, loops_b) -> None:
  """The same losses, curve (but its seconds) and parameters, bit for bit."""
  assert [s.loss_per_epoch for s in resumed.segments] == [s.loss_per_epoch
                                                          for s in whole.segments]
  def shape(curve):
    return [(p.epoch, p.examples, p.steps, p.accuracy, p.partial) for p in curve]
  assert shape(resumed.curve) == shape(whole.curve)
  assert resumed.evaluations == whole.evaluations
  for a, b in zip(loops_a, loops_b, strict=True):
    for x, y in zip(jax.tree.leaves(jax.device_get(a.state)),
                    jax.tree.leaves(jax.device_get(b.state)), strict=True):
      np.testing.assert_array_equal(x, y)


def _interrupted(make_loops, hooks, policy, crash_round):
  """Drives loops until the crash after `crash_round`, then fresh loops from the checkpoints."""
  with pytest.raises(Crash):
    drive(make_loops(), MethodRecord("m"), [*hooks(), Checkpoints(policy),
                                            CrashAfter(crash_round)])
  loops = make_loops()
  return loops, drive(loops, MethodRecord("m"), [*hooks(), Checkpoints(policy)])


def test_one_loop_resumed_trains_as_without_interruption(tmp_path):
  def make():
    return [T.network()]

  def hooks():
    return [Evaluator(T.evaluate_fn())]

  whole_loops = make()
  whole = drive(whole_loops, MethodRecord("m"), hooks())
  policy = checkpoint.Policy(tmp_path, every=1)
  loops, resumed = _interrupted(make, hooks, policy, crash_round=0)
  _same_training(resumed, whole, loops, whole_loops)
  assert resumed.curve[0].accuracy is not None


def test_coupled_loops_resume_together_and_train_as_without_interruption(tmp_path):
  """Saving every 2 rounds, the first loop finishes (round 2) while the later one last saved at
  round 2: coupled, the first goes back to its epoch 2 and both go on from round 2."""
  def make():
    return [T.parallel(0), T.parallel(1, start_round=1)]

  def hooks():
    return [Evaluator(T.evaluate_fn()), Coupled()]

  whole_loops = make()
  whole = drive(whole_loops, MethodRecord("m"), hooks())
  policy = checkpoint.Policy(tmp_path, every=2, keep=10)
  loops = make()
  with pytest.raises(Crash):
    drive(loops, MethodRecord("m"), [*hooks(), Checkpoints(policy), CrashAfter(2)])
  assert saved(policy, loops[0]) == [2, 3] and saved(policy, loops[1]) == [1]
  loops = make()
  starts = []

  class Start(Hook):
    def started(self, loops, first_round):
      starts.append((first_round, [loop.done for loop in loops]))

  resumed = drive(loops, MethodRecord("m"), [*hooks(), Checkpoints(policy), Start()])
  assert starts == [(2, [2, 1])]
  _same_training(resumed, whole, loops, whole_loops)
  assert saved(policy, loops[0]) == [2, 3] and saved(policy, loops[1]) == [1, 3]


def test_independent_loops_resume_where_each_stands(tmp_path):
  """Not coupled, the loop that finished stays finished; the other goes on from round 2."""
  def make():
    return [T.parallel(0), T.parallel(1, start_round=1)]

  whole_loops = make()
  whole = drive(whole_loops, MethodRecord("m"))
  policy = checkpoint.Policy(tmp_path, every=2, keep=10)
  with pytest.raises(Crash):
    drive(make(), MethodRecord("m"), [Checkpoints(policy), CrashAfter(2)])
  loops = make()
  starts = []

  class Start(Hook):
    def started(self, loops, first_round):
      starts.append((first_round, [loop.done for loop in loops]))

  resumed = drive(loops, MethodRecord("m"), [Checkpoints(policy), Start()])
  assert starts == [(2, [3, 1])]
  _same_training(resumed, whole, loops, whole_loops)


def test_pipelined_loops_resume_together_and_train_as_without_interruption(tmp_path):
  """The later segment reads the earlier one's current parameters (`Feeds`, coupled): resumed
  after round 2, both go back to round 2 and train exactly as an uninterrupted run."""
  def run(hooks, loops_and_feeds):
    loops, feeds = loops_and_feeds
    return loops, drive(loops, MethodRecord("m"), [feeds, Evaluator(T.evaluate_fn()), *hooks])

  whole_loops, whole = run([], T.pipelined())
  assert [p.examples for p in whole.curve][-1] == (768, 768)
  policy = checkpoint.Policy(tmp_path, every=2, keep=10)
  with pytest.raises(Crash):
    run([Checkpoints(policy), CrashAfter(2)], T.pipelined())
  loops, resumed = run([Checkpoints(policy)], T.pipelined())
  _same_training(resumed, whole, loops, whole_loops)


def test_a_resume_inside_rounds_keeps_their_partial_points(tmp_path):
  def hooks():
    return [Evaluator(T.evaluate_fn(), EvalSchedule(every_steps=3))]

  whole_loops = [T.network()]
  whole = drive(whole_loops, MethodRecord("m"), hooks())
  policy = checkpoint.Policy(tmp_path, every=1)
  loops, resumed = _interrupted(lambda: [T.network()], hooks, policy, crash_round=1)
  assert [p.partial for p in resumed.curve] == [True, False] * 3
  _same_training(resumed, whole, loops, whole_loops)


def test_a_finished_drive_resumed_trains_nothing_and_returns_its_record(tmp_path):
  policy = checkpoint.Policy(tmp_path, every=1)
  first = drive([T.network()], MethodRecord("m"), [Evaluator(T.evaluate_fn()),
                                                   Checkpoints(policy)])
  hook = CrashAfter(0)  # would raise, were any round run
  loop = T.network()
  again = drive([loop], MethodRecord("m"), [Evaluator(T.evaluate_fn()), Checkpoints(policy),
                                            hook])
  assert again.curve == first.curve and again.wall_seconds == first.wall_seconds
  assert again.evaluations == first.evaluations == 3
  assert again.segments[0].loss_per_epoch == first.segments[0].loss_per_epoch
  assert loop.last_checkpoint == str(policy.loop_dir(loop.method, loop.name) / "3")


def test_a_resume_with_nothing_saved_trains_from_the_start(tmp_path):
  policy = checkpoint.Policy(tmp_path, every=1)
  loop = T.network()
  assert Checkpoints(policy).resume([loop], Tally(), coupled=False) is None
  assert loop.done == 0


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=6),
       st.integers(0, 20))
def test_finished_loops_do_not_hold_the_others_back(loops, extra):
  reached, finished = [r for r, _ in loops], [f for _, f in loops]
  least = least_reached(reached, finished)
  unfinished = [r for r, f in loops if not f]
  assert least == (min(unfinished) if unfinished else max(reached))
  if unfinished:
    assert least_reached([*reached, extra], [*finished, True]) == least
  assert least_reached([], []) == 0


def test_tally_of_reads_an_older_meta_lacking_evaluations_and_transfers():
  current = Tally(evaluations=3, eval_seconds=0.5, eval_flops=7.0,
                  transfers=(Transfer("cut 2", "cpu:0", "cpu:1", 8),))
  point = CurvePoint(epoch=1, seconds=1.0, examples=(256,), accuracy=0.5)
  old = {"curve": [point.to_dict()], "wall_seconds": 1.0}
  assert tally_of(old, current) == Tally((point,), 1.0, 3, 0.5, 7.0, current.transfers)
  new = {**old, **Tally((point,), 1.0, 1, 0.1, 2.0, ()).to_meta()}
  assert tally_of(new, current) == Tally((point,), 1.0, 1, 0.1, 2.0, ())
