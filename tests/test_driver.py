"""`drive` on one and two tiny loops: the record it returns, the hooks it calls, evaluations
inside rounds, divergence, failures and loops that start in later rounds."""

import dataclasses

import numpy as np
import pytest

from synthpart.progress import Progress
from synthpart.records import CurvePoint, MethodRecord
from synthpart.train.driver import drive
from synthpart.train.hooks import Chunk, Evaluator, Hook, Needs, RoundEnd, needs_of, shown
from synthpart.train.stops import EvalSchedule

import tiny_loops as T

pytestmark = pytest.mark.xdist_group("tiny_loops")  # one worker compiles the loops once


class Recorder(Hook):
  """Records every call the driver makes, in order."""

  def __init__(self, needs: Needs | None = None):
    self.needs = needs or Needs()
    self.calls: list[tuple] = []
    self.ends: list[RoundEnd] = []

  def started(self, loops, first_round):
    self.calls.append(("started", len(loops), first_round))

  def before_span(self, chunks):
    self.calls.append(("before_span", tuple(chunks)))

  def chunk_done(self, loop, fraction):
    self.calls.append(("chunk_done", loop, fraction))

  def round_done(self, end):
    self.ends.append(end)
    self.calls.append(("round_done", end.round, end.ran, end.diverged, end.appended, end.step))

  def finished(self):
    self.calls.append(("finished",))

  def named(self, name: str) -> list[tuple]:
    return [c for c in self.calls if c[0] == name]


def test_one_loop_gives_a_new_record_with_a_point_per_round():
  before = T.network()
  prior = dataclasses.replace(before.record(), name="earlier")
  record = MethodRecord("m", compile_seconds=1.5, segments=(prior,))
  frozen = dataclasses.replace(record)
  loop = T.network()
  out = drive([loop], record)
  assert record == frozen and out is not record
  assert [s.name for s in out.segments] == ["earlier", "network"]
  assert out.segments[-1] == loop.record() and len(loop.losses) == 3
  assert out.compile_seconds == pytest.approx(1.5 + loop.compile_seconds)
  assert [p.epoch for p in out.curve] == [1, 2, 3]
  # The earlier loop's examples first (it trained none), then this loop's after each round.
  assert [p.examples for p in out.curve] == [(0, 256), (0, 512), (0, 768)]
  assert all(p.accuracy is None and p.steps is None and not p.partial for p in out.curve)
  seconds = [p.seconds for p in out.curve]
  assert seconds == sorted(seconds) and out.wall_seconds == seconds[-1] > 0
  assert out.evaluations == 0 and out.status == "ok"


def test_two_loops_train_together_and_hooks_hear_every_round():
  loops = [T.parallel(0), T.parallel(1)]
  hook = Recorder()
  out = drive(loops, MethodRecord("m"), [hook])
  assert [s.name for s in out.segments] == ["segment 0", "segment 1"]
  assert out.compile_seconds == pytest.approx(sum(l.compile_seconds for l in loops))
  assert [p.examples for p in out.curve] == [(256, 256), (512, 512), (768, 768)]
  assert hook.calls == [("started", 2, 0),
                        *[("round_done", r, (0, 1), (), True, r + 1) for r in range(3)],
                        ("finished",)]
  assert [e.point for e in hook.ends] == list(out.curve)
  assert hook.ends[-1].tally == out.tally()


def test_only_a_hook_that_needs_spans_hears_before_span():
  spans, plain = Recorder(Needs(span_steps=2)), Recorder()
  loops = [T.parallel(0), T.parallel(1)]
  whole = drive([T.parallel(0), T.parallel(1)], MethodRecord("m"))
  out = drive(loops, MethodRecord("m"), [spans, plain])
  assert not plain.named("before_span")
  # Two spans of two steps in each of the 3 rounds, each opening one chunk per loop.
  assert spans.named("before_span") == [
      ("before_span", (Chunk(0, e, first, 2), Chunk(1, e, first, 2)))
      for e in range(3) for first in (0, 2)]
  # The driver waits at each round's end only: both chunks of each loop are heard then.
  assert plain.named("chunk_done") == spans.named("chunk_done") == [
      ("chunk_done", i, f) for _ in range(3) for i in (0, 1) for f in (0.5, 1.0)]
  # Rounds run in chunks record steps, and train exactly as whole epochs do.
  assert [p.steps for p in out.curve] == [(4, 4), (8, 8), (12, 12)]
  assert [s.loss_per_epoch for s in out.segments] == [s.loss_per_epoch for s in whole.segments]


