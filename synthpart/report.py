"""`synthpart report DIR`: a self-contained Markdown report of a run or a sweep, with figures.

Output: ``report.md`` plus PNG figures in ``figures/`` beside it (in DIR, or in --out), drawn
with matplotlib's Agg backend, so the report reads anywhere Markdown renders images.

- A run directory holds results.json (`synthpart compare` / `train`).
- A sweep directory holds sweep.json and one results.json per point and seed (`synthpart sweep`).

Figures: test accuracy per epoch round of each method; accuracy against cumulative training FLOPs
(`synthpart.flops`: forward 2·in·out and backward 4·in·out per example per trained layer,
plus biases, activations and optimizer updates) and against training wall time; for a sweep,
accuracy (mean ± std over seeds) against each axis; bytes moved between devices per method (from
the runs' transfer ledgers); and peak memory per device per method (XLA's buffer assignment of
each loop compiled for the same shapes, `bench.compiled.memory_report`; results.json does not record
memory, so it is computed here and skipped, with a note, where it cannot be).
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from synthpart.errors import ConfigError

# A fixed colour per method, so every figure reads the same way.
METHOD_STYLE = {
    "conventional": ("black", "-"),
    "pnn-sequential": ("tab:blue", "--"),
    "pnn-sequential+recovery": ("tab:blue", "-"),
    "pnn-parallel": ("tab:orange", "--"),
    "pnn-parallel+recovery": ("tab:orange", "-"),
    "model-parallel": ("tab:green", "-"),
}
MATCH_POINTS = 0.5  # "matches conventional": at most this many points below its mean accuracy


def _style(method: str) -> dict[str, Any]:
  color, line = METHOD_STYLE.get(method, ("tab:gray", ":"))
  return {"color": color, "linestyle": line}


def _figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 4.2) -> Any:
  """A Figure on the Agg canvas, outside pyplot: nothing global is touched."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, axes


def _save(fig: Any, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


# ---------------------------------------------------------------------------------------------
# Reading runs


def read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f"{path} does not exist") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON: {e}") from None


def accuracy_points(run: Mapping[str, Any]) -> list[tuple[int, float]]:
  """(epoch round, test accuracy) of a run's curve; rounds count every loop of the method."""
  return [(i, p["accuracy"]) for i, p in enumerate(run.get("curve", []), start=1)
          if "accuracy" in p]


def flops_curves(document: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """Per method: curve points with cumulative training FLOPs (`curves.accuracy_curves`)."""
  from synthpart.curves import accuracy_curves
  return accuracy_curves(document)


def bytes_moved(run: Mapping[str, Any]) -> int:
  """Bytes the run's transfer ledger records between devices."""
  return int(sum(t["bytes"] for t in run.get("transfers", [])))


# ---------------------------------------------------------------------------------------------
# Figures of one results document (or one per seed)


def plot_accuracy_per_epoch(documents: Sequence[Mapping[str, Any]], title: str) -> Any:
  """Test accuracy after each epoch round, a line per method; seeds as thin lines, mean bold."""
  fig, axes = _figure()
  ax = axes[0][0]
  by_method = _group_runs(documents)
  for method, runs in by_method.items():
    curves = [accuracy_points(r) for r in runs]
    curves = [c for c in curves if c]
    if not curves:
      continue
    for c in curves if len(curves) > 1 else []:
      ax.plot([x for x, _ in c], [100 * y for _, y in c], alpha=0.25, linewidth=0.8,
              **_style(method))
    xs, mean = _mean_curve(curves)
    ax.plot(xs, 100 * mean, marker="o", markersize=3, label=method, **_style(method))
  ax.set_xlabel("epoch round (all loops of a method, in order; segments, then recovery)")
  _integer_ticks(ax)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _integer_ticks(ax: Any) -> None:
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _group_runs(documents: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  out: dict[str, list[Mapping[str, Any]]] = {}
  for document in documents:
    for run in document["runs"]:
      out.setdefault(run["method"], []).append(run)
  return out


def _mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], np.ndarray]:
  """Mean accuracy at the rounds every curve has (they share rounds when settings match)."""
  common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
  values = [dict(c) for c in curves]
  return common, np.array([np.mean([v[x] for v in values]) for x in common])


