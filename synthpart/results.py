"""What a run produced: per-loop and per-method results, and the results.json document.

results.json (schema version 1)::

  {
    "schema": 1,
    "command": "compare" | "train" | "sweep",
    "dataset": {"name", "source", "num_classes", "num_train", "num_test", "num_features",
                "input_shape", "input_dtype", "input_scale",
                "fingerprint" (sha256 of the data as loaded, `synthpart.data.fingerprint`)},
    "config": {... every setting, as in the TOML file ...},
    "devices": ["cpu:0", ...],
    "backend": "cpu" | "gpu" | "tpu",
    "prng_impl": "threefry2x32" | "rbg" | "unsafe_rbg" (the PRNG of every key the run drew),
    "versions": {"synthpart", "jax", "jaxlib", "flax", "optax", "numpy", "python"},
    "runs": [
      {
        "method": "conventional" | "pnn-sequential" | "pnn-parallel" | "pnn-pipelined"
                  | "pnn-sequential+recovery" | "pnn-parallel+recovery"
                  | "pnn-pipelined+recovery" | "pnn-parallel-nearest-sil" | "model-parallel",
        "status": "ok" | "diverged",
        "test_accuracy": fraction in [0, 1]; null where the method diverged,
        "wall_seconds": training time after compilation (evaluation excluded),
        "compile_seconds": total compile time of its loops,
        "evaluations", "eval_seconds", "eval_flops": the composed network's evaluations along
                      the curve and what they cost, apart from the training's time and FLOPs,
        "segments": [{"name", "layers": [start, stop), "objective", "device", "optimizer",
                      "learning_rate", "batch_size", "epochs", "steps_per_epoch",
                      "max_steps" (0: whole epochs), "loss_per_epoch": [...],
                      "epoch_seconds": [...], "compile_seconds",
                      "diverged", "divergence": why (null if it did not),
                      "memory": {"argument", "output", "alias", "temp",
                      "resident", "data", "peak", "peak_without_data"} (bytes),
                      "flops_per_step", "forward_flops"}],
        "curve": [{"epoch", "seconds", "examples": [per loop], "accuracy"?, "round"?,
                   "steps": [per loop]?, "partial": true?}],
        "transfers": [{"what", "source", "destination", "bytes",
                       "kind": "training" | "evaluation"}]
      }

A curve point follows every epoch round; with `eval.every_steps` or `eval.log_spaced`, points
inside a round follow too (`partial`: true, `epoch` the round in progress), and every point
records the steps each loop has trained.
    ]
  }

The file is strict JSON: a number that is not finite (a diverged loop's last loss) is null.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import platform
from typing import Any

import jax

from synthpart.errors import DataError
from synthpart.placement import Transfer
from synthpart.schema import check
from synthpart.train.problem import Problem, prng_impl

SCHEMA_VERSION = 1
METHODS = ("conventional", "pnn-sequential", "pnn-parallel", "pnn-sequential+recovery",
           "pnn-parallel+recovery", "model-parallel", "pnn-parallel-nearest-sil", "pnn-pipelined",
           "pnn-pipelined+recovery", "model-parallel-stepwise")


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
  divergence: str | None = None  # why the loop was stopped as diverged
  # XLA's buffer assignment of the compiled epoch (`synthpart.memory.MemoryUse.to_dict()`),
  # the training data on the device counted as `data`; None where not recorded.
  memory: dict[str, int] | None = None
  # Analytic FLOPs (`synthpart.flops`): one training step (the batch forward and backward plus
  # the optimizer update), and one example's forward pass through the loop's blocks.
  flops_per_step: int | None = None
  forward_flops: int | None = None
  # The loop's budget in steps (`train.steps`); 0: `epochs` whole epochs.
  max_steps: int = 0

  @property
  def steps(self) -> int:
    """Steps this loop has trained in the epochs it finished."""
    steps = len(self.loss_per_epoch) * self.steps_per_epoch
    return min(steps, self.max_steps) if self.max_steps else steps

  @property
  def examples(self) -> int:
    """Training examples this loop has seen so far."""
    return self.steps * self.batch_size


@dataclasses.dataclass
class MethodResult:
  """One method's outcome: test accuracy, time, every loop, and its accuracy along the way.

  `curve` holds one point per epoch round (and, evaluating within epochs, points inside rounds):
  cumulative training seconds, examples seen by each loop so far, and the test accuracy of the
  network composed at that point (where tracked). Evaluating costs `eval_seconds` and
  `eval_flops` over `evaluations`, counted apart from the training's seconds and FLOPs.
  """
  method: str
  test_accuracy: float = math.nan
  wall_seconds: float = 0.0
  compile_seconds: float = 0.0
  evaluations: int = 0
  eval_seconds: float = 0.0
  eval_flops: float = 0.0
  segments: list[SegmentResult] = dataclasses.field(default_factory=list)
  curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  transfers: list[Transfer] = dataclasses.field(default_factory=list)

  @property
  def diverged(self) -> bool:
    return any(s.diverged for s in self.segments)

  @property
  def status(self) -> str:
    """"diverged" where a loop diverged (its accuracy is no result), else "ok"."""
    return "diverged" if self.diverged else "ok"

  def to_dict(self) -> dict[str, Any]:
    """The results.json entry: with its status, and no accuracy where it diverged."""
    out = dataclasses.asdict(self)
    out["status"] = self.status
    if self.diverged:
      out["test_accuracy"] = math.nan
    return out


def divergence_reason(result: MethodResult) -> str:
  """Which loop of a method diverged and why, in a few words."""
  for s in result.segments:
    if s.diverged:
      return f"{s.name}: {s.divergence or 'diverged'}"
  return "no loop diverged"


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
                     runs: list[MethodResult], fingerprint: str | None = None) -> dict[str, Any]:
  """The results.json document of `runs` (see the module docstring); `fingerprint`, that of the
  data as loaded, goes into its dataset record where given."""
  dataset: dict[str, Any] = {
      "name": problem.dataset, "source": dataset_source, "num_classes": problem.num_classes,
      "num_train": len(problem.train_y), "num_test": len(problem.test_y),
      "num_features": math.prod(problem.train_x.shape[1:]),
      "input_shape": list(problem.train_x.shape[1:]), "input_dtype": str(problem.train_x.dtype),
      "input_scale": problem.input_scale}
  if fingerprint is not None:
    dataset["fingerprint"] = fingerprint
  return {
      "schema": SCHEMA_VERSION,
      "command": command,
      "dataset": dataset,
      "config": problem.config.to_dict(),
      "devices": [f"{d.platform}:{d.id}" for d in problem.devices],
      "backend": jax.default_backend(),
      "prng_impl": prng_impl(problem.config),
      "versions": versions(),
      "runs": [r.to_dict() for r in runs],
  }


def _number(value: float | None) -> float:
  return math.nan if value is None else value


def method_from_dict(d: dict[str, Any]) -> MethodResult:
  """A `MethodResult` back from its results.json entry (null numbers come back as NaN)."""
  segments = [SegmentResult(**{**s, "layers": tuple(s["layers"]),
                               "loss_per_epoch": [_number(v) for v in s["loss_per_epoch"]]})
              for s in d["segments"]]
  fields = {k: v for k, v in d.items() if k != "status"}
  return MethodResult(**{**fields, "test_accuracy": _number(d["test_accuracy"]),
                         "segments": segments,
                         "transfers": [Transfer(**t) for t in d.get("transfers", [])]})


# What every results.json holds (see the module docstring) and what reading it relies on, as a
# `synthpart.schema` schema; other keys are allowed.
_SEGMENT = {"name": "string", "layers": ["int"], "objective": "string", "device": "string",
            "optimizer": "string", "epochs": "int", "batch_size": "int", "steps_per_epoch": "int",
            "loss_per_epoch": ["number?"], "epoch_seconds?": ["number"],
            "learning_rate?": "number", "max_steps?": "int", "memory?": "object?",
            "flops_per_step?": "int?", "forward_flops?": "int?", "diverged?": "bool",
            "divergence?": "string?"}
_POINT = {"epoch": "int", "seconds": "number", "examples": ["int"], "accuracy?": "number",
          "steps?": ["int"], "partial?": "bool", "round?": "int"}
_TRANSFER = {"what": "string", "source": "string", "destination": "string", "bytes": "int",
             "kind": "string"}
_RUN = {"method": "string", "status?": "string", "test_accuracy": "number?",
        "wall_seconds": "number", "compile_seconds": "number", "evaluations?": "int",
        "eval_seconds?": "number", "eval_flops?": "number", "segments": [_SEGMENT],
        "curve": [_POINT], "transfers?": [_TRANSFER]}
RESULTS_SCHEMA = {
    "schema": "int", "command": "string",
    "dataset": {"name": "string", "num_classes": "int", "num_train": "int", "num_test": "int",
                "num_features": "int"},
    "config": {"seed": "int",
               "model": {"hidden": ["int"], "cuts": ["int"], "activation": "string"},
               "sil": {"kind": "string", "scale": "number", "loss": "string",
                       "noise": "number"},
               "train": {"optimizer": "string", "learning_rate": "number", "batch_size": "int",
                         "epochs": "int"},
               "recovery": {"epochs": "int", "learning_rate": "number"},
               "segments?": [{"epochs?": "int"}]},
    "devices?": ["string"], "backend?": "string",
    "runs": [_RUN],
}


def check_document(document: Any, source: str) -> None:
  """Raises `DataError` naming the first entry a results.json document lacks or holds as the
  wrong kind of value (`RESULTS_SCHEMA`): commands that read results fail on one line, not deep
  inside. Every run has at least one loop, each loop's `layers` is [start, stop), and its
  `memory` (where recorded) holds bytes."""
  check(document, RESULTS_SCHEMA, source, "results document")
  for i, run in enumerate(document["runs"]):
    if not run["segments"]:
      raise DataError(f"{source} is not a synthpart results document: runs[{i}].segments is "
                      "empty")
    for j, segment in enumerate(run["segments"]):
      where = f"{source} is not a synthpart results document: runs[{i}].segments[{j}]"
      if len(segment["layers"]) != 2:
        raise DataError(f"{where}.layers must be [start, stop), got {segment['layers']}")
      memory = segment.get("memory") or {}
      for key, value in memory.items():
        if isinstance(value, bool) or not isinstance(value, int):
          raise DataError(f"{where}.memory.{key} must be a whole number of bytes, got "
                          f"{value!r:.40}")


def format_table(runs: list[MethodResult]) -> str:
  """A plain-text table: method, test accuracy (DIVERGED where it diverged), wall and compile
  seconds, epochs per loop."""
  header = f"{'method':<26} {'test acc':>8} {'wall s':>8} {'compile s':>9}  epochs per loop"
  lines = [header, "-" * len(header)]
  for r in runs:
    epochs = " + ".join(str(len(s.loss_per_epoch)) for s in r.segments)
    accuracy = "DIVERGED" if r.diverged else f"{100 * r.test_accuracy:>7.2f}%"
    lines.append(f"{r.method:<26} {accuracy:>8} {r.wall_seconds:>8.1f} "
                 f"{r.compile_seconds:>9.1f}  {epochs}")
  return "\n".join(lines)
