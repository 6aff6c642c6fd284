"""Reports and TensorBoard logs, from one real tiny `compare` and sweeps built from its results."""

from __future__ import annotations

import copy
import json

import jax
import pytest

from synthpart import curves
from synthpart import experiment as exp
from synthpart import report as report_lib
from synthpart import results as results_lib
from synthpart import sweep as sweep_lib
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.progress import Progress
from synthpart.tblog import write_tensorboard
from synthpart.train.problem import describe, make_problem

from tiny import tiny_config, tiny_dataset

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("report")


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def document():
  """A results document of every method on a tiny problem (two segments, two devices)."""
  problem = make_problem(tiny_config(), tiny_dataset(), jax.devices()[:2])
  runs = exp.compare(problem, Progress(quiet=True))
  document = results_lib.results_document("compare", describe(problem, "generated"),
                                          problem.config.to_dict(), runs)
  return json.loads(json.dumps(document))


def write_run(directory, document):
  write_json_atomic(directory / "results.json", document)
  return directory


def test_run_report_has_a_table_and_every_figure(tmp_path, document):
  path = report_lib.write_report(write_run(tmp_path / "run", document))
  text = path.read_text()
  assert path == tmp_path / "run" / "report.md"
  for method in results_lib.METHODS[:5]:
    assert f"| {method} |" in text
  figures = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
  assert figures == ["accuracy_per_epoch.png", "accuracy_vs_flops.png",
                     "accuracy_vs_wall_time.png", "bytes_moved.png", "memory_per_device.png"]
  for name in figures:
    assert f"](figures/{name})" in text
    assert (tmp_path / "run" / "figures" / name).read_bytes().startswith(PNG)
    pdf = (tmp_path / "run" / "figures" / name).with_suffix(".pdf")
    assert pdf.read_bytes().startswith(b"%PDF") and f"](figures/{pdf.name})" in text
  assert "No memory recorded" not in text
  assert "1 epoch at lr" in text and "1 epochs" not in text and "training GFLOP" in text


def test_memory_per_device_is_what_each_loop_recorded(document):
  memory, missing = report_lib.memory_per_device([document])
  assert missing == [] and set(memory) == {r["method"] for r in document["runs"]}
  conventional = next(r for r in document["runs"] if r["method"] == "conventional")
  recorded = conventional["segments"][0]["memory"]
  assert memory["conventional"] == {conventional["segments"][0]["device"]: {
      "peak": recorded["peak"], "peak_without_data": recorded["peak_without_data"]}}
  # Segment 0 and the recovery loop share the first device: it peaks at the larger of the two.
  recovery = next(r for r in document["runs"] if r["method"] == "pnn-parallel+recovery")
  first = recovery["segments"][0]["device"]
  assert [s["device"] for s in recovery["segments"]] == [first, "cpu:1", first]
  assert memory["pnn-parallel+recovery"][first]["peak"] == max(
      s["memory"]["peak"] for s in recovery["segments"] if s["device"] == first)
  assert set(memory["pnn-parallel"]) == {"cpu:0", "cpu:1"}


def test_runs_without_recorded_memory_are_left_out_with_a_note(tmp_path, document):
  older = copy.deepcopy(document)
  for run in older["runs"]:
    for loop in run["segments"]:
      if run["method"] == "pnn-parallel":
        del loop["memory"]  # a results.json written before loops recorded memory
      elif run["method"] == "pnn-sequential":
        loop["memory"] = None
  memory, missing = report_lib.memory_per_device([older])
  assert missing == ["pnn-sequential", "pnn-parallel"]
  assert "conventional" in memory and "pnn-parallel" not in memory
  text = report_lib.write_report(write_run(tmp_path / "older", older)).read_text()
  assert "No memory recorded in results.json for pnn-sequential, pnn-parallel" in text
  assert (tmp_path / "older" / "figures" / "memory_per_device.png").exists()
  for run in older["runs"]:
    for loop in run["segments"]:
      loop.pop("memory", None)
  text = report_lib.write_report(write_run(tmp_path / "oldest", older)).read_text()
  assert not (tmp_path / "oldest" / "figures" / "memory_per_device.png").exists()
  assert "memory_per_device.png" not in text and "No memory recorded" in text


