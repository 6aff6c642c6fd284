"""Running a sweep: the jobs its points need, each skipped when its results already exist.

Results already there count only for the same settings and the same data: a job's results.json
records its data's fingerprint (`synthpart.data.fingerprint`), and a sweep run again on data
whose fingerprint differs stops before it trains anything, instead of mixing the two. A
results.json counts as done only where it holds every method its job trains (`job_methods`);
one that lacks some is trained again.

A rerun into a directory whose sweep.json says other settings is refused before anything is
written (`synthpart.sweep.grid.check_plan`), and so is one where any job's results are of other
settings or data: sweep.json always describes the runs beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from synthpart import config as config_lib
from synthpart import experiment as exp
from synthpart import metrics, runner
from synthpart.data import Dataset, check_fingerprint, fingerprint
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.prepare import Loader, read_dataset, select_devices, with_validation
from synthpart.rundir import claim
from synthpart.schedule import SCHEDULES
from synthpart.sweep.grid import (
  Point,
  Sweep,
  baseline_config,
  baseline_name,
  check_plan,
  expand,
  has_baselines,
  sweep_document,
)
from synthpart.sweep.summary import summarize, write_summary


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
      if isinstance(methods, str) and methods != "train":
        exp.require_cuts(config, f"point {point.name} ({methods})")
      if isinstance(methods, str):
        out.append(Job(directory, config, methods))
      else:
        schedules = tuple(m for m in methods if m != "conventional")
        if schedules:
          exp.require_cuts(config, f"point {point.name} ({', '.join(schedules)})")
          out.append(Job(directory, config, "schedules", schedules))
  return out


class Datasets:
  """The datasets of a sweep's jobs, each distinct one read once when first needed, and their
  fingerprints.

  `load(data_config)` returns a dataset (default: `synthpart.data.load_dataset`, quietly).
  """

  def __init__(self, load: Loader | None = None) -> None:
    self._load = load or functools.partial(read_dataset, progress=False)
    self._loaded: dict[tuple[Any, ...], tuple[Dataset, str]] = {}

  def _get(self, config: config_lib.Config) -> tuple[Dataset, str]:
    d = config.data
    key = (d.name, d.data_dir, d.download)
    if key not in self._loaded:
      dataset = self._load(d)
      self._loaded[key] = dataset, fingerprint(dataset)
    return self._loaded[key]

  def dataset(self, config: config_lib.Config) -> Dataset:
    """The dataset `config` trains on; the validation split is per seed."""
    return with_validation(self._get(config)[0], config)

  def fingerprint(self, config: config_lib.Config) -> str:
    """The fingerprint of `config`'s data as loaded (before any validation split)."""
    return self._get(config)[1]


def check_jobs(todo: Sequence[Job]) -> None:
  """Refuses, in one line and before anything is written, a job whose schedules cannot run on
  its backend (`config.check_backend_for`: pmap groups and a schedule that runs in chunks)."""
  for job in todo:
    schedules = (SCHEDULES.names if job.kind == "compare" else job.schedules
                 if job.kind == "schedules" else (job.config.schedule,))
    try:
      config_lib.check_backend_for(job.config, schedules)
    except ConfigError as e:
      raise ConfigError(f"{job.directory}: {e}") from None


def job_methods(job: Job) -> tuple[str, ...]:
  """The methods whose rows `job`'s results.json must hold to count as done (recovery and
  reference rows aside: a diverged method has none)."""
  if job.kind == "baseline" or (job.kind == "train" and job.config.model.num_segments == 1):
    return ("conventional",)
  if job.kind == "train":
    return (f"pnn-{job.config.schedule}",)
  schedules = job.schedules if job.kind == "schedules" else ("sequential", "parallel",
                                                              "pipelined")
  return (*(("conventional",) if job.kind == "compare" else ()),
          *(f"pnn-{s}" for s in schedules))


def is_done(path: Path, config: config_lib.Config, datasets: Datasets | None = None,
            methods: Sequence[str] = ()) -> bool:
  """True when `path` holds results of exactly `config` (and, with `datasets`, of the same data
  where the results record their fingerprint) with a row of every one of `methods`; a mismatch
  of settings or data is an error, not a redo; missing methods are a redo."""
  if not path.exists():
    return False
  try:
    document = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return False  # a broken file is redone
  if not isinstance(document, Mapping):
    return False
  if stored_config(document.get("config")) != config:
    raise ConfigError(f"{path} holds results of other settings than this sweep's; use another "
                      "--out or remove that directory")
  record = document.get("dataset")
  recorded = record.get("fingerprint") if isinstance(record, Mapping) else None
  if datasets is not None and recorded is not None:
    check_fingerprint(config.data.name, recorded, datasets.fingerprint(config),
                      "finished results cannot be reused",
                      str(path), "restore the data those results were trained on, use another "
                      "--out, or remove that directory")
  runs = document.get("runs")
  found = {r.get("method") for r in runs if isinstance(r, Mapping)} if isinstance(runs, list) \
      else set()
  return set(methods) <= found


