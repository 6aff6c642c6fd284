"""Live metrics: written as the run goes, through one writer interface, by process 0 only;
a missing package is a one-line error before any training."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

from synthpart import metrics
from synthpart.cli import main
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S

from tiny import tiny_config, tiny_dataset
from writers import RecordingWriter

RUN = ["train", "--hidden", "8,8", "--cuts", "1", "--epochs", "2", "--recovery-epochs", "1", "-q"]
WRITTEN: list[RecordingWriter] = []


def recording_writer(run_dir, hparams):
  """The factory `--metrics-writer test_metrics:recording_writer` names."""
  WRITTEN.append(RecordingWriter(run_dir, hparams))
  return WRITTEN[-1]


def read_events(directory: Path) -> list:
  """Every event of a TensorBoard run directory (tensorboardX's protos; no TensorFlow)."""
  from tensorboardX.proto.event_pb2 import Event
  events = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      length = int.from_bytes(data[i:i + 8], "little")
      events.append(Event.FromString(data[i + 12:i + 12 + length]))
      i += 12 + length + 4
  return events


def test_tensorboard_is_written_live_with_hparams(tmp_path):
  pytest.importorskip("tensorboardX")
  out = tmp_path / "run"
  assert main([*RUN, "--out", str(out), "--tensorboard"]) == 0
  scalars = {}
  events = []
  # The segments train once, as pnn-sequential; recovery continues from them.
  for method in ("pnn-sequential", "pnn-sequential+recovery"):
    events += read_events(out / "tensorboard" / method)
    for e in events[-len(read_events(out / "tensorboard" / method)):]:
      for v in e.summary.value:
        if v.HasField("simple_value"):
          scalars.setdefault(f"{method}/{v.tag}", []).append((e.step, e.wall_time))
  assert {"pnn-sequential/loss/segment_0", "pnn-sequential/loss/segment_1",
          "pnn-sequential/accuracy/test", "pnn-sequential/seconds",
          "pnn-sequential+recovery/loss/recovery", "pnn-sequential+recovery/accuracy/test",
          "pnn-sequential+recovery/accuracy/final"} <= set(scalars)
  # The steps are the method's epoch rounds; recovery continues after the segments' four.
  assert [s for s, _ in scalars["pnn-sequential/loss/segment_0"]] == [1, 2]
  assert [s for s, _ in scalars["pnn-sequential/loss/segment_1"]] == [3, 4]
  assert [s for s, _ in scalars["pnn-sequential+recovery/loss/recovery"]] == [5]
  # Real wall times, taken as each round ended: not one time for every event.
  times = [t for _, t in scalars["pnn-sequential/loss/segment_0"]
           + scalars["pnn-sequential+recovery/loss/recovery"]]
  assert times == sorted(times) and times[-1] > times[0]
  plugins = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value}
  assert "hparams" in plugins


def test_own_writer_by_name_gets_every_round_and_the_settings(tmp_path):
  WRITTEN.clear()
  out = tmp_path / "run"
  assert main([*RUN, "--out", str(out), "--metrics-writer", "test_metrics:recording_writer"]) == 0
  (writer,) = WRITTEN
  assert writer.run_dir == out and writer.closed
  assert writer.hparams["train.epochs"] == 2 and writer.hparams["dataset"] == "digits"
  assert [s for s, _ in writer.series("pnn-sequential/loss/segment 1")] == [3, 4]
  assert [s for s, _ in writer.series("pnn-sequential/accuracy/test")] == [3, 4]
  assert len(writer.series("pnn-sequential+recovery/accuracy/final")) == 1


def test_own_writer_in_a_program():
  writer = RecordingWriter()
  problem = P.make_problem(tiny_config(), tiny_dataset(), jax.devices()[:2])
  _, result = S.train_parallel(problem, Progress(quiet=True, metrics=writer))
  losses = writer.series("pnn-parallel/loss/segment 0")
  assert [v for _, v in losses] == list(result.segments[0].loss_per_epoch)
  assert [v for _, v in writer.series("pnn-parallel/accuracy/test")] == [
      p.accuracy for p in result.curve]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  options = metrics.MetricsOptions(tensorboard=True)
  assert metrics.open_writer(options, tmp_path, {}).writers == []
  assert not (tmp_path / "tensorboard").exists()


def test_wandb_through_a_stand_in_module(tmp_path, monkeypatch):
  calls: list[tuple] = []

  class Run:
    config = types.SimpleNamespace(update=lambda values, **kw: calls.append(("config", values)))

    def define_metric(self, name, **kw):
      calls.append(("define", name, kw.get("step_metric")))

    def log(self, values):
      calls.append(("log", dict(values)))

    def finish(self):
      calls.append(("finish",))

  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: calls.append(("init", kw)) or Run()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  out = tmp_path / "run"
  assert main([*RUN, "--out", str(out), "--wandb", "--wandb-project", "p"]) == 0
  init = calls[0][1]
  assert init["project"] == "p" and init["dir"] == str(out)
  assert init["config"]["model.cuts"] == "[1]"
  assert ("define", "pnn-sequential/*", "pnn-sequential/round") in calls
  logs = [c[1] for c in calls if c[0] == "log"]
  assert {"pnn-sequential/loss/segment 0": logs[0]["pnn-sequential/loss/segment 0"],
          "pnn-sequential/round": 1}.items() <= logs[0].items()
  assert calls[-1] == ("finish",)


def test_wandb_offline(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  out = tmp_path / "run"
  assert main([*RUN, "--out", str(out), "--wandb"]) == 0
  (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
  assert log.stat().st_size > 0  # what it holds: test_wandb_through_a_stand_in_module


def _without(tmp_path: Path, package: str) -> dict:
  """An environment in which importing `package` fails."""
  hidden = tmp_path / "hidden"
  (hidden / package).mkdir(parents=True)
  (hidden / package / "__init__.py").write_text("raise ImportError('hidden for a test')\n")
  path = os.pathsep.join([str(hidden), str(Path(__file__).parent.parent)])
  return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("flag,package", [("--tensorboard", "tensorboardX"),
                                          ("--wandb", "wandb")])
def test_missing_package_is_one_line_before_training(tmp_path, flag, package):
  out = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "synthpart", *RUN, "--out", str(out), flag],
                        capture_output=True, text=True, env=_without(tmp_path, package))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip() == f"synthpart: error: {package} is not installed: pip install " \
                                f"{package}"
  assert not out.exists()


def test_report_without_matplotlib_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "synthpart", "report", str(tmp_path)],
                        capture_output=True, text=True, env=_without(tmp_path, "matplotlib"))
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("synthpart: error: matplotlib is not installed: pip install "
                                 "matplotlib")


def test_a_bad_writer_name_is_one_line(tmp_path, capsys):
  assert main([*RUN, "--out", str(tmp_path / "r"), "--metrics-writer", "nowhere:thing"]) == 2
  assert "cannot import nowhere" in capsys.readouterr().err
