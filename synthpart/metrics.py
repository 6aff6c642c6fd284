"""Live metrics: scalars written as a run goes, through one writer interface.

A `MetricWriter` takes scalars by step and the run's hyperparameters once:

  write_scalars(step, {"<method>/<name>": value, ...})    after every epoch round
  write_hparams({"train.learning_rate": 0.001, ...})      once, before training
  flush(), close()

The driver reports every epoch round through `synthpart.progress.Progress`, which hands the
writer, per method, each loop's mean loss (``<method>/loss/<loop>``), the composed network's test
accuracy where it is evaluated (``<method>/accuracy/test``) and the method's cumulative training
seconds (``<method>/seconds``); the step is the method's epoch round (as in results.json's
curve). When a method ends its final test accuracy follows (``<method>/accuracy/final``). Wall
times are the real ones: each scalar is written when its round ends.

Writers here: `TensorBoardWriter` (tensorboardX; one run directory per method, so TensorBoard
overlays methods on the same tags, and the hyperparameters in each for the HParams dashboard),
`WandbWriter` (Weights & Biases, off by default; ``WANDB_MODE=offline`` works), `MultiWriter`
(several at once). A writer of one's own needs no change to the package: any object with these
four methods, given to ``Progress(metrics=...)`` in a program, or named on the command line as
``--metrics-writer package.module:function``, where ``function(run_dir, hparams)`` returns it.

Only process 0 of a multi-process run writes (`open_writer`). Missing packages are reported by
`check` as one line, before any training starts. A writer of one's own is called through
`UserWriter`: whatever its factory or its methods raise is a `synthpart.errors.UserCodeError`
naming it, which stops the run there (what it finished, results.json and checkpoints, stays).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax

from synthpart.config import flatten
from synthpart.errors import ConfigError, call_user_code

# What the HParams dashboard compares runs by.
HPARAM_METRICS = ("accuracy/test", "accuracy/final")


@runtime_checkable
class MetricWriter(Protocol):
  """Where scalars and hyperparameters go (TensorBoard, Weights & Biases, one's own)."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def flush(self) -> None: ...

  def close(self) -> None: ...


# factory(run directory, hyperparameters) -> a writer (`--metrics-writer module:function`)
WriterFactory = Callable[[Path, Mapping[str, Any]], MetricWriter]


class MultiWriter:
  """Every call to each of `writers`, in order; with none, nothing is written."""

  def __init__(self, writers: Sequence[MetricWriter] = ()):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self.writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    """Closes every writer, even where one fails; then raises the first failure."""
    failure: Exception | None = None
    for writer in self.writers:
      try:
        writer.close()
      except Exception as e:
        failure = failure or e
    if failure is not None:
      raise failure


def split_tag(key: str) -> tuple[str, str]:
  """``"<method>/<name>"`` -> (method, name); a key without a method goes to "run"."""
  method, sep, name = key.partition("/")
  return (method, name) if sep else ("run", key)


def safe_name(text: str) -> str:
  """A tag or directory name: characters outside [A-Za-z0-9_.+-/] become underscores."""
  return re.sub(r"[^A-Za-z0-9_.+/-]", "_", text)


def _import(module: str, install: str) -> Any:
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError(f"{install.split()[-1]} is not installed: {install}") from None


class TensorBoardWriter:
  """TensorBoard event files through tensorboardX (no TensorFlow needed): one run directory per
  method under `log_dir`, so that methods overlay on the same tags."""

  def __init__(self, log_dir: str | Path, flush_secs: int = 5):
    self._module = _import("tensorboardX", "pip install tensorboardX")
    self.log_dir = Path(log_dir)
    self._flush_secs = flush_secs
    self._writers: dict[str, Any] = {}
    self._hparams: dict[str, Any] = {}

  def _writer(self, method: str) -> Any:
    if method not in self._writers:
      writer = self._module.SummaryWriter(logdir=str(self.log_dir / safe_name(method)),
                                          flush_secs=self._flush_secs)
      self._writers[method] = writer
      if self._hparams:
        self._write_session(writer, method)
    return self._writers[method]

  def _write_session(self, writer: Any, method: str) -> None:
    values = {**self._hparams, "method": method}
    summaries = self._module.summary.hparams(values, dict.fromkeys(HPARAM_METRICS, 0.0))
    for summary in summaries:
      writer.file_writer.add_summary(summary)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for key, value in scalars.items():
      method, name = split_tag(key)
      self._writer(method).add_scalar(safe_name(name), float(value), global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._hparams = dict(hparams)
    for method, writer in self._writers.items():
      self._write_session(writer, method)

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


class WandbWriter:
  """Weights & Biases: one wandb run per synthpart run, in `run_dir`/wandb. Each method's
  scalars are plotted against its own epoch round (``<method>/round``), since methods train one
  after another. ``WANDB_MODE=offline`` keeps everything local (`wandb sync` uploads it later).
  """

  def __init__(self, run_dir: str | Path, project: str = "synthpart",
               hparams: Mapping[str, Any] | None = None):
    self._module = _import("wandb", "pip install wandb")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    self._run = self._module.init(project=project, dir=str(run_dir), name=Path(run_dir).name,
                                  config=dict(hparams or {}))
    self._methods: set[str] = set()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values: dict[str, Any] = dict(scalars)
    for method in {split_tag(key)[0] for key in scalars}:
      if method not in self._methods:
        self._run.define_metric(f"{method}/round")
        self._run.define_metric(f"{method}/*", step_metric=f"{method}/round")
        self._methods.add(method)
      values[f"{method}/round"] = step
    self._run.log(values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self) -> None:
    pass  # wandb writes in the background

  def close(self) -> None:
    self._run.finish()


class UserWriter:
  """A writer of the user's (`--metrics-writer SPEC`) whose every call goes through
  `synthpart.errors.call_user_code`: what it raises is a `UserCodeError` naming SPEC and the
  method. After one failure it is broken, and its later calls do nothing (closing the run's
  writers after the failure does not hide it)."""

  def __init__(self, spec: str, writer: MetricWriter):
    self.spec, self.writer, self.broken = spec, writer, False

  def _call(self, method: str, *args: Any) -> None:
    if self.broken:
      return
    try:
      call_user_code(f"--metrics-writer {self.spec} {method}", getattr(self.writer, method),
                     *args)
    except BaseException:
      self.broken = True
      raise

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._call("write_scalars", step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._call("write_hparams", hparams)

  def flush(self) -> None:
    self._call("flush")

  def close(self) -> None:
    self._call("close")


def load_factory(spec: str) -> WriterFactory:
  """The function ``package.module:function`` names (`--metrics-writer`)."""
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ConfigError(f"--metrics-writer {spec!r} must look like package.module:function")
  try:
    found = getattr(importlib.import_module(module), name)
  except ImportError as e:
    raise ConfigError(f"--metrics-writer {spec}: cannot import {module}: {e}") from None
  except AttributeError:
    raise ConfigError(f"--metrics-writer {spec}: {module} has no {name}") from None
  if not callable(found):
    raise ConfigError(f"--metrics-writer {spec}: {name} is not callable")
  return found


@dataclasses.dataclass(frozen=True)
class MetricsOptions:
  """Which writers a command opens: TensorBoard, Weights & Biases, and one's own factories."""
  tensorboard: bool = False
  wandb: bool = False
  wandb_project: str = "synthpart"
  factories: tuple[str, ...] = ()

  @property
  def wanted(self) -> bool:
    return self.tensorboard or self.wandb or bool(self.factories)


def check(options: MetricsOptions) -> None:
  """Raises a one-line `ConfigError` for a missing package or a factory that does not load;
  called before any training, so that nothing trains for a writer that cannot open."""
  if options.tensorboard:
    _import("tensorboardX", "pip install tensorboardX")
  if options.wandb:
    _import("wandb", "pip install wandb")
  for spec in options.factories:
    load_factory(spec)


def flat_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested settings as dotted names with numbers, booleans and strings (lists as text)."""
  return {name: str(value if value is None else list(value))
          if value is None or isinstance(value, (list, tuple)) else value
          for name, value in flatten(values, prefix).items()}


def open_writer(options: MetricsOptions, run_dir: str | Path,
                hparams: Mapping[str, Any]) -> MultiWriter:
  """The writers `options` asks for, under `run_dir`, with `hparams` written; none outside
  process 0 of a multi-process run."""
  run_dir = Path(run_dir)
  if not options.wanted or jax.process_index() != 0:
    return MultiWriter()
  writers: list[MetricWriter] = []
  if options.tensorboard:
    writers.append(TensorBoardWriter(run_dir / "tensorboard"))
  if options.wandb:
    writers.append(WandbWriter(run_dir, options.wandb_project, hparams))
  for spec in options.factories:
    writer = call_user_code(f"--metrics-writer {spec}", load_factory(spec), run_dir, hparams)
    if not isinstance(writer, MetricWriter):
      raise ConfigError(f"--metrics-writer {spec} returned {type(writer).__name__}, which lacks "
                        "write_scalars, write_hparams, flush or close")
    writers.append(UserWriter(spec, writer))
  multi = MultiWriter(writers)
  multi.write_hparams(hparams)
  return multi


def write_document(writer: MetricWriter, document: Mapping[str, Any]) -> None:
  """Replays a finished results document through `writer` (a launch, whose loops ran in other
  processes, writes so when process 0 assembles the network): per-epoch losses by each loop's
  epoch, accuracy by epoch round, the final accuracy. Wall times are those of the replay."""
  for run in document.get("runs", []):
    method = run["method"]
    for segment in run.get("segments", []):
      for epoch, loss in enumerate(segment.get("loss_per_epoch", []), start=1):
        writer.write_scalars(epoch, {f"{method}/loss/{segment['name']}": loss})
    for step, point in enumerate(run.get("curve", []), start=1):
      scalars = {f"{method}/seconds": point["seconds"]}
      if "accuracy" in point:
        scalars[f"{method}/accuracy/test"] = point["accuracy"]
      writer.write_scalars(step, scalars)
    writer.write_scalars(len(run.get("curve", [])),
                         {f"{method}/accuracy/final": run["test_accuracy"]})
  writer.flush()
