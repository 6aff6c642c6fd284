"""report.md of a run (its results.json) or of a sweep (sweep.json and its points' runs)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthpart.curves import (
  accuracy_curves,
  format_time_to_accuracy,
  ledger_bytes,
  time_to_accuracy,
)
from synthpart.errors import ConfigError
from synthpart.files import write_text_atomic
from synthpart.report.budget import budget_report
from synthpart.report.figures import (
  axis_label,
  plot_accuracy_per_epoch,
  plot_axis,
  plot_sweep_curves,
  save,
)
from synthpart.report.reading import (
  baseline_documents,
  check_directory,
  point_documents,
  reference_point,
  runs_outside_grid,
)
from synthpart.report.sections import (
  cost_figures,
  image,
  notes_section,
  setting_title,
  settings_line,
)
from synthpart.rundir import claim
from synthpart.sweep.grid import read_document, value_label
from synthpart.sweep.summary import summarize, summary_markdown

MATCH_POINTS = 0.5  # "matches conventional": at most this many points below its mean accuracy


def write_report(directory: str | Path, out: str | Path | None = None,
                 memory: bool = True) -> Path:
  """Writes report.md (and figures/) for a run or sweep directory; returns report.md's path.

  `memory`: draw the memory figure from the memory the runs recorded. Every file the report
  reads is checked first (`check_directory`): a damaged one is a `DataError` naming it. An `out`
  other than `directory` is claimed (`synthpart.rundir.claim`, kind "report"): locked while the
  report is written, and refused where another command wrote it; an `out` that cannot be
  written is a `ConfigError` naming it.
  """
  directory = Path(directory)
  if not directory.is_dir():
    raise ConfigError(f"{directory} is not a directory")
  out = Path(out) if out is not None else directory
  check_directory(directory)
  try:
    if os.path.realpath(out) == os.path.realpath(directory):
      return _write_report(directory, out, memory)  # the run's (or sweep's) own report
    with claim(out, "report"):  # elsewhere: no other command's directory, one report at a time
      return _write_report(directory, out, memory)
  except OSError as e:
    raise ConfigError(f"--out {e.filename or out} cannot be written: "
                      f"{e.strerror or e}") from None


def _write_report(directory: Path, out: Path, memory: bool) -> Path:
  if (directory / "budget.json").exists():
    text = budget_report(directory, out)
  elif (directory / "sweep.json").exists():
    text = sweep_report(directory, out, memory)
  elif (directory / "results.json").exists():
    text = run_report(directory, out, memory)
  else:
    raise ConfigError(f"{directory} holds neither results.json (a run), sweep.json (a sweep) "
                      "nor budget.json (a budget search)")
  out.mkdir(parents=True, exist_ok=True)
  path = out / "report.md"
  write_text_atomic(path, text)
  return path


def _runs_table(document: Mapping[str, Any]) -> list[str]:
  """Accuracy, Δ vs conventional, time, compute and bytes moved of every run."""
  curves = accuracy_curves(document)
  conventional = next((r for r in document["runs"] if r["method"] == "conventional"), None)
  lines = [("| method | test accuracy (%) | Δ vs conventional (points) | training wall s | "
            "compile s | training GFLOP | MiB moved between devices |"),
           "|---|---|---|---|---|---|---|"]
  base = None if conventional is None else conventional.get("test_accuracy")
  for run in document["runs"]:
    accuracy = run.get("test_accuracy")
    shown = "DIVERGED" if accuracy is None else f"{100 * accuracy:.2f}"
    delta = "" if accuracy is None or base is None else f"{100 * (accuracy - base):+.2f}"
    curve = curves[run["method"]]
    total = curve[-1]["flops"] / 1e9 if curve else 0.0
    moved = ledger_bytes(run.get("transfers", [])) / 2**20
    lines.append(f"| {run['method']} | {shown} | {delta} | "
                 f"{run['wall_seconds']:.1f} | {run['compile_seconds']:.1f} | "
                 f"{f'{total:,.1f}' if total >= 10 else f'{total:.3g}'} | "
                 f"{moved:,.1f} |")
  return lines + [""]


def run_report(directory: Path, out: Path, memory: bool = True) -> str:
  """The report of one results.json."""
  document = read_document(directory / "results.json", "JSON")
  notes: list[str] = []
  lines = [f"# synthpart report: {directory.name}", "",
           f"`synthpart {document['command']}` — {settings_line(document)}.", ""]
  lines += _runs_table(document)
  if any(r["method"] == "conventional" for r in document["runs"]):
    lines += ["## Compute and time to 90% of conventional accuracy, at curve points", "",
              ("Read at each curve's first point at the target: once per epoch unless the run "
               "evaluated within epochs (`eval.every_steps`), and against this run's own "
               "conventional accuracy. `synthpart budget` measures compute to a fixed target, "
               "interpolated between evaluations, over budgets and seeds."), "",
              format_time_to_accuracy(time_to_accuracy(document)), ""]
  lines += ["## Figures", ""]
  label = setting_title(document)
  fig = plot_accuracy_per_epoch([document], f"Test accuracy per epoch round — {label}")
  lines.append(image(out, save(fig, out / "figures" / "accuracy_per_epoch.png"),
                     "Test accuracy of the composed network after each epoch round; a method "
                     "with recovery is drawn from where the same method without it ends."))
  lines += cost_figures(out, [document], label, notes, memory)
  lines += notes_section(notes)
  return "\n".join(lines)


def sweep_report(directory: Path, out: Path, memory: bool = True) -> str:
  """The report of a sweep directory: table, matches, figures."""
  sweep = read_document(directory / "sweep.json", "JSON")
  summary = summarize(directory)
  notes: list[str] = []
  methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
  pnn_methods = [m for m in methods if m != "conventional"]
  points = [(p["values"], point_documents(directory, p)) for p in sweep["points"]]
  first_docs = next((docs for _, docs in points if docs), [])
  if not first_docs:
    raise ConfigError(f"{directory} holds no finished runs yet")
  dataset = first_docs[0]["dataset"]["name"]
  runs = sum(len(docs) for _, docs in points)
  expected = sum(len(p["runs"]) for p in sweep["points"])
  axes_text = "; ".join(f"`{a['key']}` ∈ {a['values']}" for a in sweep["axes"])
  lines = [f"# synthpart sweep report: {directory.name}", "",
           (f"Sweep `{sweep.get('source', '')}`: {axes_text}; seeds {sweep['seeds']}; methods "
            f"{sweep['methods']}. {runs} of {expected} point runs finished."), "",
           f"Base settings (first point): {settings_line(first_docs[0])}.", ""]
  extra = runs_outside_grid(directory, sweep)
  if extra:
    notes.append(f"{len(extra)} run(s) in this directory belong to no point of the current grid "
                 f"(an earlier or larger version of the sweep) and are left out: "
                 f"{', '.join(extra)}.")
  if runs < expected:
    notes.append(f"Only {runs} of {expected} point runs had finished when this report was "
                 "written; rerun the sweep command to complete it.")
  lines += matches_section(summary, pnn_methods)
  lines += ["## All points", "", summary_markdown(summary)]
  lines += ["## Figures", ""]
  figures = out / "figures"
  for axis in sweep["axes"]:
    name = axis["key"].replace(".", "_")
    fig = plot_axis(summary, axis, pnn_methods,
                    f"{dataset}: test accuracy vs {axis_label(axis['key'])}")
    lines.append(image(out, save(fig, figures / f"accuracy_vs_{name}.png"),
                       f"Final test accuracy against {axis['key']} (mean ± sample std over "
                       f"{len(sweep['seeds'])} seeds); grey: conventional training."))
  # A method with recovery repeats its plain curve, then continues: draw only those if present.
  curve_methods = [m for m in pnn_methods if m.endswith("+recovery")] or pnn_methods
  fig = plot_sweep_curves(points, sweep["axes"], curve_methods,
                          f"{dataset}: test accuracy per epoch round, every point (mean over "
                          "seeds)")
  lines.append(image(out, save(fig, figures / "accuracy_per_epoch_points.png"),
                     "Test accuracy of the composed network after each epoch round, per "
                     "point and method."))
  reference = reference_point(sweep, directory)
  documents = point_documents(directory, reference) + baseline_documents(directory, reference)
  label = setting_title(documents[0], reference["name"])
  fig = plot_accuracy_per_epoch(documents, f"Test accuracy per epoch round — {label}")
  lines.append(image(out, save(fig, figures / "accuracy_per_epoch.png"),
                     f"Test accuracy per epoch round at {reference['name']} (thin: each seed; "
                     "bold: mean)."))
  lines += cost_figures(out, documents, label, notes, memory)
  lines += notes_section(notes)
  return "\n".join(lines)


def _cell(row: Mapping[str, Any] | None) -> str:
  """A pivot cell: Δ ± std, ✓ where the setting matches conventional."""
  if row is None:
    return "—"
  mark = " ✓" if row["delta_points"] >= -MATCH_POINTS else ""
  return f"{row['delta_points']:+.2f} ± {100 * row['accuracy_std']:.2f}{mark}"


def _pivot(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
           method: str) -> list[str]:
  """One method's Δ table over two axes: the second axis down, the first across."""
  (cols_key, col_values), (rows_key, row_values) = (
      (a["key"], a["values"]) for a in summary["axes"])
  cells = {(value_label(r["values"][rows_key]), value_label(r["values"][cols_key])): r
           for r in rows if r["method"] == method}
  lines = [f"**{method}**", "",
           f"| {rows_key} \\ {cols_key} | " + " | ".join(value_label(v) for v in col_values)
           + " |", "|---|" + "---|" * len(col_values)]
  for rv in row_values:
    out = [_cell(cells.get((value_label(rv), value_label(cv)))) for cv in col_values]
    lines.append(f"| {value_label(rv)} | " + " | ".join(out) + " |")
  return lines + [""]


