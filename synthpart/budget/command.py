"""`synthpart budget BUDGET.toml --out DIR`: runs a budget search (or lists its runs), prints its
tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from synthpart.budget.plan import load_budget
from synthpart.budget.run import budget_jobs, pending_jobs, run_budget
from synthpart.budget.summary import budget_markdown
from synthpart.rundir import refuse_foreign
from synthpart.sweep.command import enable_compile_cache
from synthpart.sweep.run import RunOptions


def add_budget_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
  """Registers `synthpart budget` on the command line's subparsers."""
  p = sub.add_parser("budget", help="compute to a target accuracy of conventional training and "
                     "of each schedule, over grids of per-loop budgets and seeds")
  p.add_argument("file", help="budget TOML file (see experiments/budgets/)")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="output directory; rerunning with the same DIR skips finished runs")
  p.add_argument("--devices", type=int, default=0, metavar="N",
                 help="devices to spread segments over (default: one per segment)")
  p.add_argument("--compile-cache", default=None, metavar="DIR",
                 help="JAX's persistent compilation cache (default ~/.cache/synthpart/jax; "
                      "\"none\" to disable)")
  p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
  p.add_argument("-v", "--verbose", action="store_true", help="progress bars of every loop")
  p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
  p.set_defaults(func=_budget_command)


def _budget_command(args: argparse.Namespace) -> int:
  budget = load_budget(args.file)
  out = Path(args.out)
  if args.dry_run:
    refuse_foreign(out, "budget")
    pending = {j.directory for j in pending_jobs(budget, out)}
    every = budget_jobs(budget)
    for job in every:
      print(f"{'to do' if job.directory in pending else 'done '}  {job.directory}")
    print(f"{len(budget.methods)} methods x {budget.grid_size} budgets x {len(budget.seeds)} "
          f"seeds, and {len(budget.seeds)} reference runs: {len(every)} runs")
    return 0
  enable_compile_cache(args.compile_cache)
  start = time.perf_counter()
  analysis = run_budget(budget, out, RunOptions(
      devices=args.devices, verbose=args.verbose and not args.quiet,
      show_progress=not args.quiet))
  print(budget_markdown(analysis))
  print(f"budget: {out / 'budget.md'} ({time.perf_counter() - start:.0f} s)")
  return 0
