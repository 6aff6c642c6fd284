"""Running a budget search: every sweep's jobs, seed by seed, each skipped once its results exist.

Jobs run seed by seed (the reference, then every method's grid, for seed 0; then seed 1...), so an
interrupted search already holds whole seeds to analyse. Rerunning the same command continues it:
a job whose results.json holds the same settings is not run again, and one trained on other data
(another fingerprint) stops the search (`synthpart.sweep.is_done`).

A rerun with another budget file (other settings, fraction, seeds or methods) is refused before
anything is written: budget.json (its analysis aside) and every sweep's sweep.json must be those
this file makes (`synthpart.sweep.grid.check_plan`), and every job's results of its settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from synthpart.budget.analysis import analyze
from synthpart.budget.plan import Budget, budget_document
from synthpart.budget.summary import budget_markdown
from synthpart.files import write_json_atomic
from synthpart.prepare import Loader
from synthpart.rundir import claim, refuse_foreign
from synthpart.sweep.grid import PLAN_IGNORED, check_plan, expand, sweep_document
from synthpart.sweep.run import Datasets, Job, RunOptions, check_jobs, jobs, pending, run_jobs
from synthpart.sweep.summary import summarize, write_summary


def budget_jobs(budget: Budget) -> list[Job]:
  """Every job of every sweep, its directory under the budget's, seed by seed."""
  out = []
  for seed in budget.seeds:
    for name, sweep in budget.sweeps:
      out += [dataclasses.replace(job, directory=f"{name}/{job.directory}")
              for job in jobs(sweep, expand(sweep)) if job.config.seed == seed]
  return out


def pending_jobs(budget: Budget, out: Path, datasets: Datasets | None = None) -> list[Job]:
  """The jobs whose results are not yet under `out` (with `datasets`: refusing results of other
  data than theirs)."""
  return pending(budget_jobs(budget), out, datasets)


def check_plans(budget: Budget, out: Path) -> None:
  """Refuses (`ConfigError`), writing nothing, an `out` whose budget.json (its analysis aside) or
  any sweep's sweep.json differs from what `budget` would write, and (`CheckpointError`) a
  sweep's directory that another command wrote."""
  check_plan(out / "budget.json", budget_document(budget), "budget search",
             (*PLAN_IGNORED, "analysis"))
  for name, sweep in budget.sweeps:
    refuse_foreign(out / name, "sweep")
    check_plan(out / name / "sweep.json", sweep_document(sweep, expand(sweep)), "budget search")


def write_plan(budget: Budget, out: Path) -> None:
  """budget.json (the plan; the analysis joins it when the runs are done) and every sweep's
  sweep.json; `check_plans` first refuses a directory of other settings before any is written."""
  check_plans(budget, out)
  write_json_atomic(out / "budget.json", budget_document(budget))
  for name, sweep in budget.sweeps:
    write_json_atomic(out / name / "sweep.json", sweep_document(sweep, expand(sweep)))


def write_outcome(budget: Budget, out: Path) -> dict[str, Any]:
  """Every sweep's summary, then the analysis in budget.json and budget.md; returns it."""
  for name, _ in budget.sweeps:
    write_summary(out / name, summarize(out / name))
  analysis = analyze(out)
  write_json_atomic(out / "budget.json", {**budget_document(budget), "analysis": analysis})
  text = budget_markdown(analysis)
  tmp = out / ".budget.md.tmp"
  tmp.write_text(text)
  tmp.replace(out / "budget.md")
  return analysis


def run_budget(budget: Budget, out: str | Path, options: RunOptions | None = None,
               load: Loader | None = None) -> dict[str, Any]:
  """Runs every job not yet done, then writes the analysis; returns it.

  `out` is claimed first (`synthpart.rundir.claim`): locked until the search ends, and refused,
  untouched, where another process holds it or another command (a run, a sweep...) wrote it,
  and refused, untouched, where its plan files or any job's results are of other settings.
  """
  out, options = Path(out), options or RunOptions()
  check_jobs(budget_jobs(budget))
  with claim(out, "budget"):
    check_plans(budget, out)
    todo, datasets = budget_jobs(budget), Datasets(load)
    left = pending_jobs(budget, out, datasets)
    write_plan(budget, out)
    run_jobs(todo, left, out, options, datasets, "budget")
    return write_outcome(budget, out)
