"""The training schedules: conventional, sequential (the paper's), parallel, pipelined, recovery.

Each segment trains as one optax loop (`synthpart.train.driver`) on its own device (segment i on
device i mod n); no gradient ever crosses a device.

- `sequential`: segment k trains on the outputs of the trained segment k-1, computed once over
  the training set and handed over once.
- `parallel`: every segment trains at once from the SIL tables alone, so the devices run
  concurrently and nothing crosses between them while training. Segment k > 0 is fed the SIL
  vector of each example's label plus Gaussian noise, which depends on nothing but the label: it
  learns to decode the class code, not to correct the earlier segments' errors. Its network
  classifies like the first segment read out by the nearest SIL vector
  (`nearest_sil_reference`), up to how the later segments treat outputs far from every code.
- `pipelined`: every segment trains at once, segment k on the outputs of the *current*
  segments 0..k-1, refreshed for the rows it reads every `pipeline.refresh_steps` steps
  (`synthpart.train.refresh`): activations travel forward only, and segment k starts
  `pipeline.delay_epochs` rounds after segment k-1. Started after segment k-1 has finished,
  it is the sequential schedule, bit for bit.

The building blocks (`sequential_segment`, `parallel_loop`) are public so that a multi-process
launch (`synthpart.distributed`) trains its own segments exactly as these schedules do.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from synthpart import checkpoint
from synthpart.config import TrainConfig
from synthpart.flops import segment_flops
from synthpart.groups import Placement
from synthpart.labels import sil_distances
from synthpart.model import Params, apply_segment, compose, init_segment, whole_network
from synthpart.partition import SegmentSpec
from synthpart.placement import EVALUATION, TRAINING, Transfer, hand_over, key_on, summarize
from synthpart.progress import Progress
from synthpart.results import MethodResult
from synthpart.train.driver import Evaluate, Evaluation, drive
from synthpart.train.live import Loop, start_loop
from synthpart.train.loop import count_correct, make_predict
from synthpart.train.objectives import Constants, Task, preprocess_pixels
from synthpart.train.problem import (
  INIT_STREAM,
  ORDER_STREAM,
  RECOVERY_STREAM,
  Problem,
  input_constants,
)
from synthpart.train.refresh import Feeds, segment_outputs
from synthpart.train.stops import EvalSchedule


def init_params(problem: Problem, spec: SegmentSpec, device: Placement) -> Params:
  """Initialises a segment directly on its device (layer l from the init key folded with l)."""
  key = key_on(problem.key(INIT_STREAM), device)
  return jax.jit(functools.partial(init_segment, spec=spec))(key)


def segment_task(problem: Problem, spec: SegmentSpec, inputs: str) -> Task:
  """The objective of segment `spec` fed `inputs` ("pixels", "features" or "sil")."""
  s = problem.config.sil
  noise = s.noise * (s.scale if s.noise_relative else 1.0) if inputs == "sil" else 0.0
  return Task(spec=spec, inputs=inputs, sil_loss=s.loss, noise=noise,
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


def make_evaluator(problem: Problem, device: Placement,
                   ledger: list[Transfer] | None = None) -> Evaluate:
  """Returns accuracy(segment_params) of the composed network on the test set, on `device`.

  Parameters that live on other devices are handed over to `device`, recorded in `ledger` (the
  method's transfers) as evaluation transfers; parameters on the host cross no device.
  """
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
    params = hand_over(compose(segment_params), device, [] if ledger is None else ledger,
                       "parameters for evaluation", EVALUATION)
    return int(jax.device_get(correct(params, x, y))) / len(problem.test_y)

  return accuracy


def evaluation_of(problem: Problem) -> Evaluation:
  """When the composed network is evaluated (`eval` settings), and the FLOPs of once: its
  forward pass over the evaluated split."""
  e = problem.config.eval
  return Evaluation(EvalSchedule(e.every_steps, e.log_spaced),
                    float(segment_flops(whole_network(problem.specs)).forward
                          * len(problem.test_y)))


def make_nearest_sil_evaluator(problem: Problem, device: Placement) -> Callable[[Params], float]:
  """Returns accuracy(first segment's params) on the test set, on `device`: each input gets the
  class whose SIL vector at the first cut is nearest to the segment's output under the SIL loss
  (`labels.sil_distances`)."""
  spec = problem.specs[0]
  if spec.output_cut is None:
    raise ValueError("the nearest-SIL read-out needs a network of at least two segments")
  scale, loss = problem.input_scale, problem.config.sil.loss
  x = jax.device_put(problem.test_x, device)
  y = jax.device_put(problem.test_y, device)
  table = jax.device_put(problem.sil[spec.output_cut], device)
  consts = input_constants(problem, device)

  def scores(params: Params, xb: jax.Array) -> jax.Array:
    out = apply_segment(params, preprocess_pixels(xb, consts, scale), spec)
    return -sil_distances(out, table, loss)

  predict = make_predict(scores)
  correct = jax.jit(lambda p, x, y: count_correct(predict(p, x), y))

  def accuracy(params: Params) -> float:
    return int(jax.device_get(correct(jax.device_put(params, device), x, y))) / len(problem.test_y)

  return accuracy


def nearest_sil_reference(problem: Problem, segment_params: list[Params],
                          base: MethodResult) -> MethodResult:
  """`base`'s first segment alone, read out by the nearest SIL vector: method
  "<base>-nearest-sil", the reference that shows what the later segments add. Its one loop and
  time are the first segment's; its curve is one point, at the end."""
  seg = base.segments[0]
  first = dataclasses.replace(seg, loss_per_epoch=list(seg.loss_per_epoch),
                              epoch_seconds=list(seg.epoch_seconds))
  result = MethodResult(f"{base.method}-nearest-sil", wall_seconds=sum(first.epoch_seconds),
                        compile_seconds=first.compile_seconds, segments=[first])
  result.test_accuracy = make_nearest_sil_evaluator(problem, problem.device_of(0))(
      segment_params[0])
  rounds = len(first.loss_per_epoch)
  result.curve = [{"epoch": rounds, "round": rounds, "seconds": result.wall_seconds,
                   "examples": [first.examples], "accuracy": result.test_accuracy}]
  return result


def train_network(problem: Problem, method: str, train: TrainConfig, params: Params,
                  key: jax.Array, progress: Progress, result: MethodResult | None = None,
                  name: str = "network",
                  checkpoints: checkpoint.Policy | None = None) -> tuple[Params, MethodResult]:
  """End-to-end backprop of the whole network on device 0: the baseline, and recovery epochs.

  With `result`, the epochs extend an earlier method's result (recovery after segments).
  """
  device = problem.device_of(0)
  result = result or MethodResult(method)
  result.method = method
  evaluate = make_evaluator(problem, device, result.transfers)
  loop = start_loop(segment_task(problem, whole_network(problem.specs), "pixels"), train, params,
                    {"x": problem.train_x, "y": problem.train_y},
                    input_constants(problem, device), key, device, name,
                    problem.config.placement.backend)
  _add(result, loop)
  drive([loop], result, progress, label=method, checkpoints=checkpoints, evaluate=evaluate,
        evaluation=evaluation_of(problem))
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
  evaluator = (make_evaluator(problem, problem.device_of(0), result.transfers)
               if track_accuracy else None)
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
        evaluate=evaluate, evaluation=evaluation_of(problem))
  if spec.is_last or loop.result.diverged:
    return loop.state.params, None
  start = time.perf_counter()
  features = jax.block_until_ready(segment_outputs(task, loop)(loop.state.params,
                                                              loop.data["x"]))
  result.wall_seconds += time.perf_counter() - start
  return loop.state.params, features


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
  evaluate = make_evaluator(problem, problem.device_of(0), result.transfers)
  drive(loops, result, progress, label=result.method, checkpoints=checkpoints,
        evaluate=evaluate if track_accuracy else None, evaluation=evaluation_of(problem))
  params = jax.device_get([loop.state.params for loop in loops])
  result.test_accuracy = evaluate(params)
  return params, result


def pipelined_loop(problem: Problem, segment: int, start_round: int = 0) -> Loop:
  """Segment `segment`'s loop in the pipelined schedule, trained from round `start_round` on:
  the first on the dataset, a later one on a buffer of its input activations [N, *input shape]
  on its device, which `refresh.Feeds` keeps fresh (zeros until then)."""
  spec = problem.specs[segment]
  device = problem.device_of(segment)
  inputs = "pixels" if spec.is_first else "features"
  x = problem.train_x if spec.is_first else _zeros((len(problem.train_y), *spec.shapes[0]),
                                                   device)
  loop = start_loop(segment_task(problem, spec, inputs), problem.config.segment_train(segment),
                    init_params(problem, spec, device), {"x": x, "y": problem.train_y},
                    segment_constants(problem, spec, inputs, device),
                    problem.key(ORDER_STREAM, spec.start), device, f"segment {segment}")
  loop.start_round = start_round
  return loop


def _zeros(shape: tuple[int, ...], device: Placement) -> jax.Array:
  """float32 zeros made on `device` (a compiled constant: nothing crosses from the host)."""
  sharding = (device if isinstance(device, jax.sharding.Sharding)
              else jax.sharding.SingleDeviceSharding(device))
  return jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=sharding)()


