"""Train partitioned networks from a program: settings, devices, data, training, results.

  python3 examples/train_library.py [--dataset digits] [--epochs 3]

Runs from any directory once synthpart is installed (`pip install -e .`). Each segment gets a
device of its own: on a CPU the devices are simulated (`select_devices`, called before anything
else starts JAX), on GPUs they are the real ones. Segments that share a device still train, one
after another, with a warning.
"""

from __future__ import annotations

import argparse

from synthpart import config
from synthpart.data import load_dataset
from synthpart.progress import Progress
from synthpart.prepare import select_devices
from synthpart.train import schedules
from synthpart.train.problem import make_problem


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  settings = config.load(overrides={"model.hidden": [64, 64, 64], "model.cuts": [2],
                                    "train.epochs": args.epochs, "train.learning_rate": 3e-3,
                                    "train.lr_schedule": "cosine", "seeds.sil": 7})
  devices = select_devices(0, settings.num_devices)  # one per segment
  problem = make_problem(settings, load_dataset(args.dataset), devices)
  params, result = schedules.train_parallel(problem, Progress(quiet=args.quiet))
  print(f"{result.method}: test accuracy {100 * result.test_accuracy:.2f}% on "
        f"{', '.join(s.device for s in result.segments)}")
  for segment in result.segments:
    print(f"  {segment.name}: loss per epoch {[round(x, 4) for x in segment.loss_per_epoch]}")
  # `params` holds each segment's parameters as host numpy arrays (one list per segment);
  # jax.device_put(params, device) puts them back on a device.
  print(f"  parameters: {len(params)} segments")


if __name__ == "__main__":
  main()
