"""Curves over results documents: accuracy against epochs, FLOPs and time; bytes from ledgers.

Every function here is pure and takes the dicts `synthpart.results.results_document` writes
(results.json), so reports use them without anything else. FLOPs along a run are the analytic
counts of `synthpart.flops`, times the examples each loop has seen, plus the sequential
hand-over's forward pass; evaluating the composed network is not in them (a run records that
cost apart, `eval_flops`).

`crossing` reads where a curve reaches a target accuracy, linear in FLOPs between the evaluated
points around it; `pareto_front` keeps the points no cheaper point matches. `first_reaching` and
`time_to_accuracy` read a curve at its first point at the target, which resolves nothing finer
than the curve's points: once per epoch unless the run evaluated within epochs (`eval`
settings); `synthpart budget` measures compute to a target with `crossing`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from synthpart.flops import forward_flops, step_flops
from synthpart.records import TRAINING, Transfer

# A results document (results.json) or one of its parts, as JSON reads it.
Document = Mapping[str, Any]


def accuracy_points(run: Document) -> list[tuple[int, float]]:
  """(epoch round, test accuracy) of a run's curve at the end of every round (points inside
  rounds left out); rounds count every loop of the method. A point may name its round
  (`"round"`: a reference read out once, at the round its loop finished)."""
  ends = [p for p in run.get("curve", []) if not p.get("partial")]
  return [(p.get("round", i), p["accuracy"]) for i, p in enumerate(ends, start=1)
          if "accuracy" in p]


def document_widths(document: Document) -> tuple[int, ...]:
  """The network's layer widths (features, *hidden, classes) from a results document: the
  fallback for documents whose loops do not record their own FLOPs (dense networks only)."""
  d = document["dataset"]
  return (d["num_features"], *document["config"]["model"]["hidden"], d["num_classes"])


def loop_flops_per_example(run: Document, loop: Document, widths: Sequence[int]) -> float:
  """Training FLOPs per example of one loop (a `segments` entry) of a run (a `runs` entry),
  the optimizer's share of each step spread over the step's batch."""
  if loop.get("flops_per_step"):
    return loop["flops_per_step"] / loop["batch_size"]
  start, stop = loop["layers"]
  input_grads = run["method"] == "model-parallel" and start > 0
  step = step_flops(widths, start, stop, loop["batch_size"], loop["optimizer"], input_grads)
  return step / loop["batch_size"]


def _handover_flops(run: Document, index: int, widths: Sequence[int], num_train: int) -> int:
  """FLOPs done once before loop `index` starts: the sequential schedule's forward pass of the
  previous segment over the training set, whose outputs become this loop's inputs."""
  loop = run["segments"][index]
  if not loop["objective"].startswith("activations") or run["method"] == "model-parallel":
    return 0
  previous = run["segments"][index - 1]
  if previous.get("forward_flops"):
    return previous["forward_flops"] * num_train
  return forward_flops(widths, previous["layers"][0], loop["layers"][0]) * num_train


def accuracy_curve(run: Document, widths: Sequence[int], num_train: int) -> list[dict[str, Any]]:
  """One run's curve with cumulative training FLOPs: [{"epoch", "seconds", "flops", "accuracy"?}].

  FLOPs at a point = sum over its loops of examples seen x training FLOPs per example, plus the
  one-off forward passes of the sequential hand-over. Seconds are the run's own (training only).
  """
  per_example = [loop_flops_per_example(run, loop, widths) for loop in run["segments"]]
  out = []
  for point in run["curve"]:
    examples = point["examples"]
    flops = sum(e * f for e, f in zip(examples, per_example, strict=False))
    flops += sum(_handover_flops(run, i, widths, num_train)
                 for i, e in enumerate(examples) if e > 0 and i > 0)
    entry = {"epoch": point["epoch"], "seconds": point["seconds"], "flops": float(flops)}
    for key in ("accuracy", "partial", "steps"):
      if key in point:
        entry[key] = point[key]
    out.append(entry)
  return out


def accuracy_curves(document: Document) -> dict[str, list[dict[str, Any]]]:
  """`accuracy_curve` of every run in a results document, by method."""
  widths = document_widths(document)
  num_train = document["dataset"]["num_train"]
  return {run["method"]: accuracy_curve(run, widths, num_train) for run in document["runs"]}


def first_reaching(curve: Iterable[Document], target: float) -> Document | None:
  """The first point of a curve whose accuracy is at least `target` (no finer than the curve's
  points; `crossing` interpolates between them)."""
  for point in curve:
    if point.get("accuracy", -1.0) >= target:
      return point
  return None


