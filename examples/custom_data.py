"""Train on data of one's own, from numpy arrays.

  python3 examples/custom_data.py [--epochs 3]

A `synthpart.data.Dataset` holds uint8 images [N, H, W, C] (divided by 255 on the device) and
int32 labels; here, generated class patterns with noise. Once `synthpart.data.from_arrays(name,
x_train, y_train, x_test, y_test, num_classes=None)` is available, it builds the same dataset
from any arrays.
"""

from __future__ import annotations

import argparse

import numpy as np

from synthpart import config
from synthpart.data import Dataset
from synthpart.progress import Progress
from synthpart.prepare import select_devices
from synthpart.train import schedules
from synthpart.train.problem import make_problem


def patterns(n: int, classes: int, rng: np.random.Generator,
             prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`n` noisy images of the class prototypes, and their labels."""
  labels = rng.integers(0, classes, n).astype(np.int32)
  images = prototypes[labels] + rng.normal(0, 40, (n, *prototypes.shape[1:]))
  return np.clip(images, 0, 255).astype(np.uint8), labels


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=3)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  classes = 5
  prototypes = rng.integers(0, 256, (classes, 8, 8, 1))
  (x_train, y_train), (x_test, y_test) = (patterns(n, classes, rng, prototypes)
                                          for n in (2000, 500))
  dataset = Dataset("my-patterns", classes, x_train, y_train, x_test, y_test,
                    source="numpy arrays")
  settings = config.load(overrides={"model.hidden": [32, 32], "model.cuts": [1],
                                    "train.epochs": args.epochs, "train.batch_size": 64})
  problem = make_problem(settings, dataset, select_devices(0, settings.num_devices))
  _, result = schedules.train_sequential(problem, Progress(quiet=True))
  print(f"{dataset.name}: {result.method} test accuracy {100 * result.test_accuracy:.2f}%")


if __name__ == "__main__":
  main()
