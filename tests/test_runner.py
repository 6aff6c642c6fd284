"""run_experiment: results.json after every method and at the end, the final accuracies to the
metric writer, the writer closed however the run ends, log and checkpoints only where asked. The
experiments here are stand-ins that train nothing."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from synthpart import checkpoint, metrics
from synthpart.data import fingerprint
from synthpart.records import CurvePoint, LoopRecord, MethodRecord
from synthpart.runner import RunOptions, run_experiment

from tiny import tiny_config, tiny_dataset
from writers import RecordingWriter

WRITERS: list[RecordingWriter] = []


def recording_writer(run_dir, hparams):
  WRITERS.append(RecordingWriter(run_dir, hparams))
  return WRITERS[-1]


RECORDING = metrics.MetricsOptions(factories=("test_runner:recording_writer",))


def method(name: str, accuracy: float, rounds: int = 2) -> MethodRecord:
  """A finished method of one loop, `rounds` epochs long."""
  segment = LoopRecord(name="segment 0", layers=(0, 3), objective="cross-entropy",
                       device="cpu:0", optimizer="adam", learning_rate=0.01, batch_size=32,
                       epochs=rounds, steps_per_epoch=8, loss_per_epoch=(1.0,) * rounds,
                       epoch_seconds=(0.1,) * rounds)
  return MethodRecord(name, test_accuracy=accuracy, wall_seconds=0.1 * rounds,
                      segments=(segment,),
                      curve=tuple(CurvePoint(epoch=e, seconds=0.1 * e, examples=(256 * e,))
                                  for e in range(1, rounds + 1)))


def results(out: Path) -> dict:
  return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def data():
  dataset = tiny_dataset()
  return tiny_config(), dataset, fingerprint(dataset)


def run(data, out, experiment, **options):
  config, dataset, print_ = data
  WRITERS.clear()
  return run_experiment(config, dataset, out, experiment, jax.devices()[:2],
                        RunOptions("train", quiet=True, metrics=RECORDING, **options),
                        fingerprint=print_)


def test_results_after_every_method_and_at_the_end(data, tmp_path):
  seen = {}

  def experiment(problem, progress, checkpoints, on_result):
    first = method("conventional", 0.5)
    on_result([first])
    seen["after one"] = results(tmp_path)
    seen["scalars after one"] = list(WRITERS[0].scalars)
    return [first, method("pnn-sequential", 0.25, rounds=3)]

  runs = run(data, tmp_path, experiment)
  assert [r.method for r in runs] == ["conventional", "pnn-sequential"]
  assert [r["method"] for r in seen["after one"]["runs"]] == ["conventional"]
  assert seen["scalars after one"] == [(2, {"conventional/accuracy/final": 0.5})]
  document = results(tmp_path)
  assert document["command"] == "train" and document["dataset"]["fingerprint"] == data[2]
  assert [r["test_accuracy"] for r in document["runs"]] == [0.5, 0.25]
  (writer,) = WRITERS
  assert writer.closed and writer.run_dir == tmp_path
  assert writer.hparams["dataset"] == "tiny" and writer.hparams["dataset_source"] == "generated"
  assert writer.scalars == [(2, {"conventional/accuracy/final": 0.5}),
                            (3, {"pnn-sequential/accuracy/final": 0.25})]


def test_the_writer_is_closed_when_the_experiment_raises(data, tmp_path):
  def experiment(problem, progress, checkpoints, on_result):
    on_result([method("conventional", 0.5)])
    raise RuntimeError("stopped")

  with pytest.raises(RuntimeError, match="stopped"):
    run(data, tmp_path, experiment)
  assert WRITERS[0].closed
  assert [r["method"] for r in results(tmp_path)["runs"]] == ["conventional"]


def test_checkpoints_and_log_only_where_asked(data, tmp_path):
  given = []

  def experiment(problem, progress, checkpoints, on_result):
    given.append((checkpoints, progress.log_path))
    progress.message("a note")
    return [method("conventional", 0.5)]

  config = data[0]
  run(data, tmp_path / "kept", experiment)
  run(data, tmp_path / "not", experiment, checkpoints=False, log=False, source_hparam=False)
  (policy, log), (none, no_log) = given
  assert policy == checkpoint.Policy(
      tmp_path / "kept", config.checkpoint.every, config.checkpoint.keep,
      run=checkpoint.run_fingerprint(config.to_dict(), data[2]))
  assert log == tmp_path / "kept" / "log.txt"
  assert (tmp_path / "kept" / "log.txt").read_text().endswith(" a note\n")
  assert none is None and no_log is None
  assert sorted(p.name for p in (tmp_path / "not").iterdir()) == ["results.json"]
  assert "dataset_source" not in WRITERS[0].hparams


def test_hooks_see_the_problem_before_writing_and_before_training(data, tmp_path):
  events = []

  def experiment(problem, progress, checkpoints, on_result):
    events.append("train")
    return [method("conventional", 0.5)]

  config, dataset, print_ = data
  WRITERS.clear()
  run_experiment(config, dataset, tmp_path / "run", experiment, jax.devices()[:2],
                 RunOptions("compare", quiet=True, metrics=RECORDING),
                 on_problem=lambda p: events.append(("problem", len(p.specs),
                                                     (tmp_path / "run").exists())),
                 on_start=lambda p: events.append(("start", len(WRITERS))))
  assert events == [("problem", 2, False), ("start", 1), "train"]
  assert results(tmp_path / "run")["command"] == "compare"
