"""What a report reads: results.json of runs, sweep.json of sweeps, budget.json of budget
searches, and what they recorded.

`check_directory` checks every file a report of a directory reads before it reads any
(`synthpart.schema`), so that a damaged or hand-edited file is one line naming it and the entry
that is wrong.

Nothing here trains, compiles or measures: memory is what each loop recorded when it compiled
(`segments[i]["memory"]`), bytes moved are the runs' transfer ledgers, FLOPs are the analytic
counts of `synthpart.curves`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from synthpart.config import flatten
from synthpart.curves import Document
from synthpart.errors import DataError
from synthpart.results import check_document
from synthpart.schema import check, read_json
from synthpart.sweep.grid import read_document

# What a report reads of sweep.json (`synthpart.sweep.grid.sweep_document`) and of budget.json
# (`synthpart.budget`), as `synthpart.schema` schemas.
SWEEP_SCHEMA = {"schema": "int", "source?": "string",
                "axes": [{"key": "string", "values": ["any"]}], "seeds": ["int"],
                "methods": "any", "base?": "object",
                "points": [{"name": "string", "values": "object", "runs": ["string"],
                            "baselines": ["string"]}]}
BUDGET_SCHEMA = {"schema": "int", "source?": "string", "fraction": "number", "seeds": ["int"],
                 "grid_size": "int", "reference": "string", "methods": ["string"]}


def check_directory(directory: Path) -> None:
  """Checks every file the report of `directory` reads: budget.json, its sweeps and their runs;
  or sweep.json and its runs; or results.json. Raises `DataError` naming the first file that is
  unreadable or not what synthpart writes, and what is wrong in it."""
  if (directory / "budget.json").exists():
    path = directory / "budget.json"
    plan = read_json(path, "budget file")
    check(plan, BUDGET_SCHEMA, str(path), "budget document")
    for key, name in [("reference", plan["reference"]),
                      *((f"methods[{i}]", m) for i, m in enumerate(plan["methods"]))]:
      _inside(path, "budget document", key, name)
    if "conventional" not in plan["methods"]:
      raise DataError(f"{path} is not a synthpart budget document: methods must include "
                      f"conventional, got {plan['methods']}")
    for name in [plan["reference"], *plan["methods"]]:
      documents = _check_sweep(directory / name)
      if name == plan["reference"]:
        for source, document in documents:
          if not document["runs"]:
            raise DataError(f"{source} is not a synthpart results document: a reference run "
                            "must hold a run, and runs is empty")
  elif (directory / "sweep.json").exists():
    _check_sweep(directory)
  elif (directory / "results.json").exists():
    _check_results(directory / "results.json")


def _check_results(path: Path) -> Any:
  document = read_json(path, "results file")
  check_document(document, str(path))
  return document


def _inside(path: Path, what: str, key: str, name: str) -> None:
  """Refuses a path named in a document that is not a relative path inside its directory."""
  parts = PurePosixPath(name).parts
  if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
    raise DataError(f"{path} is not a synthpart {what}: {key} must name a directory inside "
                    f"{path.parent}, got {name!r:.60}")


def _check_sweep(directory: Path) -> list[tuple[str, Any]]:
  """Checks sweep.json in `directory` and the results of its finished runs; returns those
  (path, document) pairs."""
  path = directory / "sweep.json"
  sweep = read_json(path, "sweep file")
  check(sweep, SWEEP_SCHEMA, str(path), "sweep document")
  keys = [axis["key"] for axis in sweep["axes"]]
  documents = []
  for i, point in enumerate(sweep["points"]):
    missing = [key for key in keys if key not in point["values"]]
    if missing:
      raise DataError(f"{path} is not a synthpart sweep document: points[{i}].values lacks "
                      f"the axis {missing[0]}")
    for field in ("runs", "baselines"):
      for j, run in enumerate(point[field]):
        _inside(path, "sweep document", f"points[{i}].{field}[{j}]", run)
        if (directory / run / "results.json").exists():
          results = directory / run / "results.json"
          documents.append((str(results), _check_results(results)))
  return documents


# Per device name ("cpu:0"): {"peak": bytes, "peak_without_data": bytes}.
DevicePeaks = dict[str, dict[str, int]]
PEAK_KEYS = ("peak", "peak_without_data")


def group_runs(documents: Iterable[Document]) -> dict[str, list[Document]]:
  """Every run of the documents, by method, in the order they appear."""
  out: dict[str, list[Document]] = {}
  for document in documents:
    for run in document["runs"]:
      out.setdefault(run["method"], []).append(run)
  return out


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], np.ndarray]:
  """Mean accuracy at the rounds every curve has (they share rounds when settings match)."""
  common = sorted(set.intersection(*({x for x, _ in c} for c in curves)))
  values = [dict(c) for c in curves]
  return common, np.array([np.mean([v[x] for v in values]) for x in common])


def run_peaks(run: Document) -> DevicePeaks | None:
  """A run's recorded memory per device: the largest peak of the loops that ran there.

  None when a loop of the run has no recorded memory (older results.json files, or loops that
  do not record it), so that no device's peak is understated.
  """
  peaks: DevicePeaks = {}
  for loop in run["segments"]:
    memory = loop.get("memory")
    if not memory:
      return None
    entry = peaks.setdefault(loop["device"], dict.fromkeys(PEAK_KEYS, 0))
    for key in PEAK_KEYS:
      entry[key] = max(entry[key], int(memory[key]))
  return peaks or None


def memory_per_device(documents: Sequence[Document]) -> tuple[dict[str, DevicePeaks], list[str]]:
  """Per method, the recorded peak of each device (the largest over the documents' runs of it),
  and the methods left out because a run of theirs recorded no memory."""
  memory: dict[str, DevicePeaks] = {}
  missing: list[str] = []
  for method, runs in group_runs(documents).items():
    peaks = [run_peaks(run) for run in runs]
    if any(p is None for p in peaks):
      missing.append(method)
      continue
    merged: DevicePeaks = {}
    for run_memory in peaks:
      for device, entry in (run_memory or {}).items():
        into = merged.setdefault(device, dict.fromkeys(PEAK_KEYS, 0))
        for key in PEAK_KEYS:
          into[key] = max(into[key], entry[key])
    memory[method] = merged
  return memory, missing


def point_documents(out: Path, point: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The results documents of a sweep point's finished runs."""
  paths = [out / run_dir / "results.json" for run_dir in point["runs"]]
  return [read_document(path, "JSON") for path in paths if path.exists()]


def baseline_documents(out: Path, point: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The results documents of a sweep point's finished conventional baselines."""
  paths = [out / run_dir / "results.json" for run_dir in point.get("baselines", [])]
  return [read_document(path, "JSON") for path in paths if path.exists()]


def runs_outside_grid(directory: Path, sweep: Mapping[str, Any]) -> list[str]:
  """Run directories under a sweep directory that belong to none of its points."""
  known = {r for p in sweep["points"] for r in p["runs"] + p.get("baselines", [])}
  found = sorted(path.parent.relative_to(directory).as_posix()
                 for path in directory.glob("*/seed-*/results.json"))
  return [f for f in found if f not in known]


def reference_point(sweep: Mapping[str, Any], directory: Path) -> Mapping[str, Any]:
  """The point whose axis values equal the base settings' where possible, else the first one
  with results: the one setting the cost figures show."""
  base = flatten(sweep.get("base", {}))
  done = [p for p in sweep["points"] if point_documents(directory, p)]
  for point in done:
    if all(_same(base.get(k), v) for k, v in point["values"].items()):
      return point
  return done[0]


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return math.isclose(a, b)
  return bool(a == b)
