"""The results.json document: the records of a run's methods (`synthpart.records`) and what
surrounds them (`RunDescription`), its schema and its check.

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
                      "flops_per_step", "forward_flops", "backend": "sharding" | "pmap"}],
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
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from synthpart.errors import DataError
from synthpart.records import MethodRecord, divergence_reason
from synthpart.schedule import METHODS
from synthpart.schema import check

__all__ = ["METHODS", "SCHEMA_VERSION", "RunDescription", "check_document", "divergence_reason",
           "format_table", "method_from_dict", "results_document", "versions"]

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RunDescription:
  """What a results document says of the run around its methods: the dataset record (its name,
  source, sizes, input shape, dtype and scale, and fingerprint), the devices, the backend and
  the PRNG implementation."""
  dataset: Mapping[str, Any]
  devices: tuple[str, ...]
  backend: str
  prng_impl: str


def versions() -> dict[str, str]:
  """The versions of Python and of the packages a result depends on."""
  out = {"python": platform.python_version()}
  for package in ("synthpart", "jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "not installed"
  return out


def results_document(command: str, run: RunDescription, config: Mapping[str, Any],
                     records: Sequence[MethodRecord]) -> dict[str, Any]:
  """The results.json document of `records` (see the module docstring), for the settings
  `config` (a `Config.to_dict()`)."""
  return {
      "schema": SCHEMA_VERSION,
      "command": command,
      "dataset": dict(run.dataset),
      "config": dict(config),
      "devices": list(run.devices),
      "backend": run.backend,
      "prng_impl": run.prng_impl,
      "versions": versions(),
      "runs": [r.to_dict() for r in records],
  }


def method_from_dict(d: Mapping[str, Any]) -> MethodRecord:
  """A `MethodRecord` back from its results.json entry (null numbers come back as NaN)."""
  return MethodRecord.from_dict(d)


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


def format_table(runs: Sequence[MethodRecord]) -> str:
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
