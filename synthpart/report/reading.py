"""What a report reads: results.json of runs, sweep.json of sweeps, and what they recorded.

Nothing here trains, compiles or measures: memory is what each loop recorded when it compiled
(`segments[i]["memory"]`), bytes moved are the runs' transfer ledgers, FLOPs are the analytic
counts of `synthpart.curves`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthpart.config import flatten
from synthpart.curves import Document
from synthpart.sweep.grid import read_document

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
