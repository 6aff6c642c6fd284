"""A budget analysis as Markdown: the headline table, then every budget of every method."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from synthpart.budget.plan import CONVENTIONAL
from synthpart.sweep.grid import value_label

# Units of each cost in the tables: (divisor, label).
UNITS = {"flops": (1e9, "GFLOP"), "seconds": (1.0, "s")}


def _ci(interval: Mapping[str, float] | None, scale: float = 1.0, digits: int = 1,
        percent: bool = False) -> str:
  """mean [low, high], scaled, or "—"."""
  if interval is None or math.isnan(interval["mean"]):
    return "—"
  factor = 100.0 if percent else 1.0 / scale
  unit = "%" if percent else ""
  values = [interval[k] * factor for k in ("mean", "low", "high")]
  if not all(math.isfinite(v) for v in values[1:]):
    return f"{values[0]:.{digits}f}{unit} (one seed)"
  return f"{values[0]:.{digits}f}{unit} [{values[1]:.{digits}f}, {values[2]:.{digits}f}]"


def _values(point: Mapping[str, Any] | None) -> str:
  if point is None:
    return "never reached"
  return ", ".join(f"{k}={value_label(v)}" for k, v in point["values"].items()) or "base"


def _point(summary: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
  return next((p for p in summary["points"] if p["name"] == name), None)


def headline_rows(analysis: Mapping[str, Any], cost: str) -> list[str]:
  """The table of one cost: per method, its best budget, cost to target, reduction."""
  scale, unit = UNITS[cost]
  lines = [f"| method | best budget | {unit} to target, mean [95% CI] | reduction vs "
           "conventional, mean [95% CI] | reduction of the means | validation accuracy at the "
           "end | budgets reaching the target |", "|---|---|---|---|---|---|---|"]
  for method, summary in analysis["methods"].items():
    best = _point(summary, summary["best"][cost])
    red = (None if method == CONVENTIONAL
           else analysis["reductions"][method][cost])
    reached = sum(p["reached"] for p in summary["points"])
    of_means = "—" if red is None else f"{100 * red['of_means']:.1f}%"
    final = _ci(best["final_accuracy"], percent=True, digits=2) if best else "—"
    lines.append(
        f"| {method} | {_values(best)} | {_ci(best[cost] if best else None, scale)} | "
        f"{'—' if red is None else _ci(red, percent=True)} | {of_means} | {final} | "
        f"{reached} of {len(summary['points'])} |")
  return lines


def budgets_rows(method: str, summary: Mapping[str, Any]) -> list[str]:
  """Every budget of one method: seeds at the target, cost to target, final accuracy."""
  lines = [f"**{method}** ({summary['runs']} of {summary['expected_runs']} runs)", "",
           "| budget | seeds at target | GFLOP to target [95% CI] | s to target [95% CI] | "
           "final accuracy | training GFLOP | evaluation GFLOP (apart) |",
           "|---|---|---|---|---|---|---|"]
  for p in summary["points"]:
    at = sum(c is not None for c in p["crossings"])
    lines.append(f"| {_values(p)} | {at} of {len(p['seeds'])} | {_ci(p['flops'], 1e9)} | "
                 f"{_ci(p['seconds'])} | {_ci(p['final_accuracy'], percent=True, digits=2)} | "
                 f"{p['total_flops'] / 1e9:,.1f} | {p['eval_flops'] / 1e9:,.1f} |")
  return lines + [""]


def budget_markdown(analysis: Mapping[str, Any]) -> str:
  """The tables of a budget analysis, with the target and how intervals are computed."""
  ref = analysis["reference"]
  lines = [
      (f"Target: {ref['fraction']:.0%} of the reference conventional runs' final validation "
       f"accuracy {_ci(ref['accuracy'], percent=True, digits=2)} (seeds {ref['seeds']}, "
       f"epochs {ref['epochs']}) = **{100 * ref['target']:.2f}%**."),
      f"Intervals: {analysis['interval']}.", "",
      "### Compute to target (FLOPs)", "", *headline_rows(analysis, "flops"), "",
      "### Wall time to target (training seconds; best budget chosen apart)", "",
      *headline_rows(analysis, "seconds"), "", "### Every budget", ""]
  for method, summary in analysis["methods"].items():
    lines += budgets_rows(method, summary)
  return "\n".join(lines)
