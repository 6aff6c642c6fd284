"""Mean test accuracy and 95% t-intervals over seeds for finished sweeps, against conventional.

Reads sweep directories (their sweep.json and every run's results.json; trains nothing) and
prints one Markdown table: a row per (sweep, point, method), with the mean test accuracy over
seeds and its 95% Student-t interval, and the difference from conventional training paired by
seed (the same seed's baseline run) with its 95% interval.

    python3 experiments/intervals.py experiments/results/cnn_targets_fashion_mnist/*
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from synthpart.budget.stats import t_interval


def _accuracies(run: Path) -> dict[str, float]:
  """Each method's test accuracy (in points) in one run's results.json."""
  document = json.loads((run / "results.json").read_text())
  return {r["method"]: 100.0 * r["test_accuracy"] for r in document["runs"]}


def _cell(values: Sequence[float], signed: bool = False) -> str:
  """'mean [low, high]' over seeds, 'n/a' for the interval of a single seed."""
  mean, low, high = t_interval(list(values))
  sign = "+" if signed else ""
  if not math.isfinite(low):
    return f"{mean:{sign}.2f} (n/a, {len(values)} seed)"
  return f"{mean:{sign}.2f} [{low:{sign}.2f}, {high:{sign}.2f}]"


def rows(sweep_dir: Path) -> list[str]:
  """The table rows of one sweep directory: every point's methods, the baseline first."""
  plan = json.loads((sweep_dir / "sweep.json").read_text())
  out: list[str] = []
  baselines: dict[str, list[float]] = {}
  for point in plan["points"]:
    done = [(sweep_dir / r, sweep_dir / b) for r, b in
            zip(point["runs"], point["baselines"], strict=True)
            if (sweep_dir / r / "results.json").exists()
            and (sweep_dir / b / "results.json").exists()]
    if not done:
      continue
    base = [_accuracies(b)["conventional"] for _, b in done]
    label = ", ".join(f"{k}={json.dumps(v)}" for k, v in point["values"].items())
    key = json.dumps(point["baselines"])
    if key not in baselines:
      baselines[key] = base
      out.append(f"| {sweep_dir.name} | (any) | conventional | {_cell(base)} | | {len(base)} |")
    per_run = [_accuracies(r) for r, _ in done]
    for method in per_run[0]:
      if method == "conventional":
        continue
      values = [acc[method] for acc in per_run]
      diffs = [v - b for v, b in zip(values, base, strict=True)]
      out.append(f"| {sweep_dir.name} | {label} | {method} | {_cell(values)} | "
                 f"{_cell(diffs, signed=True)} | {len(values)} |")
  return out


def main(argv: Sequence[str]) -> int:
  if not argv:
    print("usage: python3 experiments/intervals.py SWEEP_DIR [SWEEP_DIR ...]", file=sys.stderr)
    return 2
  print("| sweep | point | method | test accuracy % (95% CI) | Δ vs conventional, paired "
        "(95% CI) | seeds |")
  print("|---|---|---|---|---|---|")
  for directory in argv:
    for row in rows(Path(directory)):
      print(row)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