def crossing(curve: Iterable[Document], target: float) -> dict[str, Any] | None:
  """Where a curve (`accuracy_curve`) first reaches `target`: {"flops", "seconds",
  "interpolated"}, or None if it never does.

  Between the last evaluated point below the target and the first at or above it, FLOPs are
  interpolated linearly in accuracy, and seconds at the same fraction of the way. A curve whose
  first evaluated point is already at the target crosses there (nothing earlier was measured:
  for the sequential schedule, its first composed network).
  """
  previous = None
  for point in curve:
    if "accuracy" not in point:
      continue
    if point["accuracy"] >= target:
      if previous is None:
        return {"flops": point["flops"], "seconds": point["seconds"], "interpolated": False}
      share = (target - previous["accuracy"]) / (point["accuracy"] - previous["accuracy"])
      return {key: previous[key] + share * (point[key] - previous[key])
              for key in ("flops", "seconds")} | {"interpolated": True}
    previous = point
  return None


def pareto_front(points: Iterable[Mapping[str, Any]], cost: str = "flops") -> list[Document]:
  """The points no other point beats: each one more accurate than every point costing at most
  as much (`cost`: "flops" or "seconds"), cheapest first. Points without accuracy are ignored."""
  front: list[Document] = []
  for point in sorted((p for p in points if "accuracy" in p),
                      key=lambda p: (p[cost], -p["accuracy"])):
    if not front or point["accuracy"] > front[-1]["accuracy"]:
      front.append(point)
  return front


def _reduction(value: float, baseline: float) -> float | None:
  return None if not baseline else 100.0 * (1.0 - value / baseline)


def time_to_accuracy(document: Document, fraction: float = 0.9,
                     baseline: str = "conventional") -> dict[str, Any]:
  """Compute and wall time to reach `fraction` of the baseline's final accuracy, read at each
  curve's first point at the target. With one point per epoch this cannot resolve a method that
  gets there inside its first epoch, and the target moves with the baseline's epoch budget:
  `synthpart budget` is the measure of the paper's headline.

  Returns {"target_accuracy", "baseline", "methods": {method: {"reached", "epoch", "flops",
  "seconds", "flops_reduction_pct", "seconds_reduction_pct", "final_accuracy", "total_flops",
  "total_seconds"}}}. Reductions are against the baseline's own first point at the target;
  positive means the method needed less. A method that never reaches it has `reached` False and
  None for the rest of the point's fields.
  """
  curves = accuracy_curves(document)
  runs = {run["method"]: run for run in document["runs"]}
  if baseline not in runs or runs[baseline].get("test_accuracy") is None:
    raise KeyError(f"no finished {baseline!r} run in the document; methods: {', '.join(runs)}")
  target = fraction * runs[baseline]["test_accuracy"]
  base = first_reaching(curves[baseline], target)
  methods = {}
  for method, curve in curves.items():
    point = first_reaching(curve, target)
    entry: dict[str, Any] = {
        "reached": point is not None, "final_accuracy": runs[method]["test_accuracy"],
        "total_flops": curve[-1]["flops"] if curve else 0.0,
        "total_seconds": runs[method]["wall_seconds"], "epoch": None, "flops": None,
        "seconds": None, "flops_reduction_pct": None, "seconds_reduction_pct": None}
    if point is not None:
      entry.update(epoch=point["epoch"], flops=point["flops"], seconds=point["seconds"])
      if base is not None:
        entry["flops_reduction_pct"] = _reduction(point["flops"], base["flops"])
        entry["seconds_reduction_pct"] = _reduction(point["seconds"], base["seconds"])
    methods[method] = entry
  return {"target_accuracy": target, "fraction": fraction, "baseline": baseline,
          "methods": methods}


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}%"


def _num(value: float | None, scale: float = 1.0, fmt: str = ".1f") -> str:
  return "-" if value is None else format(value / scale, fmt)


def format_time_to_accuracy(summary: Mapping[str, Any]) -> str:
  """A markdown table of `time_to_accuracy`."""
  lines = [(f"Target: {summary['fraction']:.0%} of {summary['baseline']}'s final accuracy = "
            f"{100 * summary['target_accuracy']:.2f}%"), "",
           ("| method | final acc | reached at epoch | GFLOP to target | FLOP reduction | "
            "s to target | time reduction | total GFLOP | total s |"),
           "|---|---|---|---|---|---|---|---|---|"]
  for method, e in summary["methods"].items():
    lines.append(f"| {method} | {100 * e['final_accuracy']:.2f}% | "
                 f"{_num(e['epoch'], fmt='.0f')} | {_num(e['flops'], 1e9)} | "
                 f"{_pct(e['flops_reduction_pct'])} | {_num(e['seconds'])} | "
                 f"{_pct(e['seconds_reduction_pct'])} | {_num(e['total_flops'], 1e9)} | "
                 f"{_num(e['total_seconds'])} |")
  return "\n".join(lines)


def ledger_bytes(transfers: Iterable[Transfer | Mapping[str, Any]],
                 kind: str | None = TRAINING) -> int:
  """Total bytes of a transfer ledger (`Transfer`s, or their dicts from a results document) of
  one kind: training by default (records without a kind are training), every kind for None."""
  total = 0
  for t in transfers:
    record = t if isinstance(t, Mapping) else dataclasses.asdict(t)
    if kind is None or record.get("kind", TRAINING) == kind:
      total += record["bytes"]
  return int(total)
