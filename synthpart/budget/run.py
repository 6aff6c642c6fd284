"""Running a budget search: every sweep's jobs, seed by seed, each skipped once its results exist.

Jobs run seed by seed (the reference, then every method's grid, for seed 0; then seed 1...), so an
interrupted search already holds whole seeds to analyse. Rerunning the same command continues it:
a job whose results.json holds the same settings is not run again, and one trained on other data
(another fingerprint) stops the search (`synthpart.sweep.is_done`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from synthpart.budget.analysis import analyze
from synthpart.budget.plan import Budget, budget_document
from synthpart.budget.summary import budget_markdown
from synthpart.files import write_json_atomic
from synthpart.rundir import claim, refuse_foreign
from synthpart.setup import Loader
from synthpart.sweep.grid import expand, sweep_document
from synthpart.sweep.run import Datasets, Job, RunOptions, is_done, jobs, run_jobs
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
  return [j for j in budget_jobs(budget) if not is_done(out / j.directory / "results.json",
                                                        j.config, datasets)]


def write_plan(budget: Budget, out: Path) -> None:
  """budget.json (the plan; the analysis joins it when the runs are done) and every sweep's
  sweep.json; a sweep's directory that another command wrote is refused before any is written."""
  for name, _ in budget.sweeps:
    refuse_foreign(out / name, "sweep")
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
  untouched, where another process holds it or another command (a run, a sweep...) wrote it.
  """
  out, options = Path(out), options or RunOptions()
  with claim(out, "budget"):
    write_plan(budget, out)
    todo = budget_jobs(budget)
    datasets = Datasets(load)
    run_jobs(todo, pending_jobs(budget, out, datasets), out, options, datasets, "budget")
    return write_outcome(budget, out)
