"""What a run produced: per-loop and per-method results, and the results.json document.

results.json (schema version 1)::

  {
    "schema": 1,
    "command": "compare" | "train" | "sweep",
    "dataset": {"name", "source", "num_classes", "num_train", "num_test", "num_features",
                "input_shape", "input_dtype", "input_scale"},
    "config": {... every setting, as in the TOML file ...},
    "devices": ["cpu:0", ...],
    "backend": "cpu" | "gpu" | "tpu",
    "prng_impl": "threefry2x32" | "rbg" | "unsafe_rbg" (the PRNG of every key the run drew),
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
                      "diverged", "memory": {"argument", "output", "alias", "temp",
                      "resident", "data", "peak", "peak_without_data"} (bytes),
                      "flops_per_step", "forward_flops"}],
        "curve": [{"epoch", "seconds", "examples": [per loop], "accuracy"?}],
        "transfers": [{"what", "source", "destination", "bytes"}]
      }
    ]
  }
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import platform
from typing import Any

import jax
import numpy as np

from synthpart.placement import Transfer
from synthpart.train.problem import Problem, prng_impl

SCHEMA_VERSION = 1
METHODS = ("conventional", "pnn-sequential", "pnn-parallel", "pnn-sequential+recovery",
           "pnn-parallel+recovery", "model-parallel")


@dataclasses.dataclass
class SegmentResult:
  """What one optax loop did: where, how long, and its loss after every epoch."""
  name: str
  layers: tuple[int, int]  # [start, stop) of the network's dense layers
  objective: str
  device: str
  optimizer: str
  learning_rate: float
  batch_size: int
  epochs: int
  steps_per_epoch: int
  loss_per_epoch: list[float] = dataclasses.field(default_factory=list)
  epoch_seconds: list[float] = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  diverged: bool = False
  # XLA's buffer assignment of the compiled epoch (`synthpart.memory.MemoryUse.to_dict()`),
  # the training data on the device counted as `data`; None where not recorded.
  memory: dict[str, int] | None = None
  # Analytic FLOPs (`synthpart.flops`): one training step (the batch forward and backward plus
  # the optimizer update), and one example's forward pass through the loop's blocks.
  flops_per_step: int | None = None
  forward_flops: int | None = None

  @property
  def examples(self) -> int:
    """Training examples this loop has seen so far."""
    return len(self.loss_per_epoch) * self.steps_per_epoch * self.batch_size


@dataclasses.dataclass
class MethodResult:
  """One method's outcome: test accuracy, time, every loop, and its accuracy along the way.

  `curve` holds one point per epoch round: cumulative training seconds, examples seen by each
  loop so far, and the test accuracy of the network composed at that point (where tracked).
  """
  method: str
  test_accuracy: float = math.nan
  wall_seconds: float = 0.0
  compile_seconds: float = 0.0
  segments: list[SegmentResult] = dataclasses.field(default_factory=list)
  curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  transfers: list[Transfer] = dataclasses.field(default_factory=list)

  @property
  def diverged(self) -> bool:
    return any(s.diverged for s in self.segments)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def versions() -> dict[str, str]:
  """The versions of Python and of the packages a result depends on."""
  out = {"python": platform.python_version()}
  for package in ("synthpart", "jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "not installed"
  return out


def results_document(command: str, problem: Problem, dataset_source: str,
                     runs: list[MethodResult]) -> dict[str, Any]:
  """The results.json document of `runs` (see the module docstring)."""
  return {
      "schema": SCHEMA_VERSION,
      "command": command,
      "dataset": {"name": problem.dataset, "source": dataset_source,
                  "num_classes": problem.num_classes, "num_train": len(problem.train_y),
                  "num_test": len(problem.test_y),
                  "num_features": int(np.prod(problem.train_x.shape[1:])),
                  "input_shape": list(problem.train_x.shape[1:]),
                  "input_dtype": str(problem.train_x.dtype), "input_scale": problem.input_scale},
      "config": problem.config.to_dict(),
      "devices": [f"{d.platform}:{d.id}" for d in problem.devices],
      "backend": jax.default_backend(),
      "prng_impl": prng_impl(problem.config),
      "versions": versions(),
      "runs": [r.to_dict() for r in runs],
  }


def method_from_dict(d: dict[str, Any]) -> MethodResult:
  """A `MethodResult` back from its results.json entry."""
  segments = [SegmentResult(**{**s, "layers": tuple(s["layers"])}) for s in d["segments"]]
  return MethodResult(**{**d, "segments": segments,
                         "transfers": [Transfer(**t) for t in d["transfers"]]})


def format_table(runs: list[MethodResult]) -> str:
  """A plain-text table: method, test accuracy, wall and compile seconds, epochs per loop."""
  header = f"{'method':<26} {'test acc':>8} {'wall s':>8} {'compile s':>9}  epochs per loop"
  lines = [header, "-" * len(header)]
  for r in runs:
    epochs = " + ".join(str(len(s.loss_per_epoch)) for s in r.segments)
    lines.append(f"{r.method:<26} {100 * r.test_accuracy:>7.2f}% {r.wall_seconds:>8.1f} "
                 f"{r.compile_seconds:>9.1f}  {epochs}")
  return "\n".join(lines)
