"""Sweeps: a grid of configurations from one TOML file, run resumably, summarised as one table.

A sweep file::

  base = "../fashion_mnist.toml"     # a config file (relative to this file), or a [base] table
  seeds = [0, 1, 2]                  # every point runs once per seed; mean ± std over them
  methods = ["conventional", "sequential", "parallel"]   # or "compare" or "train"

  [set]                              # fixed dotted overrides of the base
  "train.epochs" = 5

  [axes]                             # the grid: every combination of these values
  "sil.scale" = [0.1, 1, 10]
  "model.cuts" = [[1], [2], [3], [4], [5]]

Keys may be quoted dotted names or nested tables (``[axes.sil] scale = [...]``); both mean the
same setting. `methods`:

- ``"compare"``: `experiment.compare` at every point (conventional included, per point).
- ``"train"``: `experiment.train_one` at every point (the config's schedule, + recovery).
- a list of ``"conventional"``, ``"sequential"``, ``"parallel"``: each schedule at every point,
  with recovery when ``recovery.epochs > 0``. Conventional training does not depend on the cut,
  the SIL or the schedule, so it runs once per seed and per distinct remaining config (a
  "baseline") and every point sharing it is compared with it.

Layout of the output directory::

  DIR/sweep.json                     the sweep as run: axes, seeds, methods, points
  DIR/<point>/seed-<s>/results.json  one run (a point's name is built from its axis values)
  DIR/baseline-<hash>/seed-<s>/results.json
  DIR/summary.json, DIR/summary.md   mean ± std test accuracy and wall seconds per point, method

A (point, seed) whose results.json exists with the same settings is skipped, so rerunning the
same command continues an interrupted sweep.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from synthpart import config as config_lib
from synthpart import experiment as exp
from synthpart.data import Dataset
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.progress import Progress
from synthpart.results import METHODS, MethodResult, results_document
from synthpart.setup import Loader, read_dataset, select_devices, with_validation
from synthpart.tblog import write_tensorboard
from synthpart.train.problem import Problem, make_problem

SCHEDULE_METHODS = ("conventional", "sequential", "parallel")
WHOLE_METHODS = ("compare", "train")
SWEEP_KEYS = ("base", "seeds", "methods", "set", "axes")
# Settings that only shape the partitioned methods: reset to build the conventional baseline.
PARTITION_ONLY = ("model.cuts", "sil", "segments", "recovery", "schedule")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A parsed sweep file: base settings (nested, as TOML), axes, seeds and methods."""
  base: Mapping[str, Any]
  axes: tuple[tuple[str, tuple[Any, ...]], ...]
  seeds: tuple[int, ...]
  methods: str | tuple[str, ...]
  source: str = ""


