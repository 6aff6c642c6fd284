"""Samples/s of one segment group trained through jax.jit + NamedSharding and through jax.pmap.

Usage:
  python3 benchmarks/pmap_vs_sharding.py [--group 2] [--epochs 3] [--rounds 2] [--examples N]

Conventional training of the default network (784 -> 5 x 512 -> 10, Adam, batch 128) on
Fashion-MNIST, on a group of `--group` devices (`placement.devices_per_segment`), simulated on
CPU where there is no accelerator. Each run is a fresh interpreter; rounds alternate the backends.
Samples/s: training examples / the best and the median epoch's seconds, the first epoch left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_ONE_RUN = """
import dataclasses, json, jax
jax.config.update("jax_num_cpu_devices", {group})
from synthpart import config
from synthpart.data import load_dataset
from synthpart.progress import Progress
from synthpart.train import problem, schedules
cfg = config.load(overrides={{"train.epochs": {epochs}, "placement.devices_per_segment": {group},
                              "placement.backend": "{backend}"}})
data = load_dataset("fashion-mnist")
if {examples}:
  data = dataclasses.replace(data, train_images=data.train_images[:{examples}],
                             train_labels=data.train_labels[:{examples}])
p = problem.make_problem(cfg, data, jax.devices()[:{group}])
_, r = schedules.train_conventional(p, Progress(quiet=True))
s = r.segments[0]
print(json.dumps({{"seconds": s.epoch_seconds, "examples": s.steps_per_epoch * s.batch_size,
                  "device": s.device, "platform": jax.devices()[0].platform,
                  "accuracy": r.test_accuracy}}))
"""


def one_run(backend: str, args: argparse.Namespace) -> dict:
  code = _ONE_RUN.format(group=args.group, epochs=args.epochs, backend=backend,
                         examples=args.examples)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--group", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--examples", type=int, default=0, help="first N training examples (0: all)")
  args = parser.parse_args()
  for r in range(args.rounds):
    backends = ("sharding", "pmap") if r % 2 == 0 else ("pmap", "sharding")
    for backend in backends:
      result = one_run(backend, args)
      later = result["seconds"][1:]
      print(f"round {r} {backend:8} on {result['device']} ({result['platform']}): best "
            f"{result['examples'] / min(later):8,.0f} median "
            f"{result['examples'] / statistics.median(later):8,.0f} samples/s; accuracy "
            f"{100 * result['accuracy']:.2f}%; load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  main()