def plot_accuracy_vs(documents: Sequence[Mapping[str, Any]], key: str, scale: float,
                     xlabel: str, title: str, log: bool = False) -> Any:
  """Accuracy against a cumulative cost (`key`: "flops" or "seconds"), one line per seed."""
  fig, axes = _figure()
  ax = axes[0][0]
  labelled: set[str] = set()
  for document in documents:
    for method, curve in flops_curves(document).items():
      points = [p for p in curve if "accuracy" in p]
      if not points:
        continue
      ax.plot([p[key] / scale for p in points], [100 * p["accuracy"] for p in points],
              marker="o", markersize=3, label=None if method in labelled else method,
              **_style(method))
      labelled.add(method)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy (%)")
  if log:
    ax.set_xscale("log")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def plot_bytes_moved(documents: Sequence[Mapping[str, Any]], title: str) -> Any:
  """Bytes moved between devices per method (mean over documents; the ledger is exact)."""
  by_method = _group_runs(documents)
  methods = list(by_method)
  values = [np.mean([bytes_moved(r) for r in by_method[m]]) / 2**20 for m in methods]
  fig, axes = _figure(width=7.0)
  ax = axes[0][0]
  bars = ax.bar(range(len(methods)), values, color=[_style(m)["color"] for m in methods])
  ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
  ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("bytes moved between devices while training (MiB)")
  ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  return fig


def memory_per_device(document: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """Per method, the compiled peak of each device, for the document's shapes and settings.

  Builds a problem of zero-filled data with the dataset's shapes and asks
  `bench.compiled.memory_report`; nothing trains.
  """
  import jax

  from synthpart import config as config_lib
  from synthpart.bench.compiled import memory_report
  from synthpart.train.schedules import make_problem
  config = _config_of(document, config_lib)
  d = document["dataset"]
  fake = types.SimpleNamespace(
      name=d["name"], num_classes=d["num_classes"],
      train_images=np.zeros((d["num_train"], d["num_features"]), np.uint8),
      train_labels=np.zeros(d["num_train"], np.int32),
      test_images=np.zeros((1, d["num_features"]), np.uint8), test_labels=np.zeros(1, np.int32))
  problem = make_problem(config, fake, jax.devices("cpu")[:1])
  methods = {r["method"] for r in document["runs"]}
  report = memory_report(problem, with_model_parallel="model-parallel" in methods)
  return {method: entry["devices"] for method, entry in report.items()}


def _config_of(document: Mapping[str, Any], config_lib: Any) -> Any:
  settings = dict(document["config"])
  settings["segments"] = list(settings.get("segments", []))
  return config_lib.from_dict(settings)


def plot_memory(memories: Mapping[str, Mapping[str, list[dict[str, Any]]]], title: str) -> Any:
  """Grouped bars: one group per method, one bar per device, a panel per configuration."""
  panels = list(memories.items())
  fig, axes = _figure(1, len(panels), width=6.0)
  for ax, (label, memory) in zip(axes[0], panels):
    methods = list(memory)
    devices = max(len(v) for v in memory.values())
    width = 0.8 / devices
    for k in range(devices):
      heights = [memory[m][k]["peak_without_data"] / 2**20 if k < len(memory[m]) else 0
                 for m in methods]
      ax.bar(np.arange(len(methods)) + (k - (devices - 1) / 2) * width, heights, width,
             label=f"device {k} (segment {k})")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("peak device memory without resident data (MiB)")
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  return fig


# ---------------------------------------------------------------------------------------------
# Sweep figures


def axis_position(values: Sequence[Any]) -> tuple[list[float], list[str], bool]:
  """x positions, tick labels and whether to use a log scale for one axis's values.

  Numbers (and one-element lists of numbers, such as a single cut) are placed by value; anything
  else is categorical.
  """
  from synthpart.sweep import format_value, freeze
  labels = [format_value(freeze(v)) for v in values]
  scalars = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scalars):
    xs = [float(v) for v in scalars]
    log = min(xs) > 0 and max(xs) / min(xs) >= 100
    return xs, labels, log
  return list(range(len(values))), labels, False


