"""Experiments: train one configuration, or compare every method on it.

`compare` trains conventional, then each schedule with and without recovery epochs;
`train_one` trains the config's own schedule. Both hand every finished method to `on_result`,
so a caller can keep partial results (results.json is rewritten after every method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from synthpart import checkpoint
from synthpart.config import Config, check_backend_for
from synthpart.errors import ConfigError
from synthpart.progress import Progress
from synthpart.records import MethodRecord
from synthpart.schedule import SCHEDULES
from synthpart.train.evaluation import nearest_sil_reference
from synthpart.train.model_parallel import train_model_parallel
from synthpart.train.problem import Problem
from synthpart.train.schedules import TRAINERS, train_conventional, train_recovery

OnResult = Callable[[list[MethodRecord]], None]
# experiment(problem, progress, checkpoints=..., on_result=...) -> every method's record
Experiment = Callable[..., list[MethodRecord]]


def _noop(runs: list[MethodRecord]) -> None:
  del runs


def check_compare(config: Config) -> None:
  """Refuses, in one line and before anything trains, a config `compare` cannot train: no cut,
  or a backend one of its schedules cannot run on."""
  require_cuts(config, "compare")
  check_backend_for(config, SCHEDULES.names)


def compare(problem: Problem, progress: Progress, with_model_parallel: bool = False,
            checkpoints: checkpoint.Policy | None = None,
            on_result: OnResult = _noop) -> list[MethodRecord]:
  """Conventional training, then the sequential, parallel and pipelined schedules, each with
  and without recovery epochs (and the parallel schedule's nearest-SIL reference row).

  Recovery continues from the very segments the plain method trained, so each pair shows
  exactly what the recovery epochs add. `with_model_parallel` adds model-parallel backprop
  (segments on their devices, activations and gradients crossing every step inside one compiled
  program per epoch) after conventional.
  `on_result` sees the finished runs after every method, so partial results can be kept.
  """
  check_compare(problem.config)
  runs = [train_conventional(problem, progress, checkpoints=checkpoints)[1]]
  on_result(runs)
  if with_model_parallel:
    runs.append(train_model_parallel(problem, progress)[1])
    on_result(runs)
  return run_schedules(problem, progress, SCHEDULES.names, checkpoints, on_result, done=runs)


def require_cuts(config: Config, what: str) -> None:
  """Refuses, in one line, partitioned training (`what`) of a network without a cut: it would
  be conventional training under a partitioned method's name."""
  if config.model.num_segments < 2:
    raise ConfigError(f"{what} needs at least one cut (model.cuts, e.g. --cuts 2): with none "
                      "there is one segment, which is conventional training")


def run_schedules(problem: Problem, progress: Progress, schedules: Sequence[str],
                  checkpoints: checkpoint.Policy | None = None, on_result: OnResult = _noop,
                  done: Sequence[MethodRecord] = ()) -> list[MethodRecord]:
  """Each schedule, then its recovery epochs where configured; returns `done` + the new runs.

  The parallel schedule is followed by its reference row, "pnn-parallel-nearest-sil": its first
  segment alone, read out by the nearest SIL vector (`nearest_sil_reference`).
  """
  if schedules:
    require_cuts(problem.config, f"the {schedules[0]} schedule")
    check_backend_for(problem.config, schedules)
  runs = list(done)
  for schedule in schedules:
    params, result = TRAINERS[schedule](problem, progress, checkpoints=checkpoints)
    runs.append(result)
    if schedule == "parallel" and not result.diverged:
      runs.append(nearest_sil_reference(problem, params, result))
    on_result(runs)
    if problem.config.recovery.epochs > 0 and not result.diverged:
      runs.append(train_recovery(problem, params, result, progress, checkpoints)[1])
      on_result(runs)
  return runs


def train_one(problem: Problem, progress: Progress,
              checkpoints: checkpoint.Policy | None = None,
              on_result: OnResult = _noop) -> list[MethodRecord]:
  """One configuration: no cuts is conventional training; else its schedule (+ recovery)."""
  if len(problem.specs) == 1:
    runs = [train_conventional(problem, progress, checkpoints=checkpoints)[1]]
    on_result(runs)
    return runs
  return run_schedules(problem, progress, (problem.config.schedule,), checkpoints, on_result)
