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
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from synthpart import checkpoint
from synthpart.config import TrainConfig
from synthpart.model import Params, compose, whole_network
from synthpart.partition import SegmentSpec
from synthpart.placement import Placement
from synthpart.progress import Progress
from synthpart.records import TRAINING, MethodRecord, summarize
from synthpart.schedule import SCHEDULES
from synthpart.train.driver import drive
from synthpart.train.evaluation import evaluator_of, make_evaluator
from synthpart.train.hooks import Evaluate, Hook, shown
from synthpart.train.loop import Loop
from synthpart.train.objectives import Inputs
from synthpart.train.problem import ORDER_STREAM, RECOVERY_STREAM, Problem
from synthpart.train.refresh import Feeds, segment_outputs
from synthpart.train.resume import Checkpoints
from synthpart.train.segments import init_params, loop_spec, segment_loop
from synthpart.train.stops import epochs_for
from synthpart.transfers import Ledger, hand_over


@dataclasses.dataclass(frozen=True)
class RunHooks:
  """What a method's drives report to besides its record: bars, the log and live metrics
  (`progress`), and checkpoints (`checkpoints`; None: none, and nothing resumes)."""
  progress: Progress = dataclasses.field(default_factory=lambda: Progress(quiet=True))
  checkpoints: checkpoint.Policy | None = None

  def of(self, method: str, *first: Hook) -> list[Hook]:
    """The hooks of one of `method`'s drives: `first` (an evaluator, a refresh), then
    checkpoints, bars and scalars."""
    saving: list[Hook] = [] if self.checkpoints is None else [Checkpoints(self.checkpoints)]
    return [*first, *saving, *shown(self.progress, method)]


def train_network(problem: Problem, method: str, train: TrainConfig, params: Params,
                  key: jax.Array, hooks: RunHooks, base: MethodRecord | None = None,
                  name: str = "network", ledger: Ledger | None = None
                  ) -> tuple[Params, MethodRecord]:
  """End-to-end backprop of the whole network on device 0: the baseline, and recovery epochs.

  With `base`, the epochs extend an earlier method's record (recovery after segments), and
  `ledger` holds its transfers.
  """
  record = dataclasses.replace(base, method=method) if base else MethodRecord(method)
  ledger = ledger or Ledger(record.transfers)
  whole = whole_network(problem.specs)
  spec = loop_spec(problem, method, name, whole, Inputs.PIXELS, train=train)
  evaluate = make_evaluator(problem, spec.device, ledger)
  loop = segment_loop(problem, spec, {"x": problem.train_x, "y": problem.train_y}, params, key)
  record = drive([loop], record, hooks.of(method, evaluator_of(problem, evaluate)),
                 ledger=ledger)
  params = jax.device_get(loop.state.params)
  accuracy = evaluate([params])
  return params, dataclasses.replace(record, test_accuracy=accuracy,
                                     transfers=ledger.transfers)


class Trainer(Protocol):
  """How every method trains: (problem, progress, track_accuracy, checkpoints) -> (each
  segment's parameters on the host, in order; the method's record). With `track_accuracy`, the
  composed network is evaluated along the curve (outside the timing); with `checkpoints`, its
  loops save and resume there."""

  def __call__(self, problem: Problem, progress: Progress, track_accuracy: bool = True,
               checkpoints: checkpoint.Policy | None = None
               ) -> tuple[list[Params], MethodRecord]: ...


def train_conventional(problem: Problem, progress: Progress, track_accuracy: bool = True,
                       checkpoints: checkpoint.Policy | None = None
                       ) -> tuple[list[Params], MethodRecord]:
  """The baseline: the same network and optimizer, end to end on one device. Its parameters
  come back as one segment's, the whole network."""
  del track_accuracy  # its curve is always evaluated: it is the reference of every comparison
  whole = whole_network(problem.specs)
  params = init_params(problem, whole, problem.device_of(0))
  params, record = train_network(problem, "conventional", problem.config.train, params,
                                 problem.key(ORDER_STREAM, 0), RunHooks(progress, checkpoints))
  return [params], record


