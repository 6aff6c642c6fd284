"""Evaluation inside epochs: where rounds pause, crossings read between evaluations, and what the
evaluations and the sequential hand-over cost."""

import math
import time

import jax
import numpy as np
import pytest

from synthpart import curves as C
from synthpart.config import ConfigError, load
from synthpart.progress import Progress
from synthpart.records import MethodRecord
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.driver import drive
from synthpart.train.hooks import Evaluator
from synthpart.train.stops import (
  EvalSchedule,
  chunks,
  epochs_for,
  positions,
  round_stops,
  steps_in_epoch,
)

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)


def test_the_schedule_is_log_spaced_then_regular():
  s = EvalSchedule(every_steps=10, log_spaced=True)
  assert [n for n in range(1, 41) if s.evaluates_after(n)] == [1, 2, 4, 8, 10, 20, 30, 40]
  assert [n for n in range(1, 20) if EvalSchedule(log_spaced=True).evaluates_after(n)] == [
      1, 2, 4, 8, 16]
  assert not EvalSchedule().within_epochs and not EvalSchedule().evaluates_after(4)


def test_rounds_pause_at_evaluations_and_loops_advance_in_proportion():
  s = EvalSchedule(every_steps=4, log_spaced=True)
  assert round_stops(s, 0, 10, evaluate=True) == [1, 2, 4, 8, 10]
  assert round_stops(s, 10, 10, evaluate=True) == [2, 6, 10]  # steps 12, 16, then the end
  assert round_stops(s, 0, 10, evaluate=False) == [10]
  # A loop with half the steps per epoch (twice the batch) stands at the same fraction.
  assert positions([1, 2, 4, 8, 10], 10, 5, 5) == [1, 1, 2, 4, 5]
  assert chunks([1, 1, 2, 4, 5]) == [(0, 1), (1, 0), (1, 1), (2, 2), (4, 1)]
  assert [steps_in_epoch(e, 8, 20) for e in range(4)] == [8, 8, 4, 0]
  assert epochs_for(8, 5, 20) == 3 and epochs_for(8, 5) == 5


def test_eval_and_step_settings_are_checked():
  assert load(overrides={"eval.every_steps": 5, "eval.log_spaced": True}).eval.every_steps == 5
  with pytest.raises(ConfigError, match="eval.every_steps"):
    load(overrides={"eval.every_steps": -1})
  with pytest.raises(ConfigError, match="segments.0.steps"):
    load(overrides={"segments.0.steps": -3})


def test_crossing_is_linear_in_flops_between_the_points_around_the_target():
  curve = [{"flops": 0.0, "seconds": 0.0},  # no accuracy: not evaluated there
           {"flops": 10.0, "seconds": 1.0, "accuracy": 0.2},
           {"flops": 20.0, "seconds": 3.0, "accuracy": 0.6},
           {"flops": 40.0, "seconds": 7.0, "accuracy": 0.8},
           {"flops": 50.0, "seconds": 9.0, "accuracy": 0.7}]
  at = C.crossing(curve, 0.7)  # halfway from 0.6 to 0.8
  assert at == {"flops": pytest.approx(30.0), "seconds": pytest.approx(5.0), "interpolated": True}
  assert C.crossing(curve, 0.1) == {"flops": 10.0, "seconds": 1.0, "interpolated": False}
  assert C.crossing(curve, 0.6)["flops"] == 20.0
  assert C.crossing(curve, 0.81) is None
  front = C.pareto_front(curve)
  assert [p["flops"] for p in front] == [10.0, 20.0, 40.0]


def _tiny(**overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), jax.devices()[:2])


def test_evaluation_within_epochs_changes_no_training_and_costs_apart():
  """Same params and losses with or without evaluations inside epochs; the evaluations' time
  and FLOPs are recorded apart, and the curve's training FLOPs at every epoch end agree."""
  plain = _tiny(**{"model.cuts": []})
  within = _tiny(**{"model.cuts": [], "eval.every_steps": 4})
  a_params, a = S.train_conventional(plain, QUIET)
  b_params, b = S.train_conventional(within, QUIET)
  for x, y in zip(jax.tree.leaves(a_params), jax.tree.leaves(b_params)):
    assert np.array_equal(x, y)
  assert a.segments[0].loss_per_epoch == b.segments[0].loss_per_epoch
  widths, n = plain.widths, len(plain.train_y)
  ends_a = C.accuracy_curve(a.to_dict(), widths, n)
  ends_b = [p for p in C.accuracy_curve(b.to_dict(), widths, n) if not p.get("partial")]
  assert [p["flops"] for p in ends_a] == [p["flops"] for p in ends_b]
  assert b.segments[0].steps_per_epoch == 8  # evaluated after step 4 and at the end, 3 epochs
  assert b.evaluations == len([p for p in b.curve if p.accuracy is not None]) == 6
  forward = b.segments[0].forward_flops * len(within.test_y)
  assert b.eval_flops == pytest.approx(b.evaluations * forward)
  assert a.eval_flops == pytest.approx(a.evaluations * forward) and a.evaluations == 3


def test_evaluation_time_is_not_training_time():
  problem = _tiny(**{"model.cuts": [], "train.epochs": 1, "eval.every_steps": 2})
  loop = S.parallel_loop(problem, 0)
  pause = 0.3

  def slow(params):
    time.sleep(pause)
    return 0.5

  result = drive([loop], MethodRecord("conventional"),
                 [Evaluator(slow, EvalSchedule(every_steps=2), flops=7.0)])
  assert result.evaluations == loop.steps_per_epoch // 2
  assert result.eval_seconds >= pause * result.evaluations
  assert result.eval_flops == 7.0 * result.evaluations
  assert result.wall_seconds < result.eval_seconds / 2
  assert [p.seconds for p in result.curve] == sorted(p.seconds for p in result.curve)


def test_the_sequential_curve_starts_at_its_first_network_and_pays_for_the_left_segment():
  """The first evaluated point follows the right segment's first step, and its FLOPs are every
  step of the left segment (a budget of steps that ends inside an epoch), the hand-over's forward
  pass over the training set, and one step of the right segment."""
  problem = _tiny(**{"segments.0.steps": 10, "eval.every_steps": 4, "eval.log_spaced": True})
  _, result = S.train_sequential(problem, QUIET)
  left, right = result.segments
  assert (left.steps, left.epochs, len(left.loss_per_epoch)) == (10, 2, 2)
  document = result.to_dict()
  curve = C.accuracy_curve(document, problem.widths, len(problem.train_y))
  first = next(p for p in curve if "accuracy" in p)
  assert first["steps"] == [10, 1]
  expected = (10 * left.flops_per_step + left.forward_flops * len(problem.train_y)
              + right.flops_per_step)
  assert first["flops"] == pytest.approx(expected)
  below = first["accuracy"] - 0.01
  assert C.crossing(curve, below)["flops"] == pytest.approx(expected)
  assert all("accuracy" not in p for p in curve[:curve.index(first)])
  assert math.isclose(curve[-1]["flops"], 10 * left.flops_per_step
                      + left.forward_flops * len(problem.train_y)
                      + right.steps * right.flops_per_step)
