"""The training schedules: conventional, sequential (the paper's), parallel, and recovery.

Each segment trains as one optax loop (`synthpart.train.driver`) on its own device (segment i on
device i mod n). `sequential` trains segment k on the outputs of the trained segment k-1, handed
over once; `parallel` trains every segment at once from the SIL tables alone, so the devices run
concurrently and nothing crosses between them while training. The building blocks
(`sequential_segment`, `parallel_loop`) are public so that a multi-process launch
(`synthpart.distributed`) trains its own segments exactly as these schedules do.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax

from synthpart import checkpoint
from synthpart.config import TrainConfig
from synthpart.groups import Placement
from synthpart.model import Params, apply_segment, compose, init_segment, whole_network
from synthpart.partition import SegmentSpec
from synthpart.placement import hand_over, key_on
from synthpart.progress import Progress
from synthpart.results import MethodResult
from synthpart.train.driver import Evaluate, Loop, drive, start_loop
from synthpart.train.loop import count_correct, make_predict
from synthpart.train.objectives import Constants, Task, preprocess_pixels
from synthpart.train.problem import (
  INIT_STREAM,
  ORDER_STREAM,
  RECOVERY_STREAM,
  Problem,
  input_constants,
)


def init_params(problem: Problem, spec: SegmentSpec, device: Placement) -> Params:
  """Initialises a segment directly on its device (layer l from the init key folded with l)."""
  key = key_on(problem.key(INIT_STREAM), device)
  return jax.jit(functools.partial(init_segment, spec=spec))(key)


def segment_task(problem: Problem, spec: SegmentSpec, inputs: str) -> Task:
  """The objective of segment `spec` fed `inputs` ("pixels", "features" or "sil")."""
  s = problem.config.sil
  return Task(spec=spec, inputs=inputs, sil_loss=s.loss, noise=s.noise if inputs == "sil" else 0.0,
              input_scale=problem.input_scale)


def segment_constants(problem: Problem, spec: SegmentSpec, inputs: str,
                      device: Placement) -> Constants:
  """The SIL tables and input statistics segment `spec` reads, on its device."""
  consts = input_constants(problem, device) if inputs == "pixels" else Constants()
  if inputs == "sil" and spec.input_cut is not None:
    consts = consts._replace(sil_in=jax.device_put(problem.sil[spec.input_cut], device))
  if spec.output_cut is not None:
    consts = consts._replace(sil_out=jax.device_put(problem.sil[spec.output_cut], device))
  return consts


def make_evaluator(problem: Problem, device: Placement) -> Evaluate:
  """Returns accuracy(segment_params) of the composed network on the test set, on `device`."""
  whole = whole_network(problem.specs)
  scale = problem.input_scale
  x = jax.device_put(problem.test_x, device)
  y = jax.device_put(problem.test_y, device)
  consts = input_constants(problem, device)
  predict = make_predict(lambda p, xb: apply_segment(p, preprocess_pixels(xb, consts, scale),
                                                     whole))
  # The test set goes in as an argument: closed over, XLA would constant-fold it at compile time.
  correct = jax.jit(lambda p, x, y: count_correct(predict(p, x), y))

  def accuracy(segment_params: list[Params]) -> float:
    params = hand_over(compose(segment_params), device, [], "evaluation")
    return int(jax.device_get(correct(params, x, y))) / len(problem.test_y)

  return accuracy


def train_network(problem: Problem, method: str, train: TrainConfig, params: Params,
                  key: jax.Array, progress: Progress, result: MethodResult | None = None,
                  name: str = "network",
                  checkpoints: checkpoint.Policy | None = None) -> tuple[Params, MethodResult]:
  """End-to-end backprop of the whole network on device 0: the baseline, and recovery epochs.

  With `result`, the epochs extend an earlier method's result (recovery after segments).
  """
  device = problem.device_of(0)
  evaluate = make_evaluator(problem, device)
  result = result or MethodResult(method)
  result.method = method
  loop = start_loop(segment_task(problem, whole_network(problem.specs), "pixels"), train, params,
                    {"x": problem.train_x, "y": problem.train_y},
                    input_constants(problem, device), key, device, name,
                    problem.config.placement.backend)
  _add(result, loop)
  drive([loop], result, progress, label=method, checkpoints=checkpoints, evaluate=evaluate)
  params = jax.device_get(loop.state.params)
  result.test_accuracy = evaluate([params])
  return params, result


def _add(result: MethodResult, loop: Loop) -> None:
  result.segments.append(loop.result)
  result.compile_seconds += loop.result.compile_seconds


def train_conventional(problem: Problem, progress: Progress,
                       checkpoints: checkpoint.Policy | None = None
                       ) -> tuple[Params, MethodResult]:
  """The baseline: the same network and optimizer, end to end on one device."""
  whole = whole_network(problem.specs)
  params = init_params(problem, whole, problem.device_of(0))
  return train_network(problem, "conventional", problem.config.train, params,
                       problem.key(ORDER_STREAM, 0), progress, checkpoints=checkpoints)


def train_sequential(problem: Problem, progress: Progress, track_accuracy: bool = True,
                     checkpoints: checkpoint.Policy | None = None
                     ) -> tuple[list[Params], MethodResult]:
  """The paper's schedule: segment k learns from the trained segment k-1's outputs.

  The outputs over the training set are computed once on segment k-1's device and handed over
  once to segment k's: the only transfer between devices.
  """
  result = MethodResult("pnn-sequential")
  evaluator = make_evaluator(problem, problem.device_of(0)) if track_accuracy else None
  trained: list[Params] = []
  features: jax.Array | None = None
  for spec in problem.specs:
    if spec.is_first:
      x: Any = problem.train_x
    else:
      checkpoint.crash_point(f"handover:{result.method}:cut {spec.input_cut}")
      start = time.perf_counter()
      x = jax.block_until_ready(hand_over(features, problem.device_of(spec.index),
                                          result.transfers, f"cut {spec.input_cut} activations"))
      result.wall_seconds += time.perf_counter() - start
    # Only the last segment completes a network to evaluate.
    evaluate = (None if evaluator is None or not spec.is_last
                else functools.partial(lambda done, params: evaluator(done + params), trained))
    params, features = sequential_segment(problem, spec, x, progress, result, checkpoints,
                                          evaluate)
    trained.append(params)
    if result.segments[-1].diverged:
      progress.message(f"{result.method}: later segments not trained, segment {spec.index} "
                       "diverged")
      return jax.device_get(trained), result
  params = jax.device_get(trained)
  result.test_accuracy = (evaluator or make_evaluator(problem, problem.device_of(0)))(params)
  return params, result


def sequential_segment(problem: Problem, spec: SegmentSpec, inputs_x: Any, progress: Progress,
                       result: MethodResult, checkpoints: checkpoint.Policy | None = None,
                       evaluate: Evaluate | None = None) -> tuple[Params, jax.Array | None]:
  """One segment of the sequential schedule, on its device: (params, its outputs or None).

  `inputs_x` is the training set for the first segment, else the previous segment's outputs,
  already handed over by the caller (in one process, `hand_over`; across processes, a file).
  The loop, its curve points and timings are added to `result`. The outputs over the training
  set [N, width] are computed on this segment's device for the next segment, unless this is the
  last segment or it diverged (then None). `evaluate([params])`, if given, is the accuracy after
  each epoch.
  """
  device = problem.device_of(spec.index)
  inputs = "pixels" if spec.is_first else "features"
  task = segment_task(problem, spec, inputs)
  loop = start_loop(task, problem.config.segment_train(spec.index),
                    init_params(problem, spec, device), {"x": inputs_x, "y": problem.train_y},
                    segment_constants(problem, spec, inputs, device),
                    problem.key(ORDER_STREAM, spec.start), device, f"segment {spec.index}",
                    problem.config.placement.backend)
  _add(result, loop)
  drive([loop], result, progress, label=result.method, checkpoints=checkpoints,
        evaluate=evaluate)
  if spec.is_last or loop.result.diverged:
    return loop.state.params, None
  start = time.perf_counter()
  features = jax.block_until_ready(_forward(task, loop)(loop.state.params, loop.data["x"]))
  result.wall_seconds += time.perf_counter() - start
  return loop.state.params, features


def _forward(task: Task, loop: Loop) -> Callable[[Params, jax.Array], jax.Array]:
  """The trained segment's outputs over a whole array, chunked, on the segment's device."""
  consts = loop.consts

  def apply(params: Params, xb: jax.Array) -> jax.Array:
    x = preprocess_pixels(xb, consts, task.input_scale) if task.inputs == "pixels" else xb
    return apply_segment(params, x, task.spec)

  return make_predict(apply)


def parallel_loop(problem: Problem, segment: int) -> Loop:
  """Segment `segment`'s loop in the parallel schedule: pixels for the first segment, SIL
  vectors of the labels plus noise for the others; compiled on the segment's device."""
  spec = problem.specs[segment]
  device = problem.device_of(segment)
  inputs = "pixels" if spec.is_first else "sil"
  data = {"x": problem.train_x, "y": problem.train_y} if spec.is_first else {"y": problem.train_y}
  return start_loop(segment_task(problem, spec, inputs), problem.config.segment_train(segment),
                    init_params(problem, spec, device), data,
                    segment_constants(problem, spec, inputs, device),
                    problem.key(ORDER_STREAM, spec.start), device, f"segment {segment}",
                    problem.config.placement.backend)