def matches_section(summary: Mapping[str, Any], methods: Sequence[str]) -> list[str]:
  """Which points match conventional within MATCH_POINTS, and a pivot per method for 2 axes."""
  rows = [r for r in summary["rows"] if r["method"] in methods and r["delta_points"] is not None]
  if not rows:
    return []
  keys = [a["key"] for a in summary["axes"]]
  conventional = [r for r in summary["rows"] if r["method"] == "conventional"]
  conv = (f"{100 * np.mean([r['accuracy_mean'] for r in conventional]):.2f}"
          if conventional else "?")
  lines = [f"## Against conventional training ({conv}% mean)", "",
           (f"A setting *matches* when its mean test accuracy is at most {MATCH_POINTS} points "
            "below conventional training's mean over the same seeds (Δ ≥ "
            f"−{MATCH_POINTS}). Cells: Δ in points (mean over seeds, ± std of the method)."), ""]
  if len(keys) == 2:
    for method in methods:
      lines += _pivot(summary, rows, method)
  matched = [r for r in rows if r["delta_points"] >= -MATCH_POINTS]
  lines.append(f"Matches (✓): {len(matched)} of {len(rows)} (setting, method) pairs: " + ", ".join(
      f"{m} {sum(r['method'] == m for r in matched)}/{sum(r['method'] == m for r in rows)}"
      for m in methods) + ".")
  if len(keys) != 2:
    for r in rows:
      where = ", ".join(f"{k}={value_label(r['values'][k])}" for k in keys)
      mark = "match" if r["delta_points"] >= -MATCH_POINTS else "fail"
      lines.append(f"- {r['method']} at {where}: {100 * r['accuracy_mean']:.2f}% "
                   f"({r['delta_points']:+.2f}, {mark})")
  lines.append("")
  return lines
