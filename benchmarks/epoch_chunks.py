"""Conventional training's samples/s on Fashion-MNIST, before and after bars moved within epochs.

Usage:
  python3 benchmarks/epoch_chunks.py BEFORE_TREE AFTER_TREE [--epochs 3] [--rounds 2]

Each tree is a source checkout holding `synthpart/` (e.g. `git archive <commit> synthpart | tar
-x -C DIR` for the earlier one). Each run is a fresh interpreter in that tree: the default
network (784 -> 5 x 512 -> 10), Adam, batch 128, on one CPU device, with bars shown (stderr to
/dev/null) and quiet. Samples/s per run: training examples / an epoch's seconds, the first
epoch left out (best: the fastest epoch; median: the median one). Rounds alternate the trees,
so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_ONE_RUN = """
import json, jax
from synthpart import config
from synthpart.data import load_dataset
from synthpart.progress import Progress
from synthpart.train import problem, schedules
cfg = config.load(overrides={{"train.epochs": {epochs}}})
p = problem.make_problem(cfg, load_dataset("fashion-mnist"), jax.devices()[:1])
_, r = schedules.train_conventional(p, Progress(quiet={quiet}))
s = r.segments[0]
print(json.dumps({{"seconds": s.epoch_seconds, "examples": s.steps_per_epoch * s.batch_size,
                  "compile": r.compile_seconds}}))
"""


def one_run(tree: str, epochs: int, quiet: bool) -> dict:
  code = _ONE_RUN.format(epochs=epochs, quiet=quiet)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": tree}
  out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
  result = json.loads(out.strip().splitlines()[-1])
  later = result["seconds"][1:]
  result["best"] = result["examples"] / min(later)
  result["median"] = result["examples"] / statistics.median(later)
  return result


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("before")
  parser.add_argument("after")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  print(f"load before: {os.getloadavg()[0]:.1f}")
  for r in range(args.rounds):
    for quiet in (False, True):
      trees = [("before", args.before), ("after", args.after)]
      for name, tree in trees if r % 2 == 0 else trees[::-1]:
        result = one_run(tree, args.epochs, quiet)
        print(f"round {r} {name:6} {'quiet' if quiet else 'bars '} best "
              f"{result['best']:8,.0f} median {result['median']:8,.0f} samples/s  epochs "
              f"{', '.join(f'{s:.2f}' for s in result['seconds'])} s  compile "
              f"{result['compile']:.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  main()
