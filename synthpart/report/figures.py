"""The report's figures, drawn from results documents with matplotlib outside pyplot.

Every function takes documents (or what `synthpart.report.reading` made of them) and returns a
`matplotlib.figure.Figure` on the Agg canvas: nothing global is touched.

This module is a little over 400 lines: one shared style (a colour, line style and marker per
method, units as in the tables) is what keeps the run, sweep and memory figures consistent, so
they stay together.
"""

from __future__ import annotations

import math
import textwrap
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

# A fixed colour, line style and marker per method, so every figure reads the same way: a schedule
# in one colour, dashed without recovery and solid with it, a marker of its own for each.
METHOD_STYLE = {
    "conventional": ("black", "-", "o"),
    "pnn-sequential": ("tab:blue", "--", "s"),
    "pnn-sequential+recovery": ("tab:blue", "-", "^"),
    "pnn-parallel": ("tab:orange", "--", "D"),
    "pnn-parallel+recovery": ("tab:orange", "-", "v"),
    "pnn-pipelined": ("tab:red", "--", "P"),
    "pnn-pipelined+recovery": ("tab:red", "-", "X"),
    "pnn-parallel-nearest-sil": ("tab:brown", ":", "*"),
    "model-parallel": ("tab:green", "-.", "x"),
}
RECOVERY = "+recovery"
DPI = 200  # PNG resolution; every figure is also written as PDF (vector)
# Sweep points: the first axis's values by colour, the second's by line style and marker.
AXIS_COLORS = ("tab:purple", "tab:cyan", "tab:olive", "tab:red", "tab:brown", "tab:pink",
               "tab:blue", "tab:orange", "tab:green", "tab:gray")
AXIS_LINES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
AXIS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
NEUTRAL = "0.3"  # the colour of lines the first axis does not colour


def method_style(method: str) -> dict[str, Any]:
  """Colour, line style, marker and drawing order of a method's lines: a method without
  recovery is drawn above the same method with it, which shares its first part."""
  color, line, marker = METHOD_STYLE.get(method, ("tab:gray", ":", "."))
  return {"color": color, "linestyle": line, "marker": marker,
          "zorder": 2 if method.endswith(RECOVERY) else 3}


def plural(count: int, word: str) -> str:
  """``1 epoch``, ``2 epochs``."""
  return f"{count} {word}" if count == 1 else f"{count} {word}s"


def require_matplotlib() -> None:
  """Raises a one-line `ConfigError` where matplotlib cannot be imported."""
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    raise ConfigError("matplotlib is not installed: pip install matplotlib") from None


def _figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 4.2,
            sharey: bool = False) -> tuple[Figure, Any]:
  """A Figure and its grid of axes [rows][cols]; `sharey`: one y range for every panel."""
  require_matplotlib()
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
  return fig, axes


def new_figure(width: float = 6.4, height: float = 4.2) -> tuple[Figure, Axes]:
  """A Figure with one axes, on the Agg canvas."""
  fig, axes = _figure(width=width, height=height)
  return fig, axes[0][0]