@dataclasses.dataclass(frozen=True)
class Point:
  """One grid point: its axis values, its name (a directory) and its config per seed."""
  name: str
  values: tuple[tuple[str, Any], ...]
  configs: tuple[config_lib.Config, ...]  # one per seed, in the sweep's seed order


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested tables -> dotted keys; lists and scalars are leaves."""
  out: dict[str, Any] = {}
  for key, value in table.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{dotted}."))
    else:
      out[dotted] = value
  return out


def parse_sweep(values: Mapping[str, Any], directory: Path = Path("."), source: str = "") -> Sweep:
  """Checks a parsed sweep document; `directory` resolves a relative `base` path."""
  unknown = sorted(set(values) - set(SWEEP_KEYS))
  if unknown:
    raise ConfigError(f"unknown sweep key {unknown[0]}; allowed: {', '.join(SWEEP_KEYS)}")
  base = _base_values(values.get("base", {}), directory)
  for key, value in flatten(values.get("set", {})).items():
    config_lib.set_dotted(base, key, value)
  axes = []
  for key, axis in flatten(values.get("axes", {})).items():
    if key == "seed":
      raise ConfigError("seed cannot be an axis: list the seeds in `seeds = [...]`")
    if not isinstance(axis, list) or not axis:
      raise ConfigError(f"axis {key} must be a non-empty list of values, got {axis!r}")
    if len({json.dumps(v, sort_keys=True) for v in axis}) != len(axis):
      raise ConfigError(f"axis {key} repeats a value: {axis!r}")
    axes.append((key, tuple(_freeze(v) for v in axis)))
  seeds = values.get("seeds", [0, 1, 2])
  if (not isinstance(seeds, list) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
      or len(set(seeds)) != len(seeds)):
    raise ConfigError(f"seeds must be a list of distinct non-negative integers, got {seeds!r}")
  return Sweep(base=base, axes=tuple(axes), seeds=tuple(seeds),
               methods=_parse_methods(values.get("methods", "compare")), source=source)


def _base_values(base: Any, directory: Path) -> dict[str, Any]:
  if isinstance(base, str):
    path = Path(base) if Path(base).is_absolute() else directory / base
    try:
      return tomllib.loads(path.read_text())
    except FileNotFoundError:
      raise ConfigError(f"sweep base config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"sweep base config {path} is not valid TOML: {e}") from None
  if isinstance(base, Mapping):
    return json.loads(json.dumps(base))  # a deep, plain copy that set_dotted may change
  raise ConfigError(f"sweep base must be a config path or a table, got {base!r}")


def _parse_methods(methods: Any) -> str | tuple[str, ...]:
  if isinstance(methods, str) and methods in WHOLE_METHODS:
    return methods
  if (isinstance(methods, list) and methods
      and all(isinstance(m, str) and m in SCHEDULE_METHODS for m in methods)
      and len(set(methods)) == len(methods)):
    return tuple(methods)
  raise ConfigError(f"methods must be \"compare\", \"train\" or a list of distinct "
                    f"{', '.join(SCHEDULE_METHODS)}; got {methods!r}")


def _freeze(value: Any) -> Any:
  """Lists become tuples so that axis values hash and compare."""
  return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
  return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def load_sweep(path: str | Path) -> Sweep:
  """Reads and checks a sweep file."""
  path = Path(path)
  try:
    values = tomllib.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f"sweep file {path} does not exist") from None
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(f"sweep file {path} is not valid TOML: {e}") from None
  return parse_sweep(values, path.parent, str(path))


def format_value(value: Any) -> str:
  """A short, stable text for an axis value: 0.1, 10, 1+3, uniform."""
  if isinstance(value, tuple):
    return "+".join(format_value(v) for v in value) or "none"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def point_name(values: Sequence[tuple[str, Any]]) -> str:
  """A directory name from a point's axis values, e.g. ``sil.scale=0.1,model.cuts=3``.

  Characters outside ``[A-Za-z0-9._+=,-]`` become ``_``; very long names keep a prefix and gain a
  hash of the whole, so names stay unique and deterministic.
  """
  if not values:
    return "base"
  text = ",".join(f"{key}={format_value(v)}" for key, v in values)
  name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", text)
  if len(name) > 120:
    name = f"{name[:100]}-{_digest(text)}"
  return name


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def expand(sweep: Sweep) -> list[Point]:
  """Every combination of the axes' values (the first axis varies slowest), validated."""
  keys = [key for key, _ in sweep.axes]
  points = []
  for combo in itertools.product(*(values for _, values in sweep.axes)):
    values = tuple(zip(keys, combo))
    configs = tuple(point_config(sweep.base, values, seed) for seed in sweep.seeds)
    points.append(Point(point_name(values), values, configs))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ConfigError("two sweep points get the same directory name; make the axis values "
                      "distinguishable")
  return points


def point_config(base: Mapping[str, Any], values: Iterable[tuple[str, Any]],
                 seed: int) -> config_lib.Config:
  """The base settings with a point's axis values and the seed, as a validated Config."""
  nested = json.loads(json.dumps(base))
  for key, value in values:
    config_lib.set_dotted(nested, key, _thaw(value))
  nested["seed"] = seed
  try:
    return config_lib.from_dict(nested)
  except ConfigError as e:
    where = ", ".join(f"{k}={format_value(v)}" for k, v in values) or "the base"
    raise ConfigError(f"sweep point {where}: {e}") from None


def baseline_config(config: config_lib.Config) -> config_lib.Config:
  """The config with every partition-only setting at its default and no cuts.

  Conventional training reads none of those, so points that differ only in them share one
  baseline run per seed.
  """
  default = config_lib.Config()
  return dataclasses.replace(
      config, model=dataclasses.replace(config.model, cuts=()), sil=default.sil, segments=(),
      recovery=default.recovery, schedule=default.schedule)


def baseline_name(config: config_lib.Config) -> str:
  """``baseline-<hash>`` of the seedless baseline settings: equal settings, equal directory."""
  return f"baseline-{_digest(json.dumps(non_default(baseline_config(config)), sort_keys=True))}"


