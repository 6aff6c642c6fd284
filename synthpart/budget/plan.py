"""A budget file parsed: the reference run, each method's grid of budgets, as sweeps.

Every grid is a `synthpart.sweep.Sweep` over the same base settings and seeds, so that running,
resuming and naming reuse the sweep machinery: the reference is a sweep of conventional training
without axes, each method a sweep of that method alone over its own axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthpart import config as config_lib
from synthpart.config import flatten
from synthpart.errors import ConfigError
from synthpart.sweep.grid import Sweep, parse_sweep, read_document

BUDGET_KEYS = ("base", "seeds", "fraction", "set", "reference", "methods")
METHOD_KEYS = ("set", "axes")
REFERENCE = "reference"
CONVENTIONAL = "conventional"
DEFAULT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Budget:
  """A parsed budget file: the target's fraction, the reference sweep, one sweep per method."""
  fraction: float
  seeds: tuple[int, ...]
  reference: Sweep
  methods: tuple[tuple[str, Sweep], ...]
  source: str = ""

  @property
  def sweeps(self) -> tuple[tuple[str, Sweep], ...]:
    """Every sweep by its directory name: the reference first, then the methods in order."""
    return ((REFERENCE, self.reference), *self.methods)

  @property
  def grid_size(self) -> int:
    """Budgets per method (the same for every method)."""
    return grid_size(self.methods[0][1])


def method_names() -> tuple[str, ...]:
  """The methods a budget may search: conventional training and every schedule."""
  return (CONVENTIONAL, *config_lib.SCHEDULES.names)


def grid_size(sweep: Sweep) -> int:
  """Points of a sweep's grid: the product of its axes' lengths."""
  return math.prod(len(values) for _, values in sweep.axes)


def _table(values: Any, where: str) -> Mapping[str, Any]:
  if not isinstance(values, Mapping):
    raise ConfigError(f"{where} must be a table, got {values!r}")
  return values


def _method_sweep(name: str, table: Any, common: dict[str, Any], base: Any, seeds: Any,
                  directory: Path, source: str) -> Sweep:
  table = _table(table, f"methods.{name}")
  unknown = sorted(set(table) - set(METHOD_KEYS))
  if unknown:
    raise ConfigError(f"unknown key methods.{name}.{unknown[0]}; allowed: "
                      f"{', '.join(METHOD_KEYS)}")
  settings = {**common, **flatten(_table(table.get("set", {}), f"methods.{name}.set"))}
  return parse_sweep({"base": base, "seeds": seeds, "methods": [name], "set": settings,
                      "axes": _table(table.get("axes", {}), f"methods.{name}.axes")},
                     directory, source)


def parse_budget(values: Mapping[str, Any], directory: Path = Path("."),
                 source: str = "") -> Budget:
  """Checks a parsed budget document; `directory` resolves a relative `base` path."""
  unknown = sorted(set(values) - set(BUDGET_KEYS))
  if unknown:
    raise ConfigError(f"unknown budget key {unknown[0]}; allowed: {', '.join(BUDGET_KEYS)}")
  fraction = values.get("fraction", DEFAULT_FRACTION)
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
      or not 0 < fraction <= 1):
    raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
  methods = _table(values.get("methods", {}), "methods")
  allowed = method_names()
  for name in methods:
    if name not in allowed:
      raise ConfigError(f"unknown method {name!r} in [methods]; allowed: {', '.join(allowed)}")
  if CONVENTIONAL not in methods or len(methods) < 2:
    raise ConfigError("[methods] must give conventional and at least one schedule: the "
                      "reduction is against conventional training")
  base, seeds = values.get("base", {}), values.get("seeds", [0, 1, 2])
  common = flatten(_table(values.get("set", {}), "set"))
  reference = {**common, **flatten(_table(values.get(REFERENCE, {}), REFERENCE))}
  reference_sweep = parse_sweep({"base": base, "seeds": seeds, "methods": [CONVENTIONAL],
                                 "set": reference}, directory, source)
  sweeps = tuple((name, _method_sweep(name, table, common, base, seeds, directory, source))
                 for name, table in methods.items())
  sizes = {name: grid_size(sweep) for name, sweep in sweeps}
  if len(set(sizes.values())) != 1:
    raise ConfigError("every method must search a grid of the same size (equal effort); got "
                      + ", ".join(f"{name} {size}" for name, size in sizes.items()))
  return Budget(fraction=float(fraction), seeds=reference_sweep.seeds,
                reference=reference_sweep, methods=sweeps, source=source)


def load_budget(path: str | Path) -> Budget:
  """Reads and checks a budget file."""
  path = Path(path)
  return parse_budget(read_document(path, "TOML", "budget file"), path.parent, str(path))


def budget_document(budget: Budget) -> dict[str, Any]:
  """The plan as budget.json records it: where each sweep's runs are, the fraction, seeds."""
  return {"schema": 1, "source": budget.source, "fraction": budget.fraction,
          "seeds": list(budget.seeds), "grid_size": budget.grid_size,
          "reference": REFERENCE, "methods": [name for name, _ in budget.methods]}