def test_report_can_go_elsewhere(tmp_path, document):
  run = write_run(tmp_path / "run", document)
  path = report_lib.write_report(run, tmp_path / "elsewhere", memory=False)
  assert path == tmp_path / "elsewhere" / "report.md"
  assert (tmp_path / "elsewhere" / "figures" / "bytes_moved.png").exists()
  assert not (run / "report.md").exists()


def test_bytes_moved_come_from_the_transfer_ledger(document):
  moved = {r["method"]: curves.ledger_bytes(r["transfers"]) for r in document["runs"]}
  assert moved["conventional"] == 0 and moved["pnn-parallel"] == 0
  n, width = document["dataset"]["num_train"], document["config"]["model"]["hidden"][1]
  assert moved["pnn-sequential"] == n * width * 4  # the cut's activations, once, in float32


def test_accuracy_points_count_every_round(document):
  run = next(r for r in document["runs"] if r["method"] == "pnn-sequential+recovery")
  points = curves.accuracy_points(run)
  epochs = document["config"]["train"]["epochs"]
  # The first segment's rounds have no composed network yet; the last segment's and recovery's do.
  assert [x for x, _ in points] == list(range(epochs + 1, 2 * epochs + 2))


def fake_sweep(out, document, kappas=(0.5, 2.0), cuts=((1,), (2,)), seeds=(0, 1, 2)):
  """A finished κ × cut sweep whose runs are copies of `document` with shifted accuracies."""
  base = {"data": {"name": "tiny"}, "model": {"hidden": [16, 16, 16]},
          "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01},
          "recovery": {"epochs": 1, "learning_rate": 0.001}}
  sweep = sweep_lib.parse_sweep({
      "base": base, "seeds": list(seeds), "methods": ["conventional", "sequential", "parallel"],
      "axes": {"sil.scale": list(kappas), "model.cuts": [list(c) for c in cuts]}})
  points = sweep_lib.expand(sweep)
  write_json_atomic(out / "sweep.json", sweep_lib.sweep_document(sweep, points))
  for job in sweep_lib.jobs(sweep, points):
    doc = copy.deepcopy(document)
    doc["config"] = json.loads(json.dumps(job.config.to_dict()))
    keep = {"conventional"} if job.kind == "baseline" else None
    doc["runs"] = [r for r in doc["runs"] if (keep is None) != (r["method"] in ("conventional",))]
    for r in doc["runs"]:
      # Δ = -0.2 points x cut x (1 for κ 0.5, 2 for κ 2)
      r["test_accuracy"] = 0.9 - 0.01 * job.config.seed - (
          0 if job.kind == "baseline"
          else 0.002 * job.config.model.cuts[0] * (1 + (job.config.sil.scale > 1)))
    write_run(out / job.directory, doc)
  sweep_lib.write_summary(out, sweep_lib.summarize(out))
  return sweep


def test_sweep_report_pivots_deltas_and_draws_axis_figures(tmp_path, document):
  fake_sweep(tmp_path, document)
  text = report_lib.write_report(tmp_path, memory=False).read_text()
  figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
  assert {"accuracy_vs_sil_scale.png", "accuracy_vs_model_cuts.png",
          "accuracy_per_epoch_points.png", "accuracy_per_epoch.png", "accuracy_vs_flops.png",
          "accuracy_vs_wall_time.png", "bytes_moved.png"} <= figures
  assert "| model.cuts \\ sil.scale | 0.5 | 2 |" in text
  # cut 1, κ 0.5: 0.2 points below conventional (a match); cut 2, κ 2: 0.8 below (a failure).
  assert "| 1 | -0.20 ± 1.00 ✓ | -0.40 ± 1.00 ✓ |" in text
  assert "| 2 | -0.40 ± 1.00 ✓ | -0.80 ± 1.00 |" in text
  # 7 partitioned rows (3 schedules, their recoveries, the nearest-SIL reference) x 4 settings.
  assert "21 of 28 (setting, method) pairs: pnn-sequential 3/4," in text