def train_sequential(problem: Problem, progress: Progress, track_accuracy: bool = True,
                     checkpoints: checkpoint.Policy | None = None
                     ) -> tuple[list[Params], MethodRecord]:
  """The paper's schedule: segment k learns from the trained segment k-1's outputs.

  The outputs over the training set are computed once on segment k-1's device and handed over
  once to segment k's: the only transfer between devices.
  """
  hooks = RunHooks(progress, checkpoints)
  record = MethodRecord("pnn-sequential")
  ledger = Ledger()
  evaluator = (make_evaluator(problem, problem.device_of(0), ledger)
               if track_accuracy else None)
  trained: list[Params] = []
  features: jax.Array | None = None
  for spec in problem.specs:
    if spec.is_first:
      x: Any = problem.train_x
    else:
      start = time.perf_counter()
      x = jax.block_until_ready(hand_over(features, problem.device_of(spec.index), ledger,
                                          f"cut {spec.input_cut} activations"))
      record = dataclasses.replace(record, wall_seconds=record.wall_seconds
                                   + time.perf_counter() - start, transfers=ledger.transfers)
    # Only the last segment completes a network to evaluate.
    evaluate = (None if evaluator is None or not spec.is_last
                else functools.partial(lambda done, params: evaluator(done + params), trained))
    params, features, record = sequential_segment(problem, spec, x, hooks, record, evaluate,
                                                  ledger)
    trained.append(params)
    if record.segments[-1].diverged:
      progress.message(f"{record.method}: later segments not trained, segment {spec.index} "
                       "diverged")
      return jax.device_get(trained), record
  params = jax.device_get(trained)
  accuracy = (evaluator or make_evaluator(problem, problem.device_of(0)))(params)
  return params, dataclasses.replace(record, test_accuracy=accuracy, transfers=ledger.transfers)


def sequential_segment(problem: Problem, spec: SegmentSpec, inputs_x: Any, hooks: RunHooks,
                       record: MethodRecord, evaluate: Evaluate | None = None,
                       ledger: Ledger | None = None
                       ) -> tuple[Params, jax.Array | None, MethodRecord]:
  """One segment of the sequential schedule, on its device: (params, its outputs or None, the
  method's record with the segment's loop added).

  `inputs_x` is the training set for the first segment, else the previous segment's outputs,
  already handed over by the caller (in one process, `hand_over`; across processes, a file).
  The outputs over the training set [N, width] are computed on this segment's device for the
  next segment, unless this is the last segment or it diverged (then None); their time counts
  as the method's training time. `evaluate([params])`, if given, is the accuracy after each
  epoch.
  """
  inputs = Inputs.PIXELS if spec.is_first else Inputs.FEATURES
  lspec = loop_spec(problem, record.method, f"segment {spec.index}", spec, inputs)
  loop = segment_loop(problem, lspec, {"x": inputs_x, "y": problem.train_y})
  first = () if evaluate is None else (evaluator_of(problem, evaluate),)
  record = drive([loop], record, hooks.of(record.method, *first), ledger=ledger)
  if spec.is_last or loop.diverged:
    return loop.state.params, None, record
  assert lspec.task is not None
  start = time.perf_counter()
  features = jax.block_until_ready(segment_outputs(lspec.task, loop)(loop.state.params,
                                                                    loop.data["x"]))
  record = dataclasses.replace(record, wall_seconds=record.wall_seconds
                               + time.perf_counter() - start)
  return loop.state.params, features, record


def parallel_loop(problem: Problem, segment: int) -> Loop:
  """Segment `segment`'s loop in the parallel schedule: pixels for the first segment, SIL
  vectors of the labels plus noise for the others; compiled on the segment's device."""
  spec = problem.specs[segment]
  inputs = Inputs.PIXELS if spec.is_first else Inputs.SIL
  data = {"x": problem.train_x, "y": problem.train_y} if spec.is_first else {"y": problem.train_y}
  return segment_loop(problem, loop_spec(problem, "pnn-parallel", f"segment {segment}", spec,
                                         inputs), data)


def train_parallel(problem: Problem, progress: Progress, track_accuracy: bool = True,
                   checkpoints: checkpoint.Policy | None = None
                   ) -> tuple[list[Params], MethodRecord]:
  """Every segment at once, from the SIL tables alone: nothing crosses devices while training.

  With `track_accuracy`, the composed network is evaluated between rounds (outside the timing).
  """
  record = MethodRecord("pnn-parallel")
  ledger = Ledger()
  loops = [parallel_loop(problem, k) for k in range(len(problem.specs))]
  evaluate = make_evaluator(problem, problem.device_of(0), ledger)
  first = (evaluator_of(problem, evaluate),) if track_accuracy else ()
  record = drive(loops, record, RunHooks(progress, checkpoints).of(record.method, *first),
                 ledger=ledger)
  params = jax.device_get([loop.state.params for loop in loops])
  accuracy = evaluate(params)
  return params, dataclasses.replace(record, test_accuracy=accuracy, transfers=ledger.transfers)