def save(fig: Figure, path: Path) -> Path:
  """Writes the figure as a PNG (`DPI`) and, beside it, as a PDF; returns the PNG's path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  fig.savefig(path.with_suffix(".pdf"))
  return path


def _title(ax: Axes, title: str, width: int = 90) -> None:
  """The panel's title, wrapped to the figure's width between its comma-separated parts."""
  lines = [""]
  for part in title.split(", "):
    joined = f"{lines[-1]}, {part}" if lines[-1] else part
    if len(joined) <= width or not lines[-1]:
      lines[-1] = joined
    else:
      lines[-1] += ","
      lines.append(part)
  ax.set_title("\n".join(textwrap.fill(line, width) for line in lines), fontsize=10)


def _integer_ticks(ax: Axes) -> None:
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _panels(axes: Any, count: int) -> list[Axes]:
  """The first `count` axes of a grid, row by row; the rest hidden."""
  flat = [ax for row in axes for ax in row]
  for ax in flat[count:]:
    ax.set_visible(False)
  return flat[:count]


def _end_labels(ax: Axes, ends: Sequence[tuple[float, float, str, str]]) -> None:
  """Labels each line by name just right of its last point (direct labels), moved apart
  vertically where they would overlap. `ends`: (x, y, text, colour) per line."""
  if not ends:
    return
  left, right = ax.get_xlim()
  if ax.get_xscale() == "log":
    ax.set_xlim(left, right * (right / left) ** 0.3)
  else:
    ax.set_xlim(left, right + 0.3 * (right - left))
  low, high = ax.get_ylim()
  gap = 0.045 * (high - low)

  def across(x: float) -> float:  # a position across the x axis, 0..1
    if ax.get_xscale() == "log":
      return math.log(x / left) / math.log(right / left)
    return (x - left) / (right - left)

  placed: list[tuple[float, float]] = []
  for y, x, text, color in sorted((y, x, text, color) for x, y, text, color in ends):
    near = [py for px, py in placed if abs(px - across(x)) < 0.2]
    for py in sorted(near):  # each placed label at most once: upwards only, so this ends
      if abs(py - y) < 0.99 * gap:
        y = py + gap
    placed.append((across(x), y))
    ax.annotate(text, xy=(x, y), xytext=(5, 0), textcoords="offset points", va="center",
                fontsize=7, color=color, annotation_clip=False)


def _after_base(method: str, points: Sequence[Any], base: Sequence[Any] | None) -> list[Any]:
  """A recovery method's points from the end of its plain method's on: the points before are
  the plain method's own, drawn as that method (so neither hides the other)."""
  if not method.endswith(RECOVERY) or not base or len(base) > len(points):
    return list(points)
  return list(points[len(base) - 1:])


