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

A (point, seed) whose results.json exists with the same settings and every method it trains is
skipped, so rerunning the same command continues an interrupted sweep; a rerun whose sweep.json
would differ (another file into the same DIR) is refused before anything is written. One sweep
at a time uses DIR (`synthpart.rundir.claim`: locked until it ends), and a directory another
command wrote (a run, a budget...) is refused.

Modules, top-down: `grid` (the file parsed, its points, names and configs, sweep.json), `summary`
(mean ± std per point and method, from the results files), `run` (the jobs, run resumably),
`command` (the command line).
"""

from __future__ import annotations

from synthpart.sweep.command import add_sweep_commands, default_cache_dir, enable_compile_cache
from synthpart.sweep.grid import (
    Point,
    Sweep,
    baseline_config,
    baseline_name,
    expand,
    flatten,
    format_value,
    freeze,
    load_sweep,
    non_default,
    parse_sweep,
    point_config,
    point_name,
    read_document,
    sweep_document,
    thaw,
    value_label,
)
from synthpart.sweep.run import (
    Datasets,
    Job,
    RunOptions,
    is_done,
    job_experiment,
    job_methods,
    jobs,
    run_job,
    run_sweep,
    stored_config,
)
from synthpart.sweep.summary import mean_std, summarize, summary_markdown, write_summary

__all__ = [
    "Datasets", "Job", "Point", "RunOptions", "Sweep", "add_sweep_commands", "baseline_config",
    "baseline_name", "default_cache_dir", "enable_compile_cache", "expand", "flatten",
    "format_value", "freeze", "is_done", "job_experiment",
    "job_methods", "jobs", "load_sweep", "mean_std",
    "non_default", "parse_sweep", "point_config", "point_name", "read_document", "run_job",
    "run_sweep", "stored_config", "summarize", "summary_markdown", "sweep_document", "thaw",
    "value_label", "write_summary",
]
