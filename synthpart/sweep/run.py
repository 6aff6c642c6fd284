"""Running a sweep: the jobs its points need, each skipped when its results already exist."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from synthpart import config as config_lib
from synthpart import experiment as exp
from synthpart import metrics
from synthpart.data import Dataset
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.progress import Progress
from synthpart.results import MethodResult, results_document
from synthpart.rundir import claim
from synthpart.setup import Loader, read_dataset, select_devices, with_validation
from synthpart.sweep.grid import (
  Point,
  Sweep,
  baseline_config,
  baseline_name,
  expand,
  has_baselines,
  sweep_document,
)
from synthpart.sweep.summary import summarize, write_summary
from synthpart.train.problem import Problem, make_problem

# experiment(problem, progress) -> the results of the methods it trains
Experiment = Callable[[Problem, Progress], list[MethodResult]]


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
  if has_baselines(sweep):
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


def job_experiment(job: Job) -> tuple[str, Experiment]:
  """The command name its results.json records, and the experiment that trains the job."""
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


def run_jobs(todo: Sequence[Job], pending: Sequence[Job], out: Path, options: RunOptions,
             load: Loader | None, label: str) -> None:
  """Runs the `pending` jobs of `todo` in order, on devices enough for any of them, each
  distinct dataset read once, with one progress bar labelled `label`. A metric writer whose
  package is missing stops it before any job trains."""
  metrics.check(_writers(options))
  devices = select_devices(options.devices, max(j.config.num_devices for j in todo))
  datasets: dict[tuple[Any, ...], Dataset] = {}
  bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="run", desc=label,
             dynamic_ncols=True, file=sys.stderr, disable=not options.show_progress)
  for job in pending:
    bar.set_postfix_str(job.directory, refresh=True)
    run_job(job, out, devices, options, datasets, load)
    bar.update(1)
  bar.close()


def _writers(options: RunOptions) -> metrics.MetricsOptions:
  return metrics.MetricsOptions(tensorboard=options.tensorboard)


def run_sweep(sweep: Sweep, out: str | Path, options: RunOptions = RunOptions(),
              load: Loader | None = None) -> dict[str, Any]:
  """Runs every job not yet done, then writes the summary; returns the summary document.

  `out` is claimed first (`synthpart.rundir.claim`): locked until the sweep ends, and refused,
  untouched, where another process holds it or another command (a run, a budget...) wrote it.

  `load(data_config)` returns a dataset (default: `synthpart.data.load_dataset`); each distinct
  dataset is loaded once per sweep.
  """
  out = Path(out)
  metrics.check(_writers(options))
  points = expand(sweep)
  todo = jobs(sweep, points)
  with claim(out, "sweep"):
    write_json_atomic(out / "sweep.json", sweep_document(sweep, points))
    pending = [j for j in todo if not is_done(out / j.directory / "results.json", j.config)]
    run_jobs(todo, pending, out, options, load, "sweep")
    summary = summarize(out)
    write_summary(out, summary)
  return summary


def run_job(job: Job, out: Path, devices: Sequence[Any], options: RunOptions,
            datasets: dict[tuple[Any, ...], Dataset], load: Loader | None = None) -> None:
  """Trains one job, its metrics written live where `options` asks, and writes its
  results.json under `out`.

  `datasets` caches each distinct dataset source across jobs."""
  dataset = _dataset(job.config, datasets, load)
  wanted = options.devices or job.config.model.num_segments
  problem = make_problem(job.config, dataset, devices[:wanted])
  command, experiment = job_experiment(job)
  run_dir = out / job.directory
  hparams = {"dataset": dataset.name, **metrics.flat_hparams(job.config.to_dict())}
  progress = Progress(quiet=not options.verbose,
                      metrics=metrics.open_writer(_writers(options), run_dir, hparams))
  try:
    runs = experiment(problem, progress)
    for run in runs:
      if run.test_accuracy is not None:
        progress.scalars(run.method, len(run.curve), {"accuracy/final": run.test_accuracy})
  finally:
    progress.close()
  document = results_document(command, problem, dataset.source, runs)
  write_json_atomic(run_dir / "results.json", document)


def _dataset(config: config_lib.Config, cache: dict[tuple[Any, ...], Dataset],
             load: Loader | None) -> Dataset:
  """The config's dataset, read once per distinct source; the validation split is per seed."""
  d = config.data
  key = (d.name, d.data_dir, d.download)
  if key not in cache:
    cache[key] = (load or functools.partial(read_dataset, progress=False))(d)
  return with_validation(cache[key], config)