def pipelined_loop(problem: Problem, segment: int, start_round: int = 0) -> Loop:
  """Segment `segment`'s loop in the pipelined schedule, trained from round `start_round` on:
  the first on the dataset, a later one on a buffer of its input activations [N, *input shape]
  on its device, which `refresh.Feeds` keeps fresh (zeros until then)."""
  spec = problem.specs[segment]
  inputs = Inputs.PIXELS if spec.is_first else Inputs.FEATURES
  lspec = loop_spec(problem, "pnn-pipelined", f"segment {segment}", spec, inputs,
                    start_round=start_round)
  x = problem.train_x if spec.is_first else _zeros((len(problem.train_y), *spec.shapes[0]),
                                                   lspec.device)
  return segment_loop(problem, lspec, {"x": x, "y": problem.train_y})


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


def pipelined_start_rounds(problem: Problem) -> list[int]:
  """The round each segment of the pipelined schedule starts in (`start_rounds`)."""
  epochs = []
  for k in range(len(problem.specs)):
    train = problem.config.segment_train(k)
    steps_per_epoch = len(problem.train_y) // train.batch_size
    epochs.append(epochs_for(steps_per_epoch, train.epochs, train.steps))
  return start_rounds(epochs, problem.config.pipeline.delay_epochs)


def train_pipelined(problem: Problem, progress: Progress, track_accuracy: bool = True,
                    checkpoints: checkpoint.Policy | None = None
                    ) -> tuple[list[Params], MethodRecord]:
  """Every segment at once, segment k on the current outputs of segments 0..k-1: before every
  span of `pipeline.refresh_steps` steps, the rows it will read are recomputed and handed
  forward (`refresh.Feeds`). With `track_accuracy`, the composed network is evaluated between
  rounds (outside the timing). The ledger folds the hand-overs into one record per cut and pair
  of devices. The refresh functions compile on first use, within the first rounds' time (the
  chunks compile before, untimed).
  """
  record = MethodRecord("pnn-pipelined")
  ledger = Ledger()
  starts = pipelined_start_rounds(problem)
  loops = [pipelined_loop(problem, k, start) for k, start in enumerate(starts)]
  tasks = [loop.spec.task for loop in loops]
  assert all(task is not None for task in tasks)
  feeds = Feeds(loops, [t for t in tasks if t is not None], ledger,
                problem.config.pipeline.refresh_steps)
  evaluate = make_evaluator(problem, problem.device_of(0), ledger)
  first: tuple[Hook, ...] = (feeds, evaluator_of(problem, evaluate)) if track_accuracy else (
      feeds,)
  record = drive(loops, record, RunHooks(progress, checkpoints).of(record.method, *first),
                 ledger=ledger)
  transfers = ledger.transfers
  ledger.reset(summarize([t for t in transfers if t.kind == TRAINING])
               + [t for t in transfers if t.kind != TRAINING])
  params = jax.device_get([loop.state.params for loop in loops])
  accuracy = evaluate(params)
  return params, dataclasses.replace(record, test_accuracy=accuracy, transfers=ledger.transfers)


def train_recovery(problem: Problem, segment_params: list[Params], base: MethodRecord,
                   progress: Progress, checkpoints: checkpoint.Policy | None = None
                   ) -> tuple[list[Params], MethodRecord]:
  """Recovery epochs: end-to-end training of the composed network, with its own optimizer."""
  params, record = train_network(problem, f"{base.method}+recovery", problem.config.recovery,
                                 compose(segment_params), problem.key(RECOVERY_STREAM),
                                 RunHooks(progress, checkpoints), base=base, name="recovery")
  return [params], record


# The trainer of each schedule `synthpart.schedule.SCHEDULES` declares.
TRAINERS: dict[str, Trainer] = {"sequential": train_sequential, "parallel": train_parallel,
                                "pipelined": train_pipelined}
assert set(TRAINERS) == set(SCHEDULES.names), "every declared schedule has its trainer"
