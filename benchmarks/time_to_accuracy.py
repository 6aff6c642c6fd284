"""The paper's headline from a `synthpart compare` results.json: compute and wall time needed to
reach 90% of conventional training's final accuracy, as a reduction vs conventional.

    synthpart compare --dataset fashion-mnist --epochs 10 --with-model-parallel --out runs/fm
    python3 benchmarks/time_to_accuracy.py runs/fm/results.json [--fraction 0.9]

FLOPs are analytic (`synthpart.flops`, `synthpart.curves`); seconds are each run's training time after
compilation, evaluation excluded; both are read at the first epoch whose composed network reaches
the target. Also prints the bytes each method moved between devices (from its ledger).

Read once per epoch and against the run's own final conventional accuracy, this cannot resolve
a method that reaches the target inside its first epoch: `synthpart budget` measures compute to
a fixed target, interpolated between evaluations within epochs, over budgets and seeds.
"""

from __future__ import annotations

import argparse
import json
import sys

from synthpart import curves


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("results", help="a results.json written by `synthpart compare`")
  parser.add_argument("--fraction", type=float, default=0.9)
  args = parser.parse_args(argv)
  with open(args.results) as f:
    document = json.load(f)
  print(curves.format_time_to_accuracy(
      curves.time_to_accuracy(document, args.fraction)))
  print("\n| method | MB moved between devices |\n|---|---|")
  for run in document["runs"]:
    print(f"| {run['method']} | {curves.ledger_bytes(run['transfers']) / 1e6:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