def plot_accuracy_per_epoch(documents: Sequence[Document], title: str) -> Figure:
  """Test accuracy after each epoch round, a line per method; seeds as thin lines, mean bold.

  A recovery method is drawn from where its plain method ends (its first part is that
  method's); each line is labelled at its end.
  """
  fig, axes = _figure(width=7.2)
  ax = axes[0][0]
  means: dict[str, list[tuple[int, float]]] = {}
  for method, runs in group_runs(documents).items():
    curves = [c for c in (accuracy_points(r) for r in runs) if c]
    if curves:
      xs, mean = mean_curve(curves)
      means[method] = list(zip(xs, 100 * mean))
      for c in curves if len(curves) > 1 else []:
        c = _after_base(method, c, means.get(method.removesuffix(RECOVERY)))
        ax.plot([x for x, _ in c], [100 * y for _, y in c], alpha=0.25, linewidth=0.8,
                **{**method_style(method), "marker": None})
  ends = []
  for method, points in means.items():
    points = _after_base(method, points, means.get(method.removesuffix(RECOVERY)))
    style = method_style(method)
    ax.plot([x for x, _ in points], [y for _, y in points], markersize=4, label=method, **style)
    ends.append((points[-1][0], points[-1][1], method, style["color"]))
  ax.set_xlabel("epoch round: one epoch of each loop training in it\n(sequential: segment 0's "
                "epochs, then segment 1's, ...; recovery last)", fontsize=8)
  _integer_ticks(ax)
  ax.set_ylabel("test accuracy (%)")
  _title(ax, title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  _end_labels(ax, ends)
  return fig


def plot_accuracy_vs(documents: Sequence[Document], key: str, scale: float, xlabel: str,
                     title: str, log: bool = False) -> Figure:
  """Accuracy against a cumulative cost (`key`: "flops" or "seconds"): each seed thin, the mean
  over seeds bold (point by point); recovery methods from where their plain methods end, each
  method labelled at its end."""
  fig, axes = _figure(width=7.2)
  ax = axes[0][0]
  lines: dict[str, list[list[tuple[float, float]]]] = {}
  for document in documents:
    curves = accuracy_curves(document)
    for method, curve in curves.items():
      curve = _after_base(method, curve, curves.get(method.removesuffix(RECOVERY)))
      points = [(p[key] / scale, 100 * p["accuracy"]) for p in curve if "accuracy" in p]
      if points:
        lines.setdefault(method, []).append(points)
  ends = []
  for method, seeds in lines.items():
    style = method_style(method)
    for points in seeds if len(seeds) > 1 else []:
      ax.plot(*zip(*points), alpha=0.25, linewidth=0.8, **{**style, "marker": None})
    length = min(len(points) for points in seeds)
    mean = np.mean([points[:length] for points in seeds], axis=0)
    ax.plot(mean[:, 0], mean[:, 1], markersize=4, label=method, **style)
    ends.append((mean[-1, 0], mean[-1, 1], method, style["color"]))
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy (%)" + (", mean over seeds" if len(documents) > 1 else ""))
  if log:
    ax.set_xscale("log")
  _title(ax, title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  _end_labels(ax, ends)
  return fig


def plot_bytes_moved(documents: Sequence[Document], title: str) -> Figure:
  """Bytes moved between devices per method (mean over documents; the ledger is exact)."""
  by_method = group_runs(documents)
  methods = list(by_method)
  values = [np.mean([ledger_bytes(r.get("transfers", [])) for r in by_method[m]]) / 2**20
            for m in methods]
  fig, axes = _figure(width=7.0)
  ax = axes[0][0]
  bars = ax.bar(range(len(methods)), values, color=[method_style(m)["color"] for m in methods],
                hatch=None)
  for bar, method in zip(bars, methods, strict=True):
    if method_style(method)["linestyle"] == "--":
      bar.set_hatch("//")
      bar.set_edgecolor("white")
  ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
  ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("bytes moved between devices while training (MiB)")
  _title(ax, title)
  ax.grid(alpha=0.3, axis="y")
  return fig


def plot_memory(memory: Mapping[str, DevicePeaks], title: str) -> Figure:
  """Grouped bars: one group per method, one bar per device it used (its peak without resident
  data), each labelled with its device under it; a method on one device has one bar."""
  methods = list(memory)
  devices = list(dict.fromkeys(d for peaks in memory.values() for d in peaks))
  colors = dict(zip(devices, AXIS_COLORS, strict=False))
  fig, axes = _figure(width=7.0)
  ax = axes[0][0]
  width = 0.8 / max(len(devices), 1)
  for m, method in enumerate(methods):
    used = [d for d in devices if d in memory[method]]
    for k, device in enumerate(used):
      x = m + (k - (len(used) - 1) / 2) * width
      height = memory[method][device]["peak_without_data"] / 2**20
      ax.bar(x, height, width, color=colors[device])
      ax.annotate(device, xy=(x, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                  va="bottom", fontsize=6, rotation=90, color="white")
      ax.annotate(f"{height:,.3g}", xy=(x, height), xytext=(0, 2), textcoords="offset points",
                  ha="center", va="bottom", fontsize=7)
  ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("peak device memory without resident data (MiB)")
  _title(ax, title)
  ax.grid(alpha=0.3, axis="y")
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


def value_style(axes: Sequence[Mapping[str, Any]], key: str, value: Any) -> dict[str, Any]:
  """How one axis value shows in every sweep figure: a value of the first axis by its colour,
  of the second by its line style and marker (others add nothing)."""
  keys = [a["key"] for a in axes]
  index = keys.index(key)
  labels = [value_label(v) for v in axes[index]["values"]]
  position = labels.index(value_label(value))
  if index == 0:
    return {"color": AXIS_COLORS[position % len(AXIS_COLORS)]}
  if index == 1:
    return {"linestyle": AXIS_LINES[position % len(AXIS_LINES)],
            "marker": AXIS_MARKERS[position % len(AXIS_MARKERS)]}
  return {}


def point_style(axes: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> dict[str, Any]:
  """A line's style from the axis values it holds fixed (`value_style` of each)."""
  style: dict[str, Any] = {"color": NEUTRAL, "linestyle": "-", "marker": "o"}
  for key, value in values.items():
    style.update(value_style(axes, key, value))
  return style


def _axis_legend(fig: Figure, axes: Sequence[Mapping[str, Any]], keys: Sequence[str],
                 extra: Sequence[Any] = ()) -> None:
  """One legend for the figure: each value of `keys`, by the colour or style it is drawn in."""
  from matplotlib.lines import Line2D
  handles = list(extra)
  for key in keys:
    for value in next(a for a in axes if a["key"] == key)["values"]:
      style = value_style(axes, key, value)
      if "color" in style:  # a colour alone: a plain line of it
        style = {"linestyle": "-", "linewidth": 3, **style}
      else:
        style = {"color": NEUTRAL, **style}
      handles.append(Line2D([], [], label=f"{axis_name(key)} = {value_label(value)}",
                            markersize=5, **style))
  fig.legend(handles=handles, loc="outside right upper", fontsize=8)


def axis_name(key: str) -> str:
  """A sweep axis's short name in legends."""
  return {"sil.scale": "κ", "model.cuts": "cut", "sil.noise": "noise"}.get(key, key)


def plot_axis(summary: Mapping[str, Any], axis: Mapping[str, Any], methods: Sequence[str],
              title: str) -> Figure:
  """Mean ± std test accuracy against one axis: a panel per method, one y range for all, a line
  per value of the other axes (coloured and styled as in every sweep figure); conventional
  (grey band: mean ± std) for reference."""
  key = axis["key"]
  xs, labels, log = axis_position(axis["values"])
  position = {value_label(v): x for v, x in zip(axis["values"], xs, strict=True)}
  others = [a["key"] for a in summary["axes"] if a["key"] != key]
  cols = min(2, len(methods))
  fig, axes = _figure(math.ceil(len(methods) / cols), cols, width=5.2, height=3.8, sharey=True)
  conventional = [r for r in summary["rows"] if r["method"] == "conventional"]
  for ax, method in zip(_panels(axes, len(methods)), methods, strict=True):
    if conventional:
      _conventional_band(ax, conventional)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in summary["rows"]:
      if row["method"] == method:
        label = ", ".join(f"{k}={value_label(row['values'][k])}" for k in others)
        groups.setdefault(label, []).append(row)
    for group in groups.values():
      group.sort(key=lambda r: position[value_label(r["values"][key])])
      style = point_style(summary["axes"], {k: group[0]["values"][k] for k in others})
      ax.errorbar([position[value_label(r["values"][key])] for r in group],
                  [100 * r["accuracy_mean"] for r in group],
                  yerr=[100 * r["accuracy_std"] for r in group], markersize=4, capsize=3,
                  **style)
    ax.set_xticks(xs, labels)
    if log:
      ax.set_xscale("log")
      ax.set_xticks(xs, labels)
      ax.minorticks_off()
    ax.set_xlabel(axis_label(key))
    if _first_column(ax):
      ax.set_ylabel("test accuracy (%), mean ± std over seeds", fontsize=8)
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
  extra = []
  if conventional:
    from matplotlib.lines import Line2D
    mean = 100 * np.mean([r["accuracy_mean"] for r in conventional])
    extra.append(Line2D([], [], color="grey", linestyle="--",
                        label=f"conventional {mean:.2f}% (band: ± std)"))
  _axis_legend(fig, summary["axes"], others, extra)
  fig.suptitle(title)
  return fig


def plot_sweep_curves(points: Sequence[tuple[Mapping[str, Any], Sequence[Document]]],
                      axes_spec: Sequence[Mapping[str, Any]], methods: Sequence[str],
                      title: str) -> Figure:
  """Seed-mean test accuracy per epoch round: a panel per method, one y range for all, a line
  per point, coloured by the first axis's value and styled by the second's.

  `points`: each point's axis values and the results documents of its finished runs.
  """
  cols = min(2, len(methods))
  fig, axes = _figure(math.ceil(len(methods) / cols), cols, width=5.2, height=3.8, sharey=True)
  for ax, method in zip(_panels(axes, len(methods)), methods, strict=True):
    for values, documents in points:
      curves = [accuracy_points(run) for run in group_runs(documents).get(method, [])]
      curves = [c for c in curves if c]
      if curves:
        xs, mean = mean_curve(curves)
        ax.plot(xs, 100 * mean, linewidth=1, markersize=3.5,
                **point_style(axes_spec, values))
    ax.set_xlabel("epoch round (segments, then recovery)")
    _integer_ticks(ax)
    if _first_column(ax):
      ax.set_ylabel("test accuracy (%), mean over seeds", fontsize=8)
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
  _axis_legend(fig, axes_spec, [a["key"] for a in axes_spec])
  fig.suptitle(title)
  return fig


def _first_column(ax: Any) -> bool:
  """Whether `ax` is in its figure's first column (where the shared y axis is labelled)."""
  spec = ax.get_subplotspec()
  return spec is not None and spec.is_first_col()