def plot_axis(summary: Mapping[str, Any], axis: Mapping[str, Any], methods: Sequence[str],
              title: str) -> Any:
  """Mean ± std test accuracy against one axis: a panel per method, a line per value of the
  other axes; conventional (grey band: mean ± std) for reference."""
  from synthpart.sweep import format_value, freeze
  key = axis["key"]
  xs, labels, log = axis_position(axis["values"])
  position = {format_value(freeze(v)): x for v, x in zip(axis["values"], xs)}
  others = [a["key"] for a in summary["axes"] if a["key"] != key]
  cols = min(2, len(methods))
  rows = math.ceil(len(methods) / cols)
  fig, axes = _figure(rows, cols, width=6.0, height=4.2)
  conventional = [r for r in summary["rows"] if r["method"] == "conventional"]
  for index, method in enumerate(methods):
    ax = axes[index // cols][index % cols]
    if conventional:
      mean = 100 * np.mean([r["accuracy_mean"] for r in conventional])
      std = 100 * np.mean([r["accuracy_std"] for r in conventional])
      ax.axhspan(mean - std, mean + std, color="grey", alpha=0.25)
      ax.axhline(mean, color="grey", linestyle="--",
                 label=f"conventional {mean:.2f} ± {std:.2f}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in summary["rows"]:
      if row["method"] == method:
        label = ", ".join(f"{k}={format_value(freeze(row['values'][k]))}" for k in others)
        groups.setdefault(label, []).append(row)
    colors = _palette(len(groups))
    for color, (label, group) in zip(colors, groups.items()):
      group.sort(key=lambda r: position[format_value(freeze(r["values"][key]))])
      ax.errorbar([position[format_value(freeze(r["values"][key]))] for r in group],
                  [100 * r["accuracy_mean"] for r in group],
                  yerr=[100 * r["accuracy_std"] for r in group], marker="o", markersize=4,
                  capsize=3, color=color, label=label or method)
    ax.set_xticks(xs, labels)
    if log:
      ax.set_xscale("log")
      ax.set_xticks(xs, labels)
      ax.minorticks_off()
    ax.set_xlabel(_axis_label(key))
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for index in range(len(methods), rows * cols):
    axes[index // cols][index % cols].set_visible(False)
  fig.suptitle(title)
  return fig


def _palette(n: int) -> list[Any]:
  from matplotlib import colormaps
  cmap = colormaps["viridis"]
  return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def _axis_label(key: str) -> str:
  known = {"sil.scale": "SIL scale κ (sil.scale)",
           "model.cuts": "cut after dense layer (model.cuts)",
           "sil.noise": "SIL input noise std (sil.noise)",
           "recovery.epochs": "recovery epochs"}
  return known.get(key, key)


def plot_sweep_curves(out: Path, sweep: Mapping[str, Any], methods: Sequence[str],
                      title: str) -> Any:
  """Seed-mean test accuracy per epoch round: a panel per method, a line per point."""
  cols = min(2, len(methods))
  rows = math.ceil(len(methods) / cols)
  fig, axes = _figure(rows, cols, width=6.0, height=4.2)
  colors = _palette(len(sweep["points"]))
  for index, method in enumerate(methods):
    ax = axes[index // cols][index % cols]
    for color, point in zip(colors, sweep["points"]):
      curves = [accuracy_points(run) for document in _point_documents(out, point)
                for run in document["runs"] if run["method"] == method]
      curves = [c for c in curves if c]
      if curves:
        xs, mean = _mean_curve(curves)
        ax.plot(xs, 100 * mean, color=color, linewidth=1, label=point["name"])
    ax.set_xlabel("epoch round (segments, then recovery)")
    _integer_ticks(ax)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
  for index in range(len(methods), rows * cols):
    axes[index // cols][index % cols].set_visible(False)
  handles, labels = axes[0][0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
  fig.suptitle(title)
  return fig


def _point_documents(out: Path, point: Mapping[str, Any]) -> list[dict[str, Any]]:
  docs = []
  for run_dir in point["runs"]:
    path = out / run_dir / "results.json"
    if path.exists():
      docs.append(read_json(path))
  return docs


def _baseline_documents(out: Path, point: Mapping[str, Any]) -> list[dict[str, Any]]:
  return [read_json(out / b / "results.json") for b in point.get("baselines", [])
          if (out / b / "results.json").exists()]


# ---------------------------------------------------------------------------------------------
# The reports


def write_report(directory: str | Path, out: str | Path | None = None,
                 memory: bool = True) -> Path:
  """Writes report.md (and figures/) for a run or sweep directory; returns report.md's path.

  `memory`: draw the memory figure, which compiles every loop once (seconds to minutes on CPU).
  """
  directory = Path(directory)
  if not directory.is_dir():
    raise ConfigError(f"{directory} is not a directory")
  out = Path(out) if out is not None else directory
  if (directory / "sweep.json").exists():
    text = sweep_report(directory, out, memory)
  elif (directory / "results.json").exists():
    text = run_report(directory, out, memory)
  else:
    raise ConfigError(f"{directory} holds neither results.json (a run) nor sweep.json (a sweep)")
  out.mkdir(parents=True, exist_ok=True)
  path = out / "report.md"
  path.write_text(text)
  return path


def _image(out: Path, path: Path, caption: str) -> str:
  return f"![{path.stem.replace('_', ' ')}]({path.relative_to(out).as_posix()})\n\n*{caption}*\n"


def _common_figures(out: Path, documents: Sequence[Mapping[str, Any]], label: str,
                    notes: list[str], memory: bool) -> list[str]:
  """Accuracy vs FLOPs, vs wall time, bytes moved and memory, for one setting's documents."""
  figures = out / "figures"
  parts = []
  fig = plot_accuracy_vs(documents, "flops", 1e12, "cumulative training compute (TFLOP)",
                         f"Test accuracy vs training compute — {label}")
  parts.append(_image(out, _save(fig, figures / "accuracy_vs_flops.png"),
                      "Test accuracy against cumulative training FLOPs (analytic count: "
                      "forward 2·in·out, backward 4·in·out per example per trained layer, plus "
                      "biases, activations, optimizer; the sequential hand-over's forward pass "
                      "included)."))
  fig = plot_accuracy_vs(documents, "seconds", 1.0, "cumulative training wall time (s)",
                         f"Test accuracy vs wall time — {label}")
  parts.append(_image(out, _save(fig, figures / "accuracy_vs_wall_time.png"),
                      "Test accuracy against cumulative training wall time (compilation and "
                      "evaluation excluded)."))
  fig = plot_bytes_moved(documents, f"Bytes moved between devices — {label}")
  parts.append(_image(out, _save(fig, figures / "bytes_moved.png"),
                      "Bytes moved between devices while training, from each run's transfer "
                      "ledger (recovery's join goes through the host and is not in it)."))
  if not memory:
    notes.append("Memory figure not drawn (--no-memory).")
    return parts
  figure = _memory_figure(out, documents, label, notes)
  if figure:
    parts.append(figure)
  return parts


def _memory_figure(out: Path, documents: Sequence[Mapping[str, Any]], label: str,
                   notes: list[str]) -> str | None:
  if any("memory" in run for d in documents for run in d["runs"]):
    notes.append("results.json carries memory fields, but the report recomputes memory from "
                 "the compiled loops so that every method is measured the same way.")
  try:
    memory = {label: memory_per_device(documents[0])}
  except Exception as e:  # the report must not fail because memory accounting cannot run here
    notes.append(f"Memory figure skipped: {type(e).__name__}: {e}")
    return None
  fig = plot_memory(memory, "Peak memory per device")
  return _image(out, _save(fig, out / "figures" / "memory_per_device.png"),
                "Peak memory per device per method: XLA's buffer assignment of each loop compiled "
                "for these shapes (parameters, optimizer state, activations, workspace), "
                "without the resident training data, which every method holds alike.")


def _settings_line(document: Mapping[str, Any]) -> str:
  c, d = document["config"], document["dataset"]
  t, r = c["train"], c["recovery"]
  segment_epochs = [s.get("epochs", t["epochs"]) for s in c.get("segments", [])]
  return (f"{d['name']} ({d['num_train']:,} train / {d['num_test']:,} test, "
          f"{d['num_classes']} classes); network {d['num_features']} → "
          f"{' → '.join(map(str, c['model']['hidden']))} → {d['num_classes']} "
          f"({c['model']['activation']}); cuts {c['model']['cuts']}; SIL {c['sil']['kind']} "
          f"κ={c['sil']['scale']:g}, {c['sil']['loss']}, noise {c['sil']['noise']:g}; "
          f"{t['optimizer']} lr {t['learning_rate']:g}, batch {t['batch_size']}, "
          f"{t['epochs']} epochs{' (per segment ' + str(segment_epochs) + ')' if segment_epochs else ''}; "
          f"recovery {r['epochs']} epochs at lr {r['learning_rate']:g}; devices "
          f"{', '.join(document['devices'])} ({document.get('backend', '?')})")


def run_report(directory: Path, out: Path, memory: bool = True) -> str:
  """The report of one results.json."""
  document = read_json(directory / "results.json")
  notes: list[str] = []
  lines = [f"# synthpart report: {directory.name}", "",
           f"`synthpart {document['command']}` — {_settings_line(document)}.", ""]
  curves = flops_curves(document)
  conventional = next((r for r in document["runs"] if r["method"] == "conventional"), None)
  lines += ["| method | test accuracy (%) | Δ vs conventional (points) | training wall s | "
            "compile s | training TFLOP | MiB moved between devices |", "|---|---|---|---|---|---|---|"]
  for run in document["runs"]:
    delta = ("" if conventional is None
             else f"{100 * (run['test_accuracy'] - conventional['test_accuracy']):+.2f}")
    total = curves[run["method"]][-1]["flops"] / 1e12 if curves[run["method"]] else 0.0
    lines.append(f"| {run['method']} | {100 * run['test_accuracy']:.2f} | {delta} | "
                 f"{run['wall_seconds']:.1f} | {run['compile_seconds']:.1f} | {total:.2f} | "
                 f"{bytes_moved(run) / 2**20:,.1f} |")
  lines.append("")
  if conventional is not None:
    from synthpart.curves import format_time_to_accuracy, time_to_accuracy
    lines += ["## Compute and time to 90% of conventional accuracy", "",
              format_time_to_accuracy(time_to_accuracy(document)), ""]
  lines += ["## Figures", ""]
  figures = out / "figures"
  fig = plot_accuracy_per_epoch([document], f"Test accuracy per epoch — {directory.name}")
  lines.append(_image(out, _save(fig, figures / "accuracy_per_epoch.png"),
                      "Test accuracy of the composed network after each epoch round."))
  lines += _common_figures(out, [document], directory.name, notes, memory)
  lines += _notes(notes)
  return "\n".join(lines)


def _notes(notes: Sequence[str]) -> list[str]:
  return ["## Notes", ""] + [f"- {n}" for n in notes] + [""] if notes else []


def sweep_report(directory: Path, out: Path, memory: bool = True) -> str:
  """The report of a sweep directory: table, matches, figures."""
  from synthpart.sweep import summarize
  sweep = read_json(directory / "sweep.json")
  summary = summarize(directory)
  notes: list[str] = []
  methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
  pnn_methods = [m for m in methods if m != "conventional"]
  first_docs = next((docs for p in sweep["points"] if (docs := _point_documents(directory, p))),
                    [])
  if not first_docs:
    raise ConfigError(f"{directory} holds no finished runs yet")
  runs = sum(len(_point_documents(directory, p)) for p in sweep["points"])
  expected = sum(len(p["runs"]) for p in sweep["points"])
  axes_text = "; ".join(f"`{a['key']}` ∈ {a['values']}" for a in sweep["axes"])
  lines = [f"# synthpart sweep report: {directory.name}", "",
           f"Sweep `{sweep.get('source', '')}`: {axes_text}; seeds {sweep['seeds']}; methods "
           f"{sweep['methods']}. {runs} of {expected} point runs finished.", "",
           f"Base settings (first point): {_settings_line(first_docs[0])}.", ""]
  extra = _runs_outside_grid(directory, sweep)
  if extra:
    notes.append(f"{len(extra)} run(s) in this directory belong to no point of the current grid "
                 f"(an earlier or larger version of the sweep) and are left out: "
                 f"{', '.join(extra)}.")
  if runs < expected:
    notes.append(f"Only {runs} of {expected} point runs had finished when this report was "
                 "written; rerun the sweep command to complete it.")
  lines += _matches_section(summary, pnn_methods)
  from synthpart.sweep import summary_markdown
  lines += ["## All points", "", summary_markdown(summary)]
  lines += ["## Figures", ""]
  figures = out / "figures"
  for axis in sweep["axes"]:
    name = axis["key"].replace(".", "_")
    fig = plot_axis(summary, axis, pnn_methods,
                    f"Test accuracy vs {_axis_label(axis['key'])}")
    lines.append(_image(out, _save(fig, figures / f"accuracy_vs_{name}.png"),
                        f"Final test accuracy against {axis['key']} (mean ± sample std over "
                        f"{len(sweep['seeds'])} seeds); grey: conventional training."))
  # A method with recovery repeats its plain curve, then continues: draw only those if present.
  curve_methods = [m for m in pnn_methods if m.endswith("+recovery")] or pnn_methods
  fig = plot_sweep_curves(directory, sweep, curve_methods,
                          "Test accuracy per epoch round, every point (mean over seeds)")
  lines.append(_image(out, _save(fig, figures / "accuracy_per_epoch_points.png"),
                      "Test accuracy of the composed network after each epoch round, per "
                      "point and method."))
  reference = _reference_point(sweep, directory)
  documents = _point_documents(directory, reference) + _baseline_documents(directory, reference)
  label = reference["name"]
  fig = plot_accuracy_per_epoch(documents, f"Test accuracy per epoch — {label}")
  lines.append(_image(out, _save(fig, figures / "accuracy_per_epoch.png"),
                      f"Test accuracy per epoch round at {label} (thin: each seed; bold: mean)."))
  lines += _common_figures(out, documents, label, notes, memory)
  lines += _notes(notes)
  return "\n".join(lines)


def _runs_outside_grid(directory: Path, sweep: Mapping[str, Any]) -> list[str]:
  known = {r for p in sweep["points"] for r in p["runs"] + p.get("baselines", [])}
  found = sorted(path.parent.relative_to(directory).as_posix()
                 for path in directory.glob("*/seed-*/results.json"))
  return [f for f in found if f not in known]


def _reference_point(sweep: Mapping[str, Any], directory: Path) -> Mapping[str, Any]:
  """The point whose axis values equal the base settings' where possible, else the first one
  with results: the one setting the cost figures show."""
  from synthpart.sweep import flatten
  base = flatten(sweep.get("base", {}))
  done = [p for p in sweep["points"] if _point_documents(directory, p)]
  for point in done:
    if all(_same(base.get(k), v) for k, v in point["values"].items()):
      return point
  return done[0]


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return math.isclose(a, b)
  return a == b


def _matches_section(summary: Mapping[str, Any], methods: Sequence[str]) -> list[str]:
  """Which points match conventional within MATCH_POINTS, and a pivot per method for 2 axes."""
  rows = [r for r in summary["rows"] if r["method"] in methods and r["delta_points"] is not None]
  if not rows:
    return []
  from synthpart.sweep import format_value, freeze
  keys = [a["key"] for a in summary["axes"]]
  conventional = [r for r in summary["rows"] if r["method"] == "conventional"]
  conv = (f"{100 * np.mean([r['accuracy_mean'] for r in conventional]):.2f}"
          if conventional else "?")
  lines = [f"## Against conventional training ({conv}% mean)", "",
           f"A setting *matches* when its mean test accuracy is at most {MATCH_POINTS} points "
           "below conventional training's mean over the same seeds (Δ ≥ "
           f"−{MATCH_POINTS}). Cells: Δ in points (mean over seeds, ± std of the method).", ""]
  if len(keys) == 2:
    rows_key, cols_key = keys[1], keys[0]
    row_values = [a["values"] for a in summary["axes"] if a["key"] == rows_key][0]
    col_values = [a["values"] for a in summary["axes"] if a["key"] == cols_key][0]
    for method in methods:
      cells = {(format_value(freeze(r["values"][rows_key])),
                format_value(freeze(r["values"][cols_key]))): r
               for r in rows if r["method"] == method}
      lines += [f"**{method}**", "",
                f"| {rows_key} \\ {cols_key} | " + " | ".join(
                    format_value(freeze(v)) for v in col_values) + " |",
                "|---|" + "---|" * len(col_values)]
      for rv in row_values:
        out = []
        for cv in col_values:
          r = cells.get((format_value(freeze(rv)), format_value(freeze(cv))))
          if r is None:
            out.append("—")
          else:
            mark = " ✓" if r["delta_points"] >= -MATCH_POINTS else ""
            out.append(f"{r['delta_points']:+.2f} ± {100 * r['accuracy_std']:.2f}{mark}")
        lines.append(f"| {format_value(freeze(rv))} | " + " | ".join(out) + " |")
      lines.append("")
  matched = [r for r in rows if r["delta_points"] >= -MATCH_POINTS]
  lines.append(f"Matches (✓): {len(matched)} of {len(rows)} (setting, method) pairs: " + ", ".join(
      f"{m} {sum(r['method'] == m for r in matched)}/{sum(r['method'] == m for r in rows)}"
      for m in methods) + ".")
  if len(keys) != 2:
    for r in rows:
      where = ", ".join(f"{k}={format_value(freeze(r['values'][k]))}" for k in keys)
      mark = "match" if r["delta_points"] >= -MATCH_POINTS else "fail"
      lines.append(f"- {r['method']} at {where}: {100 * r['accuracy_mean']:.2f}% "
                   f"({r['delta_points']:+.2f}, {mark})")
  lines.append("")
  return lines


def add_report_commands(sub: Any) -> None:
  """Registers `synthpart report` on the command line's subparsers."""
  p = sub.add_parser("report", help="Markdown report with figures of a run or sweep directory")
  p.add_argument("directory", help="a run directory (results.json) or sweep directory")
  p.add_argument("--out", default=None, metavar="DIR",
                 help="where report.md and figures/ go (default: the directory itself)")
  p.add_argument("--no-memory", action="store_true",
                 help="skip the memory figure (it compiles every loop once)")
  p.set_defaults(func=_report_command)


def _report_command(args: Any) -> int:
  import matplotlib
  matplotlib.use("Agg")
  path = write_report(args.directory, args.out, memory=not args.no_memory)
  print(f"report: {path}")
  return 0
