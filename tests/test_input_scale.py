"""Inputs are divided by the dataset's own scale on every path: uint8 images U and the float32
images U / 255 train every method, the nearest-SIL reference and the step-by-step model-parallel
reference (`synthpart.bench.stepwise`) to bit-identical results."""

import dataclasses

import jax
import numpy as np
import pytest

from synthpart.bench import stepwise
from synthpart.data import Dataset
from synthpart.experiment import compare
from synthpart.progress import Progress
from synthpart.records import MethodRecord
from synthpart.train import problem as P

from tiny import tiny_config, tiny_dataset

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("input_scale")

QUIET = Progress(quiet=True)
# Recovery epochs train through conventional training's own path (`train_network`): left out.
METHODS = ["conventional", "model-parallel", "pnn-sequential", "pnn-parallel",
           "pnn-parallel-nearest-sil", "pnn-pipelined", "model-parallel-stepwise"]


def _as_floats(ds: Dataset) -> Dataset:
  """The same images as float32 in [0, 1], divided by 255 in numpy."""
  return dataclasses.replace(
      ds, train_images=ds.train_images.astype(np.float32) / np.float32(255),
      test_images=ds.test_images.astype(np.float32) / np.float32(255))


def _every_method(ds: Dataset) -> list[MethodRecord]:
  """Every method `compare` runs (model-parallel included), then the stepwise reference."""
  config = tiny_config(**{"model.hidden": [16, 16], "model.cuts": [1], "train.epochs": 1,
                          "recovery.epochs": 0, "data.standardize": False})
  problem = P.make_problem(config, ds, jax.devices()[:2])
  return compare(problem, QUIET, with_model_parallel=True) + [
      stepwise.train_model_parallel(problem, QUIET)[1]]


@pytest.fixture(scope="module")
def both() -> tuple[list[MethodRecord], list[MethodRecord]]:
  pixels = tiny_dataset(num_train=64, num_test=32, classes=3, shape=(8, 8, 1))
  floats = _as_floats(pixels)
  assert pixels.input_scale == 255.0 and floats.input_scale == 1.0
  return _every_method(pixels), _every_method(floats)


def test_every_method_ran(both):
  for runs in both:
    assert [r.method for r in runs] == METHODS
    for r in runs:
      losses = [v for s in r.segments for v in s.loss_per_epoch]
      assert losses and np.isfinite(losses).all(), r.method


def test_float_inputs_train_as_the_same_uint8_images(both):
  for u, f in zip(*both, strict=True):
    assert f.test_accuracy == u.test_accuracy, u.method
    assert [p.accuracy for p in f.curve] == [p.accuracy for p in u.curve], u.method
    assert [s.loss_per_epoch for s in f.segments] == [s.loss_per_epoch for s in u.segments], (
        u.method)