def non_default(config: config_lib.Config) -> dict[str, Any]:
  """The seedless settings that differ from the defaults, by dotted name: a stable identity
  (a setting added to synthpart later, at its default, does not change it)."""
  settings = flatten(json.loads(json.dumps(config.to_dict())))
  defaults = flatten(json.loads(json.dumps(config_lib.Config().to_dict())))
  settings.pop("seed")
  return {k: v for k, v in settings.items() if k not in defaults or defaults[k] != v}


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run of the sweep: where its results go and which experiment makes them."""
  directory: str  # relative to the sweep's output directory
  config: config_lib.Config
  kind: str  # "compare" | "train" | "schedules" | "baseline"
  schedules: tuple[str, ...] = ()


def jobs(sweep: Sweep, points: Sequence[Point]) -> list[Job]:
  """The runs a sweep needs, baselines first (each once), then every point and seed."""
  out: list[Job] = []
  seen: set[str] = set()
  methods = sweep.methods
  if isinstance(methods, tuple) and "conventional" in methods:
    for point in points:
      for config in point.configs:
        directory = f"{baseline_name(config)}/seed-{config.seed}"
        if directory not in seen:
          seen.add(directory)
          out.append(Job(directory, baseline_config(config), "baseline"))
  for point in points:
    for config in point.configs:
      directory = f"{point.name}/seed-{config.seed}"
      if isinstance(methods, str):
        out.append(Job(directory, config, methods))
      else:
        schedules = tuple(m for m in methods if m != "conventional")
        if schedules:
          out.append(Job(directory, config, "schedules", schedules))
  return out


def is_done(path: Path, config: config_lib.Config) -> bool:
  """True when `path` holds results of exactly `config`; a mismatch is an error, not a redo."""
  if not path.exists():
    return False
  try:
    document = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return False  # a broken file is redone
  if stored_config(document.get("config")) != config:
    raise ConfigError(f"{path} holds results of other settings than this sweep's; use another "
                      "--out or remove that directory")
  return True


def stored_config(settings: Any) -> config_lib.Config | None:
  """The Config a results document was run with, settings added since then at their defaults
  (so results stay reusable when a new setting appears); None if it no longer loads."""
  if not isinstance(settings, Mapping):
    return None
  try:
    return config_lib.from_dict(settings)
  except ConfigError:
    return None


def _experiment(job: Job) -> tuple[str, Callable[[Problem, Progress], list[MethodResult]]]:
  if job.kind == "compare":
    return "compare", exp.compare
  if job.kind == "schedules":
    return "sweep", lambda problem, progress: exp.run_schedules(problem, progress, job.schedules)
  return "train", exp.train_one  # "train", and "baseline" (no cuts: conventional)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a sweep runs: devices (0: one per segment), quiet inner bars, TensorBoard logs."""
  devices: int = 0
  verbose: bool = False
  tensorboard: bool = False
  show_progress: bool = True


def run_sweep(sweep: Sweep, out: str | Path, options: RunOptions = RunOptions(),
              load: Loader | None = None) -> dict[str, Any]:
  """Runs every job not yet done, then writes the summary; returns the summary document.

  `load(data_config)` returns a dataset (default: `synthpart.data.load_dataset`); each distinct
  dataset is loaded once per sweep.
  """
  out = Path(out)
  points = expand(sweep)
  todo = jobs(sweep, points)
  write_json_atomic(out / "sweep.json", sweep_document(sweep, points))
  pending = [j for j in todo if not is_done(out / j.directory / "results.json", j.config)]
  devices = select_devices(options.devices, max(j.config.num_devices for j in todo))
  datasets: dict[tuple[Any, ...], Any] = {}
  bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="run", desc="sweep",
             dynamic_ncols=True, file=sys.stderr, disable=not options.show_progress)
  for job in pending:
    bar.set_postfix_str(job.directory, refresh=True)
    dataset = _dataset(job.config, datasets, load)
    wanted = options.devices or job.config.model.num_segments
    problem = make_problem(job.config, dataset, devices[:wanted])
    command, experiment = _experiment(job)
    runs = experiment(problem, Progress(quiet=not options.verbose))
    document = results_document(command, problem, dataset.source, runs)
    run_dir = out / job.directory
    write_json_atomic(run_dir / "results.json", document)
    if options.tensorboard:
      write_tensorboard(document, run_dir / "tensorboard")
    bar.update(1)
  bar.close()
  summary = summarize(out)
  write_summary(out, summary)
  return summary


def _dataset(config: config_lib.Config, cache: dict[tuple[Any, ...], Dataset],
             load: Loader | None) -> Dataset:
  """The config's dataset, read once per distinct source; the validation split is per seed."""
  d = config.data
  key = (d.name, d.data_dir, d.download)
  if key not in cache:
    cache[key] = (load or functools.partial(read_dataset, progress=False))(d)
  return with_validation(cache[key], config)


