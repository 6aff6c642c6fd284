"""The report's figures, drawn from results documents with matplotlib outside pyplot.

Every function takes documents (or what `synthpart.report.reading` made of them) and returns a
`matplotlib.figure.Figure` on the Agg canvas: nothing global is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthpart.curves import Document, accuracy_curves, accuracy_points, ledger_bytes
from synthpart.errors import ConfigError
from synthpart.report.reading import DevicePeaks, group_runs, mean_curve
from synthpart.sweep.grid import value_label

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

# A fixed colour per method, so every figure reads the same way.
METHOD_STYLE = {
    "conventional": ("black", "-"),
    "pnn-sequential": ("tab:blue", "--"),
    "pnn-sequential+recovery": ("tab:blue", "-"),
    "pnn-parallel": ("tab:orange", "--"),
    "pnn-parallel+recovery": ("tab:orange", "-"),
    "model-parallel": ("tab:green", "-"),
}


def _style(method: str) -> dict[str, Any]:
  color, line = METHOD_STYLE.get(method, ("tab:gray", ":"))
  return {"color": color, "linestyle": line}


def require_matplotlib() -> None:
  """Raises a one-line `ConfigError` where matplotlib cannot be imported."""
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    raise ConfigError("matplotlib is not installed: pip install matplotlib") from None


def _figure(rows: int = 1, cols: int = 1, width: float = 6.4,
            height: float = 4.2) -> tuple[Figure, Any]:
  """A Figure and its grid of axes [rows][cols]."""
  require_matplotlib()
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, axes


def save(fig: Figure, path: Path) -> Path:
  """Writes the figure as a PNG, making its folder."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def _integer_ticks(ax: Axes) -> None:
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _palette(n: int) -> list[Any]:
  from matplotlib import colormaps
  cmap = colormaps["viridis"]
  return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def _panels(axes: Any, count: int) -> list[Axes]:
  """The first `count` axes of a grid, row by row; the rest hidden."""
  flat = [ax for row in axes for ax in row]
  for ax in flat[count:]:
    ax.set_visible(False)
  return flat[:count]


def plot_accuracy_per_epoch(documents: Sequence[Document], title: str) -> Figure:
  """Test accuracy after each epoch round, a line per method; seeds as thin lines, mean bold."""
  fig, axes = _figure()
  ax = axes[0][0]
  for method, runs in group_runs(documents).items():
    curves = [c for c in (accuracy_points(r) for r in runs) if c]
    if not curves:
      continue
    for c in curves if len(curves) > 1 else []:
      ax.plot([x for x, _ in c], [100 * y for _, y in c], alpha=0.25, linewidth=0.8,
              **_style(method))
    xs, mean = mean_curve(curves)
    ax.plot(xs, 100 * mean, marker="o", markersize=3, label=method, **_style(method))
  ax.set_xlabel("epoch round (all loops of a method, in order; segments, then recovery)")
  _integer_ticks(ax)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def plot_accuracy_vs(documents: Sequence[Document], key: str, scale: float, xlabel: str,
                     title: str, log: bool = False) -> Figure:
  """Accuracy against a cumulative cost (`key`: "flops" or "seconds"), one line per seed."""
  fig, axes = _figure()
  ax = axes[0][0]
  labelled: set[str] = set()
  for document in documents:
    for method, curve in accuracy_curves(document).items():
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


def plot_bytes_moved(documents: Sequence[Document], title: str) -> Figure:
  """Bytes moved between devices per method (mean over documents; the ledger is exact)."""
  by_method = group_runs(documents)
  methods = list(by_method)
  values = [np.mean([ledger_bytes(r.get("transfers", [])) for r in by_method[m]]) / 2**20
            for m in methods]
  fig, axes = _figure(width=7.0)
  ax = axes[0][0]
  bars = ax.bar(range(len(methods)), values, color=[_style(m)["color"] for m in methods])
  ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
  ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("bytes moved between devices while training (MiB)")
  ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  return fig


def plot_memory(memory: Mapping[str, DevicePeaks], title: str) -> Figure:
  """Grouped bars: one group per method, one bar per device (its peak without resident data)."""
  methods = list(memory)
  devices = list(dict.fromkeys(d for peaks in memory.values() for d in peaks))
  fig, axes = _figure(width=7.0)
  ax = axes[0][0]
  width = 0.8 / max(len(devices), 1)
  for k, device in enumerate(devices):
    heights = [memory[m][device]["peak_without_data"] / 2**20 if device in memory[m] else 0
               for m in methods]
    ax.bar(np.arange(len(methods)) + (k - (len(devices) - 1) / 2) * width, heights, width,
           label=f"device {device}")
  ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("peak device memory without resident data (MiB)")
  ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  return fig


