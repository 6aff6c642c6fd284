"""A budget search's outcome, read from its files: target, compute to target, reductions, fronts.

- The target is `fraction` x the reference runs' final validation accuracy, mean over seeds.
- A run's compute to target is where its curve crosses the target (`synthpart.curves.crossing`:
  linear in FLOPs between the evaluated points around it); its wall time, training seconds at
  the same place. Evaluation is in neither (runs record its cost apart).
- A budget (grid point) reaches the target when every seed's run does; its compute to target is
  the mean over seeds with a t-interval. Each method's best budget is the one with the least
  mean FLOPs (and, chosen apart, the one with the least mean seconds).
- The reduction against conventional training pairs the seeds: 1 - method / conventional, per
  seed, between the two best budgets; mean and t-interval over seeds.
- A method's accuracy-vs-FLOPs Pareto front is taken over the seed-mean curves of all its
  budgets.

Nothing here trains or measures; it reads budget.json, each sweep's sweep.json and the runs'
results.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthpart.budget.plan import CONVENTIONAL
from synthpart.budget.stats import CONFIDENCE, t_interval
from synthpart.curves import Document, accuracy_curves, crossing, pareto_front
from synthpart.sweep.grid import read_document

COSTS = ("flops", "seconds")
INTERVAL = (f"two-sided {CONFIDENCE:.0%} Student t-interval over seeds (mean ± "
            "t(n-1) · s / √n); reductions pair the seeds")


def run_curve(document: Document, method: str) -> list[dict[str, Any]]:
  """The curve a budget method is read on: conventional training's, or the schedule's run
  (with its recovery epochs where the run has them, which continue its curve)."""
  curves = accuracy_curves(document)
  if method == CONVENTIONAL:
    return curves.get(CONVENTIONAL, [])
  return curves.get(f"pnn-{method}+recovery") or curves.get(f"pnn-{method}", [])


def _run(document: Document, method: str) -> Document | None:
  name = CONVENTIONAL if method == CONVENTIONAL else f"pnn-{method}"
  runs = {r["method"]: r for r in document["runs"]}
  return runs.get(f"{name}+recovery") or runs.get(name)


def point_documents(out: Path, point: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The finished runs of a grid point: conventional grids run baselines, others points."""
  paths = [out / run / "results.json" for run in point.get("baselines") or point["runs"]]
  return [read_document(path, "JSON") for path in paths if path.exists()]


def _interval(values: Sequence[float]) -> dict[str, float]:
  mean, low, high = t_interval(values)
  return {"mean": mean, "low": low, "high": high}


def reference_target(out: Path, fraction: float) -> dict[str, Any]:
  """The reference runs' final accuracies and the target they set."""
  sweep = read_document(out / "sweep.json", "JSON")
  documents = [d for p in sweep["points"] for d in point_documents(out, p)]
  accuracies = [d["runs"][0]["test_accuracy"] for d in documents]
  mean = float(np.mean(accuracies)) if accuracies else math.nan
  return {"seeds": [d["config"]["seed"] for d in documents], "accuracies": accuracies,
          "accuracy": _interval(accuracies), "fraction": fraction, "target": fraction * mean,
          "epochs": [len(d["runs"][0]["segments"][0]["loss_per_epoch"]) for d in documents]}


def mean_curve(curves: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, float]]:
  """Seed-mean accuracy, FLOPs and seconds at each evaluated point the curves share (runs of
  one budget evaluate at the same steps)."""
  evaluated = [[p for p in c if "accuracy" in p] for c in curves]
  length = min((len(c) for c in evaluated), default=0)
  return [{key: float(np.mean([c[i][key] for c in evaluated]))
           for key in ("flops", "seconds", "accuracy")} for i in range(length)]


def point_summary(method: str, point: Mapping[str, Any], documents: Sequence[Document],
                  target: float) -> dict[str, Any]:
  """One budget: every seed's crossing, the mean cost to target with its interval (where every
  seed got there), final accuracy, total training and evaluation FLOPs, its seed-mean curve."""
  curves = [run_curve(d, method) for d in documents]
  runs = [_run(d, method) or {} for d in documents]
  crossings = [crossing(c, target) for c in curves]
  out: dict[str, Any] = {
      "name": point["name"], "values": point["values"],
      "seeds": [d["config"]["seed"] for d in documents], "crossings": crossings,
      "reached": len(documents) > 0 and all(c is not None for c in crossings),
      "final_accuracy": _interval([r.get("test_accuracy", math.nan) for r in runs]),
      "total_flops": float(np.mean([c[-1]["flops"] if c else 0.0 for c in curves] or [0.0])),
      "eval_flops": float(np.mean([r.get("eval_flops", 0.0) for r in runs] or [0.0])),
      "eval_seconds": float(np.mean([r.get("eval_seconds", 0.0) for r in runs] or [0.0])),
      "curve": mean_curve(curves)}
  for cost in COSTS:
    out[cost] = (_interval([c[cost] for c in crossings if c is not None]) if out["reached"]
                 else None)
  return out


def _best(points: Sequence[Mapping[str, Any]], cost: str) -> str | None:
  reached = [p for p in points if p[cost] is not None]
  return min(reached, key=lambda p: p[cost]["mean"])["name"] if reached else None


def method_summary(out: Path, method: str, target: float) -> dict[str, Any]:
  """Every budget of a method, its best by FLOPs and by seconds, and its Pareto front."""
  sweep = read_document(out / "sweep.json", "JSON")
  points = [point_summary(method, p, point_documents(out, p), target) for p in sweep["points"]]
  front = pareto_front([{**q, "point": p["name"]} for p in points for q in p["curve"]])
  return {"axes": sweep["axes"], "points": points, "front": front,
          "best": {cost: _best(points, cost) for cost in COSTS},
          "runs": sum(len(p["seeds"]) for p in points),
          "expected_runs": sum(len(p["runs"]) for p in sweep["points"])}


def _by_name(summary: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
  return next((p for p in summary["points"] if p["name"] == name), None)


def reduction(method: Mapping[str, Any], conventional: Mapping[str, Any],
              cost: str) -> dict[str, Any] | None:
  """1 - method / conventional in `cost` between the two best budgets: per seed (paired), their
  mean and t-interval, and the ratio of the means; None where either never reached the target."""
  mine = _by_name(method, method["best"][cost])
  theirs = _by_name(conventional, conventional["best"][cost])
  if mine is None or theirs is None:
    return None
  base = {s: c[cost] for s, c in zip(theirs["seeds"], theirs["crossings"], strict=True)}
  paired = {s: 1 - c[cost] / base[s]
            for s, c in zip(mine["seeds"], mine["crossings"], strict=True) if s in base}
  return {"per_seed": paired, **_interval(list(paired.values())),
          "of_means": 1 - mine[cost]["mean"] / theirs[cost]["mean"],
          "point": mine["name"], "conventional_point": theirs["name"]}


def analyze(out: str | Path) -> dict[str, Any]:
  """The whole analysis of a budget directory (see the module docstring)."""
  out = Path(out)
  plan = read_document(out / "budget.json", "JSON")
  reference = reference_target(out / plan["reference"], plan["fraction"])
  methods = {m: method_summary(out / m, m, reference["target"]) for m in plan["methods"]}
  conventional = methods[CONVENTIONAL]
  reductions = {m: {cost: reduction(s, conventional, cost) for cost in COSTS}
                for m, s in methods.items() if m != CONVENTIONAL}
  return {"plan": plan, "interval": INTERVAL, "reference": reference, "methods": methods,
          "reductions": reductions}
