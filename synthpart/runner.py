"""Running one experiment into a run directory: the problem, the live metrics, the log, the
checkpoints and results.json, the same for every command that trains in one process.

`run_experiment(config, dataset, out, experiment, devices, options)` builds the problem, opens
the metric writer `options.metrics` asks for (its hyperparameters: the dataset and every
setting), trains `experiment` with a `synthpart.progress.Progress` (appending to OUT/log.txt
where `options.log`) and a checkpoint policy under OUT (where `options.checkpoints`), and keeps
OUT/results.json up to date: rewritten after every finished method and once at the end, each
method's final test accuracy written to the metric writer (``<method>/accuracy/final``) as it
finishes. The writer is closed however the run ends.

What is a caller's own stays with it: `synthpart train` and `compare` claim and check the run
directory (`on_problem`), say what they train on (`on_start`) and print the table; a sweep runs
its jobs under its bar, each through here without log or checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthpart import checkpoint, metrics
from synthpart.config import Config
from synthpart.data import Dataset
from synthpart.experiment import Experiment
from synthpart.files import write_json_atomic
from synthpart.progress import Progress
from synthpart.records import MethodRecord
from synthpart.results import results_document
from synthpart.train.problem import Problem, describe, make_problem

# hook(problem): what a caller does at a point of the run (`run_experiment`)
Hook = Callable[[Problem], None]


def _nothing(problem: Problem) -> None:
  del problem


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """What a caller chooses about a run's side effects.

  `command` is the command results.json records ("compare", "train", "sweep"); `quiet` silences
  bars and notes; `metrics`, the writers to open under the run directory; `log`, every epoch and
  note appended to OUT/log.txt; `checkpoints`, loops checkpointing under OUT/checkpoints (as the
  config's `checkpoint` settings say); `source_hparam`, the dataset's source among the
  hyperparameters the writers get.
  """
  command: str
  quiet: bool = False
  metrics: metrics.MetricsOptions = metrics.MetricsOptions()
  log: bool = True
  checkpoints: bool = True
  source_hparam: bool = True


def hparams(config: Config, dataset: Dataset, options: RunOptions) -> dict[str, Any]:
  """The hyperparameters the metric writers get: the dataset's name (and source, where
  `options.source_hparam`), then every setting by its dotted name."""
  source = {"dataset_source": dataset.source} if options.source_hparam else {}
  return {"dataset": dataset.name, **source, **metrics.flat_hparams(config.to_dict())}


def checkpoint_policy(config: Config, out: Path, fingerprint: str | None) -> checkpoint.Policy:
  """Checkpoints under `out` as `config.checkpoint` says, each recording the run's settings and
  data (their hash): restoring refuses another run's."""
  return checkpoint.Policy(out, config.checkpoint.every, config.checkpoint.keep,
                           run=checkpoint.run_fingerprint(config.to_dict(), fingerprint))


def run_experiment(config: Config, dataset: Dataset, out: Path, experiment: Experiment,
                   devices: Sequence[Any], options: RunOptions, *,
                   fingerprint: str | None = None, on_problem: Hook = _nothing,
                   on_start: Hook = _nothing) -> list[MethodRecord]:
  """Trains `experiment` on `config` and `dataset` on `devices`, into the run directory `out`;
  returns every method's result.

  `experiment(problem, progress, checkpoints=policy, on_result=callback)` calls back with the
  runs finished so far after every method; each time, out/results.json is rewritten (recording
  `fingerprint`, that of the data as loaded) and the final accuracy of every method newly
  finished goes to the metric writer; results.json is written once more at the end.
  `on_problem(problem)` runs once the problem is built, before anything is written (a caller's
  last checks, or its writing of the run directory); `out` is made next where `options.log`
  (else its first file makes it); `on_start(problem)` runs once the writer is open, just before
  training. The writer is closed however the experiment ends.
  """
  problem = make_problem(config, dataset, devices)
  on_problem(problem)
  if options.log:
    out.mkdir(parents=True, exist_ok=True)
  progress = Progress(quiet=options.quiet, log_path=out / "log.txt" if options.log else None,
                      metrics=metrics.open_writer(options.metrics, out,
                                                  hparams(config, dataset, options)))
  policy = checkpoint_policy(config, out, fingerprint) if options.checkpoints else None
  finished: set[str] = set()
  description = describe(problem, dataset.source, fingerprint)

  def keep_results(runs: list[MethodRecord]) -> None:
    write_json_atomic(out / "results.json",
                      results_document(options.command, description, config.to_dict(), runs))
    for run in runs:
      if run.method not in finished and run.test_accuracy is not None:
        progress.scalars(run.method, len(run.curve), {"accuracy/final": run.test_accuracy})
        finished.add(run.method)

  try:
    on_start(problem)
    runs = experiment(problem, progress, checkpoints=policy, on_result=keep_results)
    keep_results(runs)
  finally:
    progress.close()
  return runs