def sweep_document(sweep: Sweep, points: Sequence[Point]) -> dict[str, Any]:
  """sweep.json: enough to find every run and group it by its axis values."""
  methods = sweep.methods if isinstance(sweep.methods, str) else list(sweep.methods)
  return {
      "schema": 1,
      "source": sweep.source,
      "axes": [{"key": key, "values": [_thaw(v) for v in values]} for key, values in sweep.axes],
      "seeds": list(sweep.seeds),
      "methods": methods,
      "base": sweep.base,
      "points": [{
          "name": p.name,
          "values": {key: _thaw(v) for key, v in p.values},
          "runs": [f"{p.name}/seed-{c.seed}" for c in p.configs],
          "baselines": ([f"{baseline_name(c)}/seed-{c.seed}" for c in p.configs]
                        if isinstance(sweep.methods, tuple) and "conventional" in sweep.methods
                        else []),
      } for p in points],
  }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value; nan for none)."""
  if not values:
    return math.nan, math.nan
  array = np.asarray(values, float)
  return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize(out: str | Path) -> dict[str, Any]:
  """Reads sweep.json and every finished run; mean ± std per point and method over seeds."""
  out = Path(out)
  document = json.loads((out / "sweep.json").read_text())
  rows = []
  for point in document["points"]:
    per_method: dict[str, dict[str, list[float]]] = {}
    for run_dir in point["runs"] + point["baselines"]:
      path = out / run_dir / "results.json"
      if not path.exists():
        continue
      for run in json.loads(path.read_text())["runs"]:
        stats = per_method.setdefault(run["method"], {"accuracy": [], "wall": []})
        stats["accuracy"].append(run["test_accuracy"])
        stats["wall"].append(run["wall_seconds"])
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
    cells = [format_value(_freeze(row["values"][k])) for k in keys] + [
        row["method"], str(row["seeds"]),
        f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}", delta,
        f"{row['wall_seconds_mean']:.1f} ± {row['wall_seconds_std']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def add_sweep_commands(sub: Any) -> None:
  """Registers `synthpart sweep` on the command line's subparsers."""
  p = sub.add_parser("sweep", help="run a grid of configurations from a sweep TOML file")
  p.add_argument("file", help="sweep TOML file (see experiments/sweeps/)")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="output directory; rerunning with the same DIR skips finished runs")
  p.add_argument("--devices", type=int, default=0, metavar="N",
                 help="devices to spread segments over (default: one per segment)")
  p.add_argument("--tensorboard", action="store_true",
                 help="write TensorBoard event files beside each run's results.json")
  p.add_argument("--compile-cache", default=None, metavar="DIR",
                 help="JAX's persistent compilation cache (default ~/.cache/synthpart/jax; \"none\" "
                      "to disable): points that differ only in values, not shapes, reuse "
                      "compiled loops")
  p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
  p.add_argument("-v", "--verbose", action="store_true", help="progress bars of every loop")
  p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
  p.set_defaults(func=_sweep_command)


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/synthpart/jax, else ~/.cache/synthpart/jax: outside any results tree."""
  root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return str(Path(root) / "synthpart" / "jax")


def enable_compile_cache(directory: str) -> None:
  """Turns on JAX's on-disk compilation cache for this process ("none": leaves it off).

  A sweep compiles the same loops over and over (a new seed or kappa changes values, not
  shapes); the cache turns those compiles into reads.
  """
  if directory.lower() == "none":
    return
  Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _sweep_command(args: Any) -> int:
  sweep = load_sweep(args.file)
  if args.devices < 0:
    raise ConfigError(f"--devices must be >= 0, got {args.devices}")
  points = expand(sweep)
  todo = jobs(sweep, points)
  if args.dry_run:
    out = Path(args.out)
    for job in todo:
      done = is_done(out / job.directory / "results.json", job.config)
      print(f"{'done ' if done else 'to do'}  {job.directory}")
    print(f"{len(points)} points x {len(sweep.seeds)} seeds: {len(todo)} runs")
    return 0
  enable_compile_cache(args.compile_cache or default_cache_dir())
  start = time.perf_counter()
  summary = run_sweep(sweep, args.out, RunOptions(
      devices=args.devices, verbose=args.verbose and not args.quiet,
      tensorboard=args.tensorboard, show_progress=not args.quiet))
  print(summary_markdown(summary))
  print(f"summary: {Path(args.out) / 'summary.md'} ({time.perf_counter() - start:.0f} s)")
  return 0
