"""`synthpart export` and `synthpart.load_model`: one exported network, preprocessing included."""

import json

import numpy as np
import pytest

import synthpart
from synthpart.cli import main
from synthpart.data import load_dataset
from synthpart.train import schedules as S
from synthpart.train.objectives import Constants, preprocess_pixels
from synthpart.train.problem import make_problem

from tiny import tiny_config

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("export")


FLAGS = ["--hidden", "16,16,16", "--cuts", "2", "--epochs", "2", "--recovery-epochs", "1", "-q"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("run")
  assert main(["train", *FLAGS, "--out", str(out)]) == 0
  return out


@pytest.mark.parametrize("method", ["pnn-sequential", "pnn-sequential+recovery"])
def test_the_exported_model_reproduces_the_runs_test_accuracy(digits_run, tmp_path, method):
  out = tmp_path / "model"
  assert main(["export", str(digits_run), "--method", method, "--out", str(out)]) == 0
  model = synthpart.load_model(out)
  ds = load_dataset("digits")
  for batch in (ds.test_images, ds.test_images[:7]):  # any batch size
    assert model(batch).shape == (len(batch), 10)
  accuracy = np.mean(np.argmax(np.asarray(model(ds.test_images)), -1) == ds.test_labels)
  runs = json.loads((digits_run / "results.json").read_text())["runs"]
  assert accuracy == next(r["test_accuracy"] for r in runs if r["method"] == method)
  meta = json.loads((out / "model.json").read_text())
  assert meta["input_shape"] == [8, 8, 1] and meta["input_dtype"] == "uint8"


def test_export_errors_are_one_line(digits_run, tmp_path, capsys):
  assert main(["export", str(digits_run), "--method", "pnn-parallel", "--out",
               str(tmp_path / "m")]) == 2
  assert main(["export", str(tmp_path), "--method", "conventional", "--out",
               str(tmp_path / "m")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all(line.startswith("synthpart: error:") for line in err)
  assert "pnn-parallel" in err[0] and "results.json" in err[1]


def test_float_inputs_are_not_divided_by_255(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)  # numpy's default integer labels
  np.savez(tmp_path / "blobs.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
  ds = load_dataset(f"npz:{tmp_path / 'blobs.npz'}")
  assert ds.input_scale == 1.0 and load_dataset("digits").input_scale == 255.0
  problem = make_problem(tiny_config(**{"model.cuts": [1], "recovery.batch_size": 16}), ds)
  task = S.segment_task(problem, problem.specs[0], "pixels")
  assert problem.input_scale == task.input_scale == 1.0
  np.testing.assert_array_equal(preprocess_pixels(x, Constants(), task.input_scale), x)
  out = tmp_path / "run"
  assert main(["train", "--dataset", f"npz:{tmp_path / 'blobs.npz'}", "--hidden", "8,8",
               "--cuts", "1", "--epochs", "2", "--batch-size", "16", "--set",
               "recovery.batch_size=16", "-q", "--out",
               str(out)]) == 0
  assert json.loads((out / "results.json").read_text())["dataset"]["input_scale"] == 1.0