def test_needs_combine():
  def hook(needs: Needs) -> Hook:
    h = Hook()
    h.needs = needs
    return h

  assert needs_of([]) == Needs()
  every = EvalSchedule(every_steps=3)
  both = needs_of([hook(Needs(span_steps=2)), hook(Needs(span_steps=2, coupled=True)),
                   hook(Needs(evaluation=every)), hook(Needs())])
  assert both == Needs(span_steps=2, coupled=True, evaluation=every)
  with pytest.raises(ValueError, match="different spans"):
    needs_of([hook(Needs(span_steps=2)), hook(Needs(span_steps=3))])
  with pytest.raises(ValueError):
    needs_of([hook(Needs(evaluation=every)), hook(Needs(evaluation=EvalSchedule(4)))])
  with pytest.raises(ValueError, match="at most one hook"):
    drive([T.network()], MethodRecord("m"), [Evaluator(T.evaluate_fn()),
                                             Evaluator(T.evaluate_fn())])


def test_an_evaluator_inside_rounds_adds_partial_points_and_counts_its_cost():
  calls = []

  def evaluate(params):
    calls.append(params)
    return 0.25 * len(calls)

  loop = T.network()
  out = drive([loop], MethodRecord("m"),
              [Evaluator(evaluate, EvalSchedule(every_steps=3), flops=10.0)])
  # Steps 3, 6 and 9 fall inside the 3 rounds of 4 steps; every round's end is evaluated too.
  assert [(p.epoch, p.partial, p.steps) for p in out.curve] == [
      (1, True, (3,)), (1, False, (4,)), (2, True, (6,)), (2, False, (8,)),
      (3, True, (9,)), (3, False, (12,))]
  assert [p.examples for p in out.curve] == [(s[0] * 64,) for p in out.curve
                                             for s in [p.steps]]
  assert [p.accuracy for p in out.curve] == [0.25 * k for k in range(1, 7)]
  assert out.evaluations == len(calls) == 6 and out.eval_flops == 60.0
  assert out.eval_seconds > 0
  whole = drive([T.network()], MethodRecord("m"))
  assert out.segments[0].loss_per_epoch == whole.segments[0].loss_per_epoch


def test_a_diverging_loop_stops_and_a_lone_one_appends_no_point():
  hook = Recorder()
  loop = T.network(**T.DIVERGING)
  out = drive([loop], MethodRecord("m"), [hook, Evaluator(T.evaluate_fn())])
  assert loop.diverged and loop.done == 1 and out.status == "diverged"
  assert out.segments[0].divergence and out.curve == () and out.evaluations == 0
  assert hook.named("round_done") == [("round_done", 0, (0,), (0,), False, 1)]


def test_a_diverging_loop_stops_alone_and_nothing_is_evaluated():
  bad, good = T.network("bad", **T.DIVERGING), T.network("good")
  out = drive([bad, good], MethodRecord("m"), [Evaluator(T.evaluate_fn())])
  assert bad.done == 1 and good.done == 3
  assert [s.diverged for s in out.segments] == [True, False]
  assert [p.examples for p in out.curve] == [(256, 256), (256, 512), (256, 768)]
  assert all(p.accuracy is None for p in out.curve) and out.evaluations == 0