def start_rounds(epochs: Sequence[int], delay: int) -> list[int]:
  """The round each segment starts in, given each one's epochs (a step budget's included): segment
  k `delay` rounds after segment k-1, or when segment k-1 has finished, whichever comes first."""
  rounds = [0]
  for before in epochs[:-1]:
    rounds.append(rounds[-1] + min(delay, before))
  return rounds


def train_pipelined(problem: Problem, progress: Progress, track_accuracy: bool = True,
                    checkpoints: checkpoint.Policy | None = None
                    ) -> tuple[list[Params], MethodResult]:
  """Every segment at once, segment k on the current outputs of segments 0..k-1: before every
  chunk of `pipeline.refresh_steps` steps, the rows it will read are recomputed and handed
  forward (`refresh.Feeds`). With `track_accuracy`, the composed network is evaluated between
  rounds (outside the timing). The ledger folds the hand-overs into one record per cut and pair
  of devices. The refresh functions compile on first use, within the first rounds' time (the
  chunks compile before, untimed).
  """
  result = MethodResult("pnn-pipelined")
  loops = [pipelined_loop(problem, k) for k in range(len(problem.specs))]
  starts = start_rounds([loop.result.epochs for loop in loops],
                        problem.config.pipeline.delay_epochs)
  for loop, start in zip(loops, starts, strict=True):
    loop.start_round = start
  for loop in loops:
    _add(result, loop)
  tasks = [segment_task(problem, spec, "pixels" if spec.is_first else "features")
           for spec in problem.specs]
  feeds = Feeds(loops, tasks, result.transfers)  # with evaluations; checkpointed with them
  evaluate = make_evaluator(problem, problem.device_of(0), result.transfers)
  drive(loops, result, progress, label=result.method, checkpoints=checkpoints,
        evaluate=evaluate if track_accuracy else None, evaluation=evaluation_of(problem),
        chunk_steps=problem.config.pipeline.refresh_steps, before_chunk=feeds.refresh)
  result.transfers[:] = (summarize([t for t in result.transfers if t.kind == TRAINING])
                         + [t for t in result.transfers if t.kind != TRAINING])
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
RUNNERS: dict[str, Schedule] = {"sequential": train_sequential, "parallel": train_parallel,
                                "pipelined": train_pipelined}
