"""One epoch of conventional training whole against the same epoch in 8 chunks (the bars'),
in one process: what chunking costs, apart from the noise between fresh interpreters.

Usage (Fashion-MNIST installed, e.g. `apt-get install dataset-fashion-mnist`):
  python3 benchmarks/epoch_chunk_overhead.py [--repeats 3]

Prints, per repeat, the seconds of epoch r+1 run whole (`Loop.dispatch`) and of epoch r+1 run
as the 8 chunks a bar moves by (`Loop.dispatch_steps`), compiled beforehand.
"""

from __future__ import annotations

import argparse
import time

import jax

from synthpart import config
from synthpart.data import load_dataset
from synthpart.model import whole_network
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.loop import start_loop
from synthpart.train.stops import epoch_chunks


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  cfg = config.load(overrides={"model.cuts": [], "train.epochs": 1})
  problem = P.make_problem(cfg, load_dataset("fashion-mnist"), jax.devices()[:1])
  whole = whole_network(problem.specs)
  device = problem.device_of(0)
  loop = start_loop(S.segment_task(problem, whole, "pixels"), cfg.train,
                    S.init_params(problem, whole, device),
                    {"x": problem.train_x, "y": problem.train_y},
                    S.segment_constants(problem, whole, "pixels", device),
                    problem.key(P.ORDER_STREAM, 0), device, "network")
  sizes = epoch_chunks(loop.result.steps_per_epoch)
  for count in set(sizes):
    loop.prepare_chunk(count)
  jax.block_until_ready(loop.dispatch(0))
  for r in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(loop.dispatch(1 + r))
    whole_seconds = time.perf_counter() - start
    start, first, pieces = time.perf_counter(), 0, []
    for count in sizes:
      pieces.append(loop.dispatch_steps(1 + r, first, count))
      first += count
    jax.block_until_ready(pieces)
    print(f"repeat {r}: whole {whole_seconds:.3f} s, {len(sizes)} chunks "
          f"{time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
  main()