def test_a_loop_that_raises_fails_alone_under_on_error():
  broken, healthy = T.parallel(0), T.parallel(1)

  def dispatch(epoch):
    raise RuntimeError("device lost")

  broken.dispatch = dispatch
  failures = []
  out = drive([broken, healthy], MethodRecord("m"),
              on_error=lambda loop, e: failures.append((loop.name, str(e))))
  assert failures == [("segment 0", "device lost")]
  assert broken.done == 0 and healthy.done == 3
  assert [p.examples for p in out.curve] == [(0, 256), (0, 512), (0, 768)]
  again = T.parallel(0)
  again.dispatch = dispatch
  with pytest.raises(RuntimeError, match="device lost"):
    drive([again], MethodRecord("m"))


def test_a_loop_starting_in_round_one_trains_its_first_epoch_there():
  first, later = T.parallel(0), T.parallel(1, start_round=1)
  hook = Recorder()
  out = drive([first, later], MethodRecord("m"), [hook])
  assert [c[2] for c in hook.named("round_done")] == [(0,), (0, 1), (0, 1), (1,)]
  assert [p.examples for p in out.curve] == [(256, 0), (512, 256), (768, 512), (768, 768)]
  assert [p.epoch for p in out.curve] == [1, 2, 3, 4]
  alone = drive([T.parallel(1)], MethodRecord("m"))
  # Its epochs are its own: the same losses as started in round 0.
  np.testing.assert_array_equal(out.segments[1].loss_per_epoch, alone.segments[0].loss_per_epoch)


def test_a_point_of_the_curve_is_what_the_round_end_said():
  hook = Recorder()
  out = drive([T.network()], MethodRecord("m"), [hook])
  assert all(isinstance(e.point, CurvePoint) for e in hook.ends)
  assert tuple(e.point for e in hook.ends) == out.curve


def test_a_failed_loop_counts_no_steps_at_points_inside_rounds():
  broken, healthy = T.parallel(0), T.parallel(1)

  def dispatch_steps(epoch, first, count):
    raise RuntimeError("device lost")

  broken.dispatch_steps = dispatch_steps
  out = drive([broken, healthy], MethodRecord("m"),
              [Evaluator(lambda params: 1.0, EvalSchedule(every_steps=2))],
              on_error=lambda loop, e: None)
  assert [(p.partial, p.steps) for p in out.curve] == [
      (partial, (0, steps)) for end in (4, 8, 12) for partial, steps in ((True, end - 2),
                                                                         (False, end))]
  assert all(p.accuracy is None for p in out.curve) and out.evaluations == 0


def test_a_step_budget_ends_the_last_round_inside_its_epoch():
  loop = T.network()  # as `train.steps = 6` makes it: 2 epochs, the second cut to 2 steps
  loop = dataclasses.replace(loop, info=dataclasses.replace(loop.info, max_steps=6, epochs=2))
  out = drive([loop], MethodRecord("m"))
  assert loop.epochs == 2 and out.segments[0].steps == 6
  assert [(p.epoch, p.steps, p.examples) for p in out.curve] == [(1, (4,), (256,)),
                                                                  (2, (6,), (384,))]


class Metrics:
  """A metric writer that keeps what it is given."""

  def __init__(self):
    self.written: list[tuple[int, dict]] = []

  def write_scalars(self, step, values):
    self.written.append((step, dict(values)))

  def flush(self):
    pass

  def close(self):
    pass


def test_bars_and_scalars_show_every_round_and_note_a_divergence(tmp_path):
  metrics = Metrics()
  progress = Progress(quiet=True, log_path=tmp_path / "log", metrics=metrics)
  bad, good = T.network("bad", **T.DIVERGING), T.network("good")
  out = drive([bad, good], MethodRecord("m"), shown(progress, "run"))
  assert [step for step, _ in metrics.written] == [1, 2, 3]
  assert set(metrics.written[0][1]) == {"run/loss/bad", "run/loss/good", "run/seconds"}
  assert set(metrics.written[1][1]) == {"run/loss/good", "run/seconds"}
  assert metrics.written[-1][1]["run/seconds"] == out.wall_seconds
  assert metrics.written[-1][1]["run/loss/good"] == out.segments[1].loss_per_epoch[-1]
  log = (tmp_path / "log").read_text()
  assert "m bad diverged at epoch 1" in log and "last good checkpoint: none" in log
