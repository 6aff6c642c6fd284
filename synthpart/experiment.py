"""Experiments: train one configuration, or compare every method on it; results as documents.

results.json (schema version 1)::

  {
    "schema": 1,
    "command": "compare" | "train",
    "dataset": {"name", "source", "num_classes", "num_train", "num_test", "num_features"},
    "config": {... every setting, as in the TOML file ...},
    "devices": ["cpu:0", ...],
    "versions": {"synthpart", "jax", "jaxlib", "flax", "optax", "numpy", "python"},
    "runs": [
      {
        "method": "conventional" | "pnn-sequential" | "pnn-parallel"
                  | "pnn-sequential+recovery" | "pnn-parallel+recovery" | "model-parallel",
        "test_accuracy": fraction in [0, 1],
        "wall_seconds": training time after compilation (evaluation excluded),
        "compile_seconds": total compile time of its loops,
        "segments": [{"name", "layers": [start, stop), "objective", "device", "optimizer",
                      "learning_rate", "batch_size", "epochs", "steps_per_epoch",
                      "loss_per_epoch": [...], "epoch_seconds": [...], "compile_seconds",
                      "diverged"}],
        "curve": [{"epoch", "seconds", "examples": [per loop], "accuracy"?}],
        "transfers": [{"what", "source", "destination", "bytes"}]
      }
    ]
  }
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Callable

import jax

from synthpart import checkpoint
from synthpart.files import write_json_atomic  # noqa: F401  (part of this module's API)
from synthpart.progress import Progress
from synthpart.train.schedules import (MethodResult, Problem, SCHEDULES, train_conventional,
                                       train_recovery)

SCHEMA_VERSION = 1
METHODS = ("conventional", "pnn-sequential", "pnn-parallel", "pnn-sequential+recovery",
           "pnn-parallel+recovery", "model-parallel")


OnResult = Callable[[list[MethodResult]], None]


def _noop(runs: list[MethodResult]) -> None:
  del runs


def compare(problem: Problem, progress: Progress, with_model_parallel: bool = False,
            checkpoints: checkpoint.Policy | None = None,
            on_result: OnResult = _noop) -> list[MethodResult]:
  """Conventional training, then both schedules, each with and without recovery epochs.

  Recovery continues from the very segments the plain method trained, so each pair shows
  exactly what the recovery epochs add. `with_model_parallel` adds model-parallel backprop
  (segments on their devices, activations and gradients crossing every step) after conventional.
  `on_result` sees the finished runs after every method, so partial results can be kept.
  """
  runs = [train_conventional(problem, progress, checkpoints)[1]]
  on_result(runs)
  if with_model_parallel:
    from synthpart.train.model_parallel import train_model_parallel
    runs.append(train_model_parallel(problem, progress)[1])
    on_result(runs)
  for schedule in ("sequential", "parallel"):
    runs.extend(_partitioned(problem, schedule, progress, checkpoints, runs, on_result))
  return runs


def _partitioned(problem: Problem, schedule: str, progress: Progress,
                 checkpoints: checkpoint.Policy | None, done: list[MethodResult],
                 on_result: OnResult) -> list[MethodResult]:
  """One schedule, then its recovery epochs where configured."""
  params, result = SCHEDULES[schedule](problem, progress, checkpoints=checkpoints)
  runs = [result]
  on_result(done + runs)
  diverged = any(s.diverged for s in result.segments)
  if problem.config.recovery.epochs > 0 and not diverged:
    runs.append(train_recovery(problem, params, result, progress, checkpoints)[1])
    on_result(done + runs)
  return runs


def train_one(problem: Problem, progress: Progress,
              checkpoints: checkpoint.Policy | None = None,
              on_result: OnResult = _noop) -> list[MethodResult]:
  """One configuration: no cuts is conventional training; else its schedule (+ recovery)."""
  if len(problem.specs) == 1:
    runs = [train_conventional(problem, progress, checkpoints)[1]]
    on_result(runs)
    return runs
  return _partitioned(problem, problem.config.schedule, progress, checkpoints, [], on_result)


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for package in ("synthpart", "jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "not installed"
  return out


def results_document(command: str, problem: Problem, dataset_source: str,
                     runs: list[MethodResult]) -> dict[str, Any]:
  return {
      "schema": SCHEMA_VERSION,
      "command": command,
      "dataset": {"name": problem.dataset, "source": dataset_source,
                  "num_classes": problem.num_classes, "num_train": len(problem.train_y),
                  "num_test": len(problem.test_y), "num_features": problem.train_x.shape[1]},
      "config": problem.config.to_dict(),
      "devices": [f"{d.platform}:{d.id}" for d in problem.devices],
      "backend": jax.default_backend(),
      "versions": versions(),
      "runs": [r.to_dict() for r in runs],
  }


def format_table(runs: list[MethodResult]) -> str:
  """A plain-text table: method, test accuracy, wall and compile seconds, epochs per loop."""
  header = f"{'method':<26} {'test acc':>8} {'wall s':>8} {'compile s':>9}  epochs per loop"
  lines = [header, "-" * len(header)]
  for r in runs:
    epochs = " + ".join(str(len(s.loss_per_epoch)) for s in r.segments)
    lines.append(f"{r.method:<26} {100 * r.test_accuracy:>7.2f}% {r.wall_seconds:>8.1f} "
                 f"{r.compile_seconds:>9.1f}  {epochs}")
  return "\n".join(lines)
