"""A network of one's own blocks through a factory: a Flax linen module and a Flax NNX module
as segments' blocks, cut between them, trained by every method.

  python3 examples/custom_segment.py [--epochs 3]

`model.factory = "custom_segment:build"` names `build` below; Python finds this file because
the script's folder is on its path (elsewhere, any importable module works).
"""

from __future__ import annotations

import argparse

import flax.linen as nn
from flax import nnx

from synthpart import blocks, config
from synthpart.data import load_dataset
from synthpart.progress import Progress
from synthpart.prepare import select_devices
from synthpart.train import schedules
from synthpart.train.problem import make_problem


class Features(nn.Module):
  """Flatten, then one dense layer (linen)."""
  width: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.width)(x.reshape(x.shape[0], -1))


class Mixer(nnx.Module):
  """A residual dense layer (NNX)."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.dense = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, x):
    return x + self.dense(x)


def build(input_shape: tuple[int, ...], num_classes: int) -> list[blocks.Block]:
  """Every block of the network, the classifier last (`model.factory`)."""
  del input_shape
  return [blocks.from_linen(Features(64), activation="relu"),
          blocks.from_nnx(lambda rngs: Mixer(64, rngs), activation="relu"),
          blocks.dense(num_classes)]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=3)
  args = parser.parse_args(argv)
  settings = config.load(overrides={"model.factory": "custom_segment:build", "model.cuts": [1],
                                    "train.epochs": args.epochs})
  devices = select_devices(0, settings.num_devices)
  problem = make_problem(settings, load_dataset("digits"), devices)
  for train in (schedules.train_conventional, schedules.train_sequential):
    _, result = train(problem, Progress(quiet=True))
    print(f"{result.method}: test accuracy {100 * result.test_accuracy:.2f}%")


if __name__ == "__main__":
  main()