def pending(todo: Sequence[Job], out: Path, datasets: Datasets | None = None) -> list[Job]:
  """The jobs of `todo` not yet done under `out` (`is_done`: raising, before anything trains,
  where any job's results are of other settings or data)."""
  return [j for j in todo
          if not is_done(out / j.directory / "results.json", j.config, datasets, job_methods(j))]


def stored_config(settings: Any) -> config_lib.Config | None:
  """The Config a results document was run with, settings added since then at their defaults
  (so results stay reusable when a new setting appears); None if it no longer loads."""
  if not isinstance(settings, Mapping):
    return None
  try:
    return config_lib.from_dict(settings)
  except ConfigError:
    return None


def job_experiment(job: Job) -> tuple[str, exp.Experiment]:
  """The command name its results.json records, and the experiment that trains the job."""
  if job.kind == "compare":
    return "compare", exp.compare
  if job.kind == "schedules":
    return "sweep", functools.partial(exp.run_schedules, schedules=job.schedules)
  return "train", exp.train_one  # "train", and "baseline" (no cuts: conventional)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a sweep runs: devices (0: one per segment), quiet inner bars, TensorBoard logs."""
  devices: int = 0
  verbose: bool = False
  tensorboard: bool = False
  show_progress: bool = True


def run_jobs(todo: Sequence[Job], pending: Sequence[Job], out: Path, options: RunOptions,
             datasets: Datasets, label: str) -> None:
  """Runs the `pending` jobs of `todo` in order, on devices enough for any of them, each
  distinct dataset read once, with one progress bar labelled `label`. A metric writer whose
  package is missing stops it before any job trains."""
  metrics.check(_writers(options))
  devices = select_devices(options.devices, max(j.config.num_devices for j in todo))
  bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="run", desc=label,
             dynamic_ncols=True, file=sys.stderr, disable=not options.show_progress)
  for job in pending:
    bar.set_postfix_str(job.directory, refresh=True)
    run_job(job, out, devices, options, datasets)
    bar.update(1)
  bar.close()


def _writers(options: RunOptions) -> metrics.MetricsOptions:
  return metrics.MetricsOptions(tensorboard=options.tensorboard)


def run_sweep(sweep: Sweep, out: str | Path, options: RunOptions = RunOptions(),
              load: Loader | None = None) -> dict[str, Any]:
  """Runs every job not yet done, then writes the summary; returns the summary document.

  `out` is claimed first (`synthpart.rundir.claim`): locked until the sweep ends, and refused,
  untouched, where another process holds it or another command (a run, a budget...) wrote it.
  Its sweep.json and every job's results are checked against this sweep before sweep.json is
  written: a directory of other settings is refused, untouched (`ConfigError`).

  `load(data_config)` returns a dataset (default: `synthpart.data.load_dataset`); each distinct
  dataset is loaded once per sweep.
  """
  out = Path(out)
  metrics.check(_writers(options))
  points = expand(sweep)
  todo = jobs(sweep, points)
  check_jobs(todo)
  datasets = Datasets(load)
  document = sweep_document(sweep, points)
  with claim(out, "sweep"):
    check_plan(out / "sweep.json", document, "sweep")
    left = pending(todo, out, datasets)
    write_json_atomic(out / "sweep.json", document)
    run_jobs(todo, left, out, options, datasets, "sweep")
    summary = summarize(out)
    write_summary(out, summary)
  return summary


def run_job(job: Job, out: Path, devices: Sequence[Any], options: RunOptions,
            datasets: Datasets) -> None:
  """Trains one job, its metrics written live where `options` asks, into its directory under
  `out` (`synthpart.runner.run_experiment`, without log.txt or checkpoints): its results.json,
  with its data's fingerprint, rewritten after every method it finishes.

  `datasets` reads each distinct dataset once across jobs."""
  wanted = options.devices or job.config.model.num_segments
  command, experiment = job_experiment(job)
  run = runner.RunOptions(command, quiet=not options.verbose, metrics=_writers(options),
                          log=False, checkpoints=False, source_hparam=False)
  runner.run_experiment(job.config, datasets.dataset(job.config), out / job.directory,
                        experiment, devices[:wanted], run,
                        fingerprint=datasets.fingerprint(job.config))
