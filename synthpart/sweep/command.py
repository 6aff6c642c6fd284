"""`synthpart sweep SWEEP.toml --out DIR`: runs a sweep (or lists its runs) and prints its table."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax

from synthpart.errors import ConfigError
from synthpart.rundir import refuse_foreign
from synthpart.sweep.grid import expand, load_sweep
from synthpart.sweep.run import RunOptions, is_done, job_methods, jobs, run_sweep
from synthpart.sweep.summary import summary_markdown


def add_sweep_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
                 help="JAX's persistent compilation cache (default ~/.cache/synthpart/jax; "
                      "\"none\" to disable): points that differ only in values, not shapes, "
                      "reuse compiled loops")
  p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
  p.add_argument("-v", "--verbose", action="store_true", help="progress bars of every loop")
  p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
  p.set_defaults(func=_sweep_command)


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/synthpart/jax, else ~/.cache/synthpart/jax: outside any results tree."""
  root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return str(Path(root) / "synthpart" / "jax")


def enable_compile_cache(directory: str | None = None) -> None:
  """Turns on JAX's on-disk compilation cache for this process in `directory` (`--compile-cache`;
  None: `default_cache_dir()`; "none": leaves it off).

  A sweep compiles the same loops over and over (a new seed or kappa changes values, not
  shapes); the cache turns those compiles into reads. A directory that cannot be made is a
  one-line `ConfigError` naming the flag or XDG_CACHE_HOME, before anything trains.
  """
  if directory is not None and directory.lower() == "none":
    return
  if directory is None:
    directory = default_cache_dir()
    xdg = os.environ.get("XDG_CACHE_HOME")
    culprit = f"the compile cache {directory}"
    if xdg:
      culprit = f"XDG_CACHE_HOME={xdg}: {culprit}"
    fix = "set XDG_CACHE_HOME to a directory, or give --compile-cache DIR or none"
  else:
    culprit = f"--compile-cache {directory}"
    fix = "give a directory synthpart can create, or none"
  try:
    Path(directory).mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise ConfigError(f"{culprit} exists and is not a directory; {fix}") from None
  except OSError as e:
    raise ConfigError(f"{culprit} cannot be created ({e.strerror}); {fix}") from None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _sweep_command(args: argparse.Namespace) -> int:
  sweep = load_sweep(args.file)
  if args.devices < 0:
    raise ConfigError(f"--devices must be >= 0, got {args.devices}")
  points = expand(sweep)
  todo = jobs(sweep, points)
  if args.dry_run:
    out = Path(args.out)
    refuse_foreign(out, "sweep")
    for job in todo:
      done = is_done(out / job.directory / "results.json", job.config,
                     methods=job_methods(job))
      print(f"{'done ' if done else 'to do'}  {job.directory}")
    print(f"{len(points)} points x {len(sweep.seeds)} seeds: {len(todo)} runs")
    return 0
  enable_compile_cache(args.compile_cache)
  start = time.perf_counter()
  summary = run_sweep(sweep, args.out, RunOptions(
      devices=args.devices, verbose=args.verbose and not args.quiet,
      tensorboard=args.tensorboard, show_progress=not args.quiet))
  print(summary_markdown(summary))
  print(f"summary: {Path(args.out) / 'summary.md'} ({time.perf_counter() - start:.0f} s)")
  return 0
