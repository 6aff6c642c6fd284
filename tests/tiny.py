"""Tiny generated datasets: learnable class patterns plus noise, uint8 NHWC like the real ones."""

from __future__ import annotations

import numpy as np

from synthpart import config as config_lib
from synthpart.data import Dataset


def tiny_dataset(num_train: int = 256, num_test: int = 64, classes: int = 4,
                 shape: tuple[int, int, int] = (4, 4, 1), seed: int = 0) -> Dataset:
  rng = np.random.default_rng(seed)
  prototypes = rng.integers(0, 256, (classes, *shape))

  def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n).astype(np.int32)
    images = prototypes[labels] + rng.normal(0, 40, (n, *shape))
    return np.clip(images, 0, 255).astype(np.uint8), labels

  (xtr, ytr), (xte, yte) = split(num_train), split(num_test)
  return Dataset("tiny", classes, xtr, ytr, xte, yte, source="generated")


def tiny_config(**overrides) -> config_lib.Config:
  """A small network that trains in well under a second per method."""
  values = {"model.hidden": [16, 16, 16], "model.cuts": [2], "train.epochs": 3,
            "train.batch_size": 32, "train.learning_rate": 0.01,
            "recovery.epochs": 1, "recovery.learning_rate": 0.001}
  values.update(overrides)
  return config_lib.load(overrides=values)