def test_sweep_report_of_an_unfinished_sweep_says_so(tmp_path, document):
  fake_sweep(tmp_path, document)
  (tmp_path / "sil.scale=2,model.cuts=2" / "seed-2" / "results.json").unlink()
  text = report_lib.write_report(tmp_path, memory=False).read_text()
  assert "11 of 12 point runs finished" in text


def test_axis_positions_are_numeric_where_possible():
  assert report_lib.axis_position([0.1, 1.0, 100.0]) == ([0.1, 1.0, 100.0], ["0.1", "1", "100"],
                                                         True)
  assert report_lib.axis_position([[1], [3]]) == ([1.0, 3.0], ["1", "3"], False)
  assert report_lib.axis_position([[1, 2], [3]]) == ([0, 1], ["1+2", "3"], False)
  assert report_lib.axis_position(["uniform", "gaussian"])[0] == [0, 1]


def test_a_directory_without_results_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="neither results.json"):
    report_lib.write_report(tmp_path)


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """Scalars of the event files in `directory`, by tag: TFRecord framing around Event protos
  (the `tensorboard` package, which has a reader, is not needed to write them)."""
  import struct

  from tensorboardX.proto.event_pb2 import Event
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_tensorboard_scalars_per_method(tmp_path, document):
  written = write_tensorboard(document, tmp_path / "tb")
  assert [p.name for p in written] == [r["method"] for r in document["runs"]]
  scalars = read_scalars(tmp_path / "tb" / "pnn-sequential+recovery")
  assert {"loss/segment_0", "loss/segment_1", "loss/recovery", "accuracy/test"} <= set(scalars)
  run = next(r for r in document["runs"] if r["method"] == "pnn-sequential+recovery")
  assert [v for _, v in scalars["loss/segment_0"]] == pytest.approx(
      run["segments"][0]["loss_per_epoch"])
  assert [step for step, _ in scalars["accuracy/test"]] == [
      x for x, _ in curves.accuracy_points(run)]


def test_cli_writes_tensorboard_and_report(tmp_path, capsys):
  from synthpart.cli import main
  out = tmp_path / "run"
  assert main(["train", "--dataset", "digits", "--hidden", "8,8", "--cuts", "1", "--epochs", "1",
               "--recovery-epochs", "0", "--out", str(out), "-q", "--tensorboard"]) == 0
  assert any((out / "tensorboard" / "pnn-sequential").iterdir())
  assert main(["report", str(out), "--no-memory"]) == 0
  assert (out / "report.md").exists()


def test_report_elsewhere_claims_its_out(tmp_path, document, capsys, monkeypatch):
  from synthpart.cli import main
  run = write_run(tmp_path / "r1", document)
  other = write_run(tmp_path / "r2", document)
  before = sorted(p.name for p in other.iterdir())
  (tmp_path / "afile").write_text("mine")
  for out, words in [(other, "another command's directory"), (tmp_path / "afile",
                                                               "not a directory"),
                     (other / "figures", "lies inside")]:
    assert main(["report", str(run), "--out", str(out), "--no-memory"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
  assert sorted(p.name for p in other.iterdir()) == before
  assert (tmp_path / "afile").read_text() == "mine"

  def read_only(path, text):
    raise OSError(30, "Read-only file system", str(path))

  monkeypatch.setattr("synthpart.report.markdown.write_text_atomic", read_only)
  assert main(["report", str(run), "--no-memory"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "report.md cannot be written: Read-only" in err, err
