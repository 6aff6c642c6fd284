"""A sweep file parsed and expanded: its points, their names and configs, and sweep.json.

Axis values are frozen (lists become tuples) so they hash and compare; `format_value` and
`value_label` give each one the short, stable text that point names, tables and figures use.

`check_plan` keeps a directory's plan file (sweep.json, a budget's budget.json) true to its runs:
a rerun into a directory whose plan says other settings is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from synthpart import config as config_lib
from synthpart.config import flatten
from synthpart.errors import ConfigError
from synthpart.files import read_user_bytes

SCHEDULE_METHODS = ("conventional", *config_lib.SCHEDULES.names)
WHOLE_METHODS = ("compare", "train")
SWEEP_KEYS = ("base", "seeds", "methods", "set", "axes")
# Settings that only shape the partitioned methods: reset to build the conventional baseline.
PARTITION_ONLY = ("model.cuts", "sil", "segments", "recovery", "schedule", "pipeline")


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


def freeze(value: Any) -> Any:
  """Lists become tuples so that axis values hash and compare."""
  return tuple(freeze(v) for v in value) if isinstance(value, list) else value


def thaw(value: Any) -> Any:
  """Tuples become lists again, as JSON and TOML write them."""
  return [thaw(v) for v in value] if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
  """A short, stable text for a frozen axis value: 0.1, 10, 1+3, uniform."""
  if isinstance(value, tuple):
    return "+".join(format_value(v) for v in value) or "none"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def value_label(value: Any) -> str:
  """`format_value` of an axis value as JSON reads it (lists for tuples)."""
  return format_value(freeze(value))


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
    axes.append((key, tuple(freeze(v) for v in axis)))
  seeds = values.get("seeds", [0, 1, 2])
  if (not isinstance(seeds, list) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
      or len(set(seeds)) != len(seeds)):
    raise ConfigError(f"seeds must be a list of distinct non-negative integers, got {seeds!r}")
  return Sweep(base=base, axes=tuple(axes), seeds=tuple(seeds),
               methods=_parse_methods(values.get("methods", "compare")), source=source)


PARSERS: dict[str, Callable[[str], Any]] = {"JSON": json.loads, "TOML": tomllib.loads}


def read_document(path: Path, kind: str, what: str = "") -> Any:
  """A JSON or TOML file (`kind`) parsed; missing, a directory, unreadable or malformed, a
  one-line `ConfigError` naming it (`what`, e.g. "sweep file", before its path)."""
  where = f"{what} {path}" if what else str(path)
  raw = read_user_bytes(path, where, ConfigError)
  try:
    return PARSERS[kind](raw.decode())
  except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
    raise ConfigError(f"{where} is not valid {kind}: {e}") from None


def _base_values(base: Any, directory: Path) -> dict[str, Any]:
  if isinstance(base, str):
    path = Path(base) if Path(base).is_absolute() else directory / base
    return read_document(path, "TOML", "sweep base config")
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


def load_sweep(path: str | Path) -> Sweep:
  """Reads and checks a sweep file."""
  path = Path(path)
  return parse_sweep(read_document(path, "TOML", "sweep file"), path.parent, str(path))


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
    values = tuple(zip(keys, combo, strict=True))
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
    config_lib.set_dotted(nested, key, thaw(value))
  nested["seed"] = seed
  try:
    return config_lib.from_dict(nested)
  except ConfigError as e:
    where = ", ".join(f"{k}={format_value(v)}" for k, v in values) or "the base"
    raise ConfigError(f"sweep point {where}: {e}") from None


def baseline_config(config: config_lib.Config) -> config_lib.Config:
  """The config with every partition-only setting at its default and no cuts.

  Conventional training reads none of those, so points that differ only in them share one
  baseline run per seed. It trains the whole network on the first segment's device group, so
  its placement is that group's size, as `devices_per_segment` of its one segment (per-segment
  `placement.groups` would not fit a network without cuts).
  """
  default = config_lib.Config()
  first = config.placement.sizes(config.model.num_segments)[0]
  placement = dataclasses.replace(config.placement, groups=(), devices_per_segment=first)
  return dataclasses.replace(
      config, model=dataclasses.replace(config.model, cuts=()), sil=default.sil, segments=(),
      recovery=default.recovery, schedule=default.schedule, placement=placement)


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


def has_baselines(sweep: Sweep) -> bool:
  """Whether conventional training runs apart, once per seed and distinct baseline config."""
  return isinstance(sweep.methods, tuple) and "conventional" in sweep.methods


def sweep_document(sweep: Sweep, points: Sequence[Point]) -> dict[str, Any]:
  """sweep.json: enough to find every run and group it by its axis values."""
  methods = sweep.methods if isinstance(sweep.methods, str) else list(sweep.methods)
  return {
      "schema": 1,
      "source": sweep.source,
      "axes": [{"key": key, "values": [thaw(v) for v in values]} for key, values in sweep.axes],
      "seeds": list(sweep.seeds),
      "methods": methods,
      "base": sweep.base,
      "points": [{
          "name": p.name,
          "values": {key: thaw(v) for key, v in p.values},
          "runs": [f"{p.name}/seed-{c.seed}" for c in p.configs],
          "baselines": ([f"{baseline_name(c)}/seed-{c.seed}" for c in p.configs]
                        if has_baselines(sweep) else []),
      } for p in points],
  }


# Plan keys that say where the file was, not what it asks: a copy run from elsewhere is the same.
PLAN_IGNORED = ("source",)


def plan_differences(stored: Any, new: Mapping[str, Any],
                     ignored: Sequence[str] = PLAN_IGNORED) -> list[str]:
  """The top-level keys in which plan document `stored` (as read back) differs from `new`,
  sorted, `ignored` keys left out; every key where `stored` is not a JSON object."""
  plain = json.loads(json.dumps(new))  # tuples become lists, as stored
  if not isinstance(stored, Mapping):
    return sorted(plain)
  keys = (set(stored) | set(plain)) - set(ignored)
  return sorted(k for k in keys if stored.get(k) != plain.get(k))


def check_plan(path: Path, new: Mapping[str, Any], what: str,
               ignored: Sequence[str] = PLAN_IGNORED) -> None:
  """Refuses, in one line (`ConfigError`), a plan file `path` already there that differs from
  `new` (its `ignored` keys aside): its runs were made for other settings. `what` names the
  command (sweep, budget search) in the message. A missing `path` passes."""
  if not path.exists():
    return
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} cannot be read ({e.__class__.__name__}), so its runs cannot be "
                      f"matched to this {what}; use another --out") from None
  differ = plan_differences(stored, new, ignored)
  if differ:
    shown = ", ".join(differ[:3]) + (", ..." if len(differ) > 3 else "")
    raise ConfigError(f"{path} holds results of other settings than this {what}'s ({shown} "
                      "differ); use another --out, or rerun the file that made them")
