"""Times loading all of Fashion-MNIST (70,000 images) into uint8 arrays.

Usage:
  python3 benchmarks/load_fashion_mnist.py [--data-dir DIR] [--repeats N] [--record FILE.md]

Reads the gzipped IDX files (by default from /usr/share/datasets/fashion-mnist, as `load_dataset`
finds them), decompresses and validates them. The first run is timed in a fresh interpreter
(the package import included, as a user sees it); later runs reuse the process. The target is
under 2 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 2.0

_ONE_RUN = """
import time
t0 = time.perf_counter()
from synthpart.data import load_dataset
ds = load_dataset("fashion-mnist", {data_dir!r})
assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
print(time.perf_counter() - t0)
"""


def fresh_process_seconds(data_dir: str | None) -> float:
  """One load in a new interpreter, import included."""
  out = subprocess.run([sys.executable, "-c", _ONE_RUN.format(data_dir=data_dir)], cwd=REPO,
                       check=True, capture_output=True, text=True).stdout
  return float(out.strip().splitlines()[-1])


def in_process_seconds(data_dir: str | None, repeats: int) -> list[float]:
  """Repeated loads in this process (files in the page cache, package imported)."""
  sys.path.insert(0, str(REPO))
  from synthpart.data import load_dataset
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    ds = load_dataset("fashion-mnist", data_dir)
    times.append(time.perf_counter() - t0)
  assert len(ds.train_labels) + len(ds.test_labels) == 70000
  return times


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import numpy
  # Other work on a small machine slows decompression: the load average puts numbers in context.
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return (f"{cpu}, {os.cpu_count()} cores (load average {load}); {platform.system()} "
          f"{platform.release()}; Python {platform.python_version()}, numpy {numpy.__version__}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", default=None, help="default: where load_dataset finds it")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--record", default=None, help="append a result section to this file")
  args = parser.parse_args()

  first = fresh_process_seconds(args.data_dir)
  warm = in_process_seconds(args.data_dir, args.repeats)
  from synthpart.data import load_dataset
  source = load_dataset("fashion-mnist", args.data_dir).source
  verdict = "meets" if max(first, *warm) < TARGET_S else "MISSES"
  lines = [
    f"## {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
    "",
    f"- machine: {machine()}",
    f"- command: `python3 benchmarks/load_fashion_mnist.py{' ' if len(sys.argv) > 1 else ''}"
    f"{' '.join(sys.argv[1:])}`",
    f"- data: {source} (gzipped IDX, 60,000 + 10,000 images)",
    f"- fresh process, import included: {first:.3f} s",
    f"- in process, {args.repeats} runs: median {statistics.median(warm):.3f} s, "
    f"min {min(warm):.3f} s, max {max(warm):.3f} s",
    f"- {verdict} the {TARGET_S:.0f} s target",
    "",
  ]
  print("\n".join(lines))
  if args.record:
    path = Path(args.record)
    header = "" if path.exists() else (
        "# Loading Fashion-MNIST\n\nTime to load all 70,000 Fashion-MNIST images into uint8 "
        "arrays with `synthpart.data.load_dataset` (decompress, parse, validate).\n\n")
    with open(path, "a") as f:
      f.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