def axis_position(values: Sequence[Any]) -> tuple[list[float], list[str], bool]:
  """x positions, tick labels and whether to use a log scale for one axis's values.

  Numbers (and one-element lists of numbers, such as a single cut) are placed by value; anything
  else is categorical.
  """
  labels = [value_label(v) for v in values]
  scalars = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scalars):
    xs = [float(v) for v in scalars]
    log = min(xs) > 0 and max(xs) / min(xs) >= 100
    return xs, labels, log
  return [float(i) for i in range(len(values))], labels, False


def axis_label(key: str) -> str:
  """A sweep axis's setting as an x-axis label."""
  known = {"sil.scale": "SIL scale κ (sil.scale)",
           "model.cuts": "cut after dense layer (model.cuts)",
           "sil.noise": "SIL input noise std (sil.noise)",
           "recovery.epochs": "recovery epochs"}
  return known.get(key, key)


def _conventional_band(ax: Axes, conventional: Sequence[Mapping[str, Any]]) -> None:
  """Conventional training's mean ± std accuracy as a grey band."""
  mean = 100 * np.mean([r["accuracy_mean"] for r in conventional])
  std = 100 * np.mean([r["accuracy_std"] for r in conventional])
  ax.axhspan(mean - std, mean + std, color="grey", alpha=0.25)
  ax.axhline(mean, color="grey", linestyle="--", label=f"conventional {mean:.2f} ± {std:.2f}")


def plot_axis(summary: Mapping[str, Any], axis: Mapping[str, Any], methods: Sequence[str],
              title: str) -> Figure:
  """Mean ± std test accuracy against one axis: a panel per method, a line per value of the
  other axes; conventional (grey band: mean ± std) for reference."""
  key = axis["key"]
  xs, labels, log = axis_position(axis["values"])
  position = {value_label(v): x for v, x in zip(axis["values"], xs, strict=True)}
  others = [a["key"] for a in summary["axes"] if a["key"] != key]
  cols = min(2, len(methods))
  fig, axes = _figure(math.ceil(len(methods) / cols), cols, width=6.0, height=4.2)
  conventional = [r for r in summary["rows"] if r["method"] == "conventional"]
  for ax, method in zip(_panels(axes, len(methods)), methods, strict=True):
    if conventional:
      _conventional_band(ax, conventional)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in summary["rows"]:
      if row["method"] == method:
        label = ", ".join(f"{k}={value_label(row['values'][k])}" for k in others)
        groups.setdefault(label, []).append(row)
    for color, (label, group) in zip(_palette(len(groups)), groups.items(), strict=True):
      group.sort(key=lambda r: position[value_label(r["values"][key])])
      ax.errorbar([position[value_label(r["values"][key])] for r in group],
                  [100 * r["accuracy_mean"] for r in group],
                  yerr=[100 * r["accuracy_std"] for r in group], marker="o", markersize=4,
                  capsize=3, color=color, label=label or method)
    ax.set_xticks(xs, labels)
    if log:
      ax.set_xscale("log")
      ax.set_xticks(xs, labels)
      ax.minorticks_off()
    ax.set_xlabel(axis_label(key))
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  return fig


def plot_sweep_curves(points: Sequence[tuple[str, Sequence[Document]]], methods: Sequence[str],
                      title: str) -> Figure:
  """Seed-mean test accuracy per epoch round: a panel per method, a line per point.

  `points`: each point's name and the results documents of its finished runs.
  """
  cols = min(2, len(methods))
  fig, axes = _figure(math.ceil(len(methods) / cols), cols, width=6.0, height=4.2)
  colors = _palette(len(points))
  for ax, method in zip(_panels(axes, len(methods)), methods, strict=True):
    for color, (name, documents) in zip(colors, points, strict=True):
      curves = [accuracy_points(run) for run in group_runs(documents).get(method, [])]
      curves = [c for c in curves if c]
      if curves:
        xs, mean = mean_curve(curves)
        ax.plot(xs, 100 * mean, color=color, linewidth=1, label=name)
    ax.set_xlabel("epoch round (segments, then recovery)")
    _integer_ticks(ax)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
  fig.suptitle(title)
  return fig
