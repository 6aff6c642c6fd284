"""Evaluating a method's network on the test set: the composed network's accuracy (on one
device, parameters handed over and ledgered), the evaluator hook that times and counts it, and
the parallel schedule's nearest-SIL reference row.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from synthpart.flops import segment_flops
from synthpart.labels import sil_distances
from synthpart.model import Params, compose, whole_network
from synthpart.placement import Placement
from synthpart.records import EVALUATION, CurvePoint, MethodRecord
from synthpart.train.epoch import count_correct, make_predict
from synthpart.train.hooks import Evaluate, Evaluator
from synthpart.train.objectives import Inputs, segment_forward
from synthpart.train.problem import Problem, input_constants
from synthpart.train.segments import segment_task
from synthpart.train.stops import EvalSchedule
from synthpart.transfers import Ledger, hand_over


def make_evaluator(problem: Problem, device: Placement, ledger: Ledger | None = None) -> Evaluate:
  """Returns accuracy(segment_params) of the composed network on the test set, on `device`.

  Parameters that live on other devices are handed over to `device`, recorded in `ledger` (the
  method's transfers) as evaluation transfers; parameters on the host cross no device.
  """
  whole = whole_network(problem.specs)
  task = segment_task(problem, whole, Inputs.PIXELS)
  x = jax.device_put(problem.test_x, device)
  y = jax.device_put(problem.test_y, device)
  consts = input_constants(problem, device)
  predict = make_predict(lambda p, xb: segment_forward(p, xb, task, consts))
  # The test set goes in as an argument: closed over, XLA would constant-fold it at compile time.
  correct = jax.jit(lambda p, x, y: count_correct(predict(p, x), y))

  def accuracy(segment_params: list[Params]) -> float:
    params = hand_over(compose(segment_params), device, ledger, "parameters for evaluation",
                       EVALUATION)
    return int(jax.device_get(correct(params, x, y))) / len(problem.test_y)

  return accuracy


def evaluator_of(problem: Problem, evaluate: Evaluate) -> Evaluator:
  """The hook evaluating with `evaluate` when the `eval` settings say, each evaluation costing
  the composed network's forward pass over the evaluated split."""
  e = problem.config.eval
  return Evaluator(evaluate, EvalSchedule(e.every_steps, e.log_spaced),
                   float(segment_flops(whole_network(problem.specs)).forward
                         * len(problem.test_y)))


def make_nearest_sil_evaluator(problem: Problem, device: Placement) -> Callable[[Params], float]:
  """Returns accuracy(first segment's params) on the test set, on `device`: each input gets the
  class whose SIL vector at the first cut is nearest to the segment's output under the SIL loss
  (`labels.sil_distances`)."""
  spec = problem.specs[0]
  if spec.output_cut is None:
    raise ValueError("the nearest-SIL read-out needs a network of at least two segments")
  task, loss = segment_task(problem, spec, Inputs.PIXELS), problem.config.sil.loss
  x = jax.device_put(problem.test_x, device)
  y = jax.device_put(problem.test_y, device)
  table = jax.device_put(problem.sil[spec.output_cut], device)
  consts = input_constants(problem, device)

  def scores(params: Params, xb: jax.Array) -> jax.Array:
    return -sil_distances(segment_forward(params, xb, task, consts), table, loss)

  predict = make_predict(scores)
  correct = jax.jit(lambda p, x, y: count_correct(predict(p, x), y))

  def accuracy(params: Params) -> float:
    return int(jax.device_get(correct(jax.device_put(params, device), x, y))) / len(problem.test_y)

  return accuracy


def nearest_sil_reference(problem: Problem, segment_params: list[Params],
                          base: MethodRecord) -> MethodRecord:
  """`base`'s first segment alone, read out by the nearest SIL vector: method
  "<base>-nearest-sil", the reference that shows what the later segments add. Its one loop and
  time are the first segment's; its curve is one point, at the end."""
  first = base.segments[0]
  accuracy = make_nearest_sil_evaluator(problem, problem.device_of(0))(segment_params[0])
  rounds = len(first.loss_per_epoch)
  seconds = sum(first.epoch_seconds)
  return MethodRecord(f"{base.method}-nearest-sil", test_accuracy=accuracy,
                      wall_seconds=seconds, compile_seconds=first.compile_seconds,
                      segments=(first,),
                      curve=(CurvePoint(epoch=rounds, round=rounds, seconds=seconds,
                                        examples=(first.examples,), accuracy=accuracy),))


