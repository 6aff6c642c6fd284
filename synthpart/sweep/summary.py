"""A sweep's summary: mean ± std test accuracy and wall seconds per point and method over seeds.

It reads sweep.json and the runs' results.json files and nothing else, and writes summary.json
and summary.md beside them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthpart.files import write_json_atomic
from synthpart.results import METHODS
from synthpart.sweep.grid import value_label


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value; nan for none)."""
  if not values:
    return math.nan, math.nan
  array = np.asarray(values, float)
  return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _point_stats(out: Path, point: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
  """Per method: the test accuracies and wall seconds of a point's finished runs."""
  per_method: dict[str, dict[str, list[float]]] = {}
  for run_dir in point["runs"] + point["baselines"]:
    path = out / run_dir / "results.json"
    if not path.exists():
      continue
    for run in json.loads(path.read_text())["runs"]:
      stats = per_method.setdefault(run["method"], {"accuracy": [], "wall": []})
      if run.get("test_accuracy") is None:  # diverged: no accuracy to average
        continue
      stats["accuracy"].append(run["test_accuracy"])
      stats["wall"].append(run["wall_seconds"])
  return per_method


def summarize(out: str | Path) -> dict[str, Any]:
  """Reads sweep.json and every finished run; mean ± std per point and method over seeds."""
  out = Path(out)
  document = json.loads((out / "sweep.json").read_text())
  rows = []
  for point in document["points"]:
    per_method = _point_stats(out, point)
    for method in sorted(per_method, key=_method_order):
      stats = per_method[method]
      acc_mean, acc_std = mean_std(stats["accuracy"])
      wall_mean, wall_std = mean_std(stats["wall"])
      rows.append({"point": point["name"], "values": point["values"], "method": method,
                   "seeds": len(stats["accuracy"]), "accuracy_mean": acc_mean,
                   "accuracy_std": acc_std, "accuracies": stats["accuracy"],
                   "wall_seconds_mean": wall_mean, "wall_seconds_std": wall_std})
  _add_deltas(rows)
  return {"schema": 1, "axes": document["axes"], "seeds": document["seeds"],
          "methods": document["methods"], "rows": rows}


def _method_order(method: str) -> tuple[int, str]:
  return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def _add_deltas(rows: list[dict[str, Any]]) -> None:
  """Each row's mean accuracy minus its point's conventional mean, in percentage points."""
  conventional = {r["point"]: r["accuracy_mean"] for r in rows if r["method"] == "conventional"}
  for row in rows:
    base = conventional.get(row["point"])
    row["delta_points"] = (100 * (row["accuracy_mean"] - base) if base is not None
                           else None)


def write_summary(out: str | Path, summary: Mapping[str, Any]) -> None:
  """summary.json and summary.md beside the runs."""
  out = Path(out)
  write_json_atomic(out / "summary.json", summary)
  text = summary_markdown(summary)
  tmp = out / ".summary.md.tmp"
  tmp.write_text(text)
  tmp.replace(out / "summary.md")


def summary_markdown(summary: Mapping[str, Any]) -> str:
  """One Markdown table: axis values, method, accuracy mean ± std, Δ vs conventional, wall s."""
  keys = [axis["key"] for axis in summary["axes"]]
  header = [*keys, "method", "seeds", "test accuracy (%)", "Δ vs conventional (points)",
            "wall s"]
  lines = [f"Mean ± sample std over seeds {summary['seeds']}.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in summary["rows"]:
    delta = "" if row["delta_points"] is None else f"{row['delta_points']:+.2f}"
    cells = [value_label(row["values"][k]) for k in keys] + [
        row["method"], str(row["seeds"]),
        f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}", delta,
        f"{row['wall_seconds_mean']:.1f} ± {row['wall_seconds_std']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