def train_parallel(problem: Problem, progress: Progress, track_accuracy: bool = True,
                   checkpoints: checkpoint.Policy | None = None
                   ) -> tuple[list[Params], MethodResult]:
  """Every segment at once, from the SIL tables alone: nothing crosses devices while training.

  With `track_accuracy`, the composed network is evaluated between rounds (outside the timing).
  """
  result = MethodResult("pnn-parallel")
  loops = [parallel_loop(problem, k) for k in range(len(problem.specs))]
  for loop in loops:
    _add(result, loop)
  evaluate = make_evaluator(problem, problem.device_of(0))
  drive(loops, result, progress, label=result.method, checkpoints=checkpoints,
        evaluate=evaluate if track_accuracy else None)
  params = jax.device_get([loop.state.params for loop in loops])
  result.test_accuracy = evaluate(params)
  return params, result


def train_recovery(problem: Problem, segment_params: list[Params], base: MethodResult,
                   progress: Progress, checkpoints: checkpoint.Policy | None = None
                   ) -> tuple[Params, MethodResult]:
  """Recovery epochs: end-to-end training of the composed network, with its own optimizer."""
  result = dataclasses.replace(base, segments=list(base.segments), curve=list(base.curve),
                               transfers=list(base.transfers))
  return train_network(problem, f"{base.method}+recovery", problem.config.recovery,
                       compose(segment_params), problem.key(RECOVERY_STREAM), progress,
                       result=result, name="recovery", checkpoints=checkpoints)


# Each schedule a config may name (`synthpart.config.SCHEDULES`), and the function training it.
Schedule = Callable[..., tuple[list[Params], MethodResult]]
RUNNERS: dict[str, Schedule] = {"sequential": train_sequential, "parallel": train_parallel}
