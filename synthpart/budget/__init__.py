"""Budget searches: the compute each method needs to reach a fixed fraction of conventional
training's accuracy, over grids of per-loop budgets and seeds, with confidence intervals.

A budget file::

  base = "../fashion_mnist.toml"     # a config file (relative to this file), or a [base] table
  seeds = [0, 1, 2]                  # every run once per seed
  fraction = 0.9                     # target: this fraction of the reference's accuracy

  [set]                              # every run: held-out validation, evaluation within epochs
  "data.validation_size" = 5000
  "eval.every_steps" = 25
  "eval.log_spaced" = true

  [reference]                        # conventional training to convergence: sets the target
  "train.epochs" = 10

  [methods.conventional.set]         # each method: fixed settings and a grid of budgets
  "train.epochs" = 1
  [methods.conventional.axes]
  "train.learning_rate" = [1e-3, 2e-3]
  "train.batch_size" = [64, 128]

  [methods.sequential.axes]          # per-loop budgets: segments.K.steps, .batch_size, ...
  "segments.0.steps" = [100, 300]
  "train.learning_rate" = [1e-3, 2e-3]

Every method searches a grid of the same size (equal effort). The target is `fraction` x the
reference runs' final accuracy on the evaluated split, mean over seeds. Each run's compute to the
target is read where its curve crosses it, interpolated between evaluations
(`synthpart.curves.crossing`); the evaluations' own cost is recorded apart and is in no method's
compute. See `synthpart.budget.analysis` for how budgets, reductions and intervals are formed.

Layout of the output directory::

  DIR/budget.json                    the plan, and the analysis once the runs are done
  DIR/budget.md                      the tables
  DIR/reference/...                  a sweep directory (`synthpart.sweep`): the reference runs
  DIR/<method>/...                   a sweep directory per method: its grid's runs

Rerunning the same command skips every run whose results exist. One search at a time uses DIR
(`synthpart.rundir.claim`), and a directory another command wrote is refused. Modules, top-down:
`plan` (the file), `stats` (t-intervals), `analysis` (from the files), `summary` (Markdown),
`run`, `command`.
"""

from __future__ import annotations

from synthpart.budget.analysis import analyze, reduction, run_curve
from synthpart.budget.command import add_budget_command
from synthpart.budget.plan import Budget, load_budget, parse_budget
from synthpart.budget.run import budget_jobs, run_budget
from synthpart.budget.stats import t_interval, t_quantile
from synthpart.budget.summary import budget_markdown

__all__ = [
    "Budget", "add_budget_command", "analyze", "budget_jobs", "budget_markdown", "load_budget",
    "parse_budget", "reduction", "run_budget", "run_curve", "t_interval", "t_quantile",
]
