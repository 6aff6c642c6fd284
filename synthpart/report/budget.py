"""report.md of a budget search (`synthpart budget`): the table of compute to target and the
accuracy-vs-cost figures with every method's Pareto front and the target line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthpart.budget.analysis import analyze
from synthpart.budget.plan import CONVENTIONAL
from synthpart.budget.summary import budget_markdown
from synthpart.curves import pareto_front
from synthpart.report.figures import METHOD_STYLE, new_figure, save
from synthpart.report.sections import image, notes_section

if TYPE_CHECKING:
  from matplotlib.figure import Figure

# (cost key, scale, axis label) of each figure.
COST_AXES = {"flops": (1e9, "training compute (GFLOP, evaluation not included)"),
             "seconds": (1.0, "training wall time (s, compilation and evaluation excluded)")}
COST_NAMES = {"flops": "training compute", "seconds": "training wall time"}


def _style(method: str) -> dict[str, Any]:
  """The run report's colour for a method ("sequential" draws as "pnn-sequential")."""
  key = method if method == CONVENTIONAL else f"pnn-{method}"
  color = METHOD_STYLE[key][0] if key in METHOD_STYLE else "tab:gray"
  return {"color": color}


def plot_fronts(analysis: Mapping[str, Any], cost: str, title: str) -> Figure:
  """Accuracy against cost: every budget's seed-mean curve (thin), each method's Pareto front
  over them (bold steps), the target (dashed) and each method's crossing at its best budget."""
  scale, label = COST_AXES[cost]
  fig, ax = new_figure(width=7.5, height=4.8)
  for method, summary in analysis["methods"].items():
    style = _style(method)
    points = []
    for point in summary["points"]:
      curve = point["curve"]
      points += curve
      ax.plot([p[cost] / scale for p in curve], [100 * p["accuracy"] for p in curve],
              linewidth=0.6, alpha=0.35, **style)
    front = pareto_front(points, cost)
    ax.step([p[cost] / scale for p in front], [100 * p["accuracy"] for p in front],
            where="post", linewidth=2, label=f"{method} (front over {len(summary['points'])} "
            "budgets)", **style)
    best = next((p for p in summary["points"] if p["name"] == summary["best"][cost]), None)
    if best is not None:
      ax.errorbar([best[cost]["mean"] / scale], [100 * analysis["reference"]["target"]],
                  xerr=[[(best[cost]["mean"] - best[cost]["low"]) / scale],
                        [(best[cost]["high"] - best[cost]["mean"]) / scale]],
                  marker="o", capsize=4, **style)
  ax.axhline(100 * analysis["reference"]["target"], color="grey", linestyle="--",
             label=f"target {100 * analysis['reference']['target']:.2f}%")
  ax.set_xscale("log")
  ax.set_xlabel(label)
  ax.set_ylabel("validation accuracy (%), mean over seeds")
  ax.set_ylim(bottom=max(0.0, 100 * analysis["reference"]["target"] - 40), top=100)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="lower right")
  return fig


def budget_report(directory: Path, out: Path) -> str:
  """The report of a budget directory: its tables and figures, recomputed from the runs."""
  analysis = analyze(directory)
  plan = analysis["plan"]
  notes = [f"{m}: {s['runs']} of {s['expected_runs']} runs finished; rerun the budget command "
           "to complete it." for m, s in analysis["methods"].items()
           if s["runs"] < s["expected_runs"]]
  lines = [f"# synthpart budget report: {directory.name}", "",
           (f"Budget `{plan.get('source', '')}`: methods {', '.join(plan['methods'])}, "
            f"{plan['grid_size']} budgets each, seeds {plan['seeds']}. Each run's compute to "
            "the target is read where its curve of validation accuracy crosses it, linear in "
            "FLOPs between the evaluations around it; evaluating costs apart and is not "
            "counted. A budget reaches the target when every seed does; a method's best "
            "budget is the one with the least mean cost."), "",
           budget_markdown(analysis), "", "## Figures", ""]
  for cost, name in (("flops", "accuracy_vs_flops_fronts"), ("seconds", "accuracy_vs_time_fronts")):
    fig = plot_fronts(analysis, cost,
                      f"Validation accuracy vs {COST_NAMES[cost]} — {directory.name}")
    lines.append(image(out, save(fig, out / "figures" / f"{name}.png"),
                       f"Validation accuracy against {COST_AXES[cost][1]}: every budget's "
                       "seed-mean curve (thin), each method's Pareto front over them (bold), "
                       "the target (dashed), and each method's best budget at the target with "
                       "its 95% t-interval over seeds."))
  lines += notes_section(notes)
  return "\n".join(lines)
