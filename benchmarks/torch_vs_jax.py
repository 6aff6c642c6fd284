"""PyTorch vs synthpart: the same network and training loop, side by side, in samples/s.

The network: 6 dense layers (784 -> 512 x 5 -> 10), ReLU, Adam (lr 1e-3), softmax cross-entropy,
on uint8 Fashion-MNIST-shaped data scaled to [0, 1] per batch, a fresh permutation per epoch,
the last partial batch dropped. synthpart runs its conventional loop (one jitted `lax.scan` per
epoch, `synthpart.train.epoch.make_epoch`); PyTorch runs a plain eager loop.

    python3 benchmarks/torch_vs_jax.py                      # batch 256 and 128, real data if found
    python3 benchmarks/torch_vs_jax.py --data random --examples 20000 --json out.json

Timing excludes compilation and a warm-up epoch; each framework runs `--epochs` timed epochs per
round and the rounds alternate between the two frameworks (so a change in machine load hits
both); the best round is reported, and the median too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np


def load_data(kind: str, examples: int) -> tuple[np.ndarray, np.ndarray, str]:
  """uint8 [n, 784] images and int32 [n] labels: Fashion-MNIST if asked and present, else random."""
  if kind in ("real", "auto"):
    try:
      from synthpart.data import load_dataset
      ds = load_dataset("fashion-mnist", progress=False)
      x = ds.train_images.reshape(len(ds.train_images), -1)[:examples]
      return np.ascontiguousarray(x), np.asarray(ds.train_labels[:examples], np.int32), ds.source
    except Exception as e:  # noqa: BLE001  (any failure to find the data falls back to random)
      if kind == "real":
        raise
      print(f"fashion-mnist not available ({e}); using random data", file=sys.stderr)
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (examples, 784), dtype=np.uint8),
          rng.integers(0, 10, examples).astype(np.int32), "random")


def jax_trainer(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], batch: int,
                lr: float) -> tuple[Callable[[int], float], float]:
  """synthpart's conventional loop on device 0; returns (run_epoch(epoch) -> loss, compile s)."""
  import jax
  from synthpart import config as config_lib
  from synthpart.data import Dataset
  from synthpart.model import whole_network
  from synthpart.train import segments
  from synthpart.train.objectives import Inputs
  from synthpart.train.problem import ORDER_STREAM, make_problem
  config = config_lib.load(None, {"model.hidden": list(hidden), "model.cuts": [],
                                  "train.batch_size": batch, "train.learning_rate": lr,
                                  "recovery.epochs": 0})
  dataset = Dataset("bench", 10, x.reshape(-1, 28, 28, 1), y, x[:batch].reshape(-1, 28, 28, 1),
                    y[:batch], "bench")
  problem = make_problem(config, dataset, jax.devices()[:1])
  whole = whole_network(problem.specs)
  spec = segments.loop_spec(problem, "conventional", "network", whole, Inputs.PIXELS,
                            train=config.train)
  run = segments.segment_loop(problem, spec, {"x": problem.train_x, "y": problem.train_y},
                              key=problem.key(ORDER_STREAM, 0))

  def epoch(index: int) -> float:
    return float(np.mean(jax.device_get(run.dispatch(index))))

  return epoch, run.compile_seconds


def torch_trainer(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], batch: int,
                  lr: float, seed: int = 0, device: str = "cpu",
                  bf16: bool = False) -> Callable[[int], float]:
  """A plain PyTorch eager loop; returns run_epoch(epoch) -> mean loss.

  On "cuda" the data lives on the GPU; `bf16` runs the layers under bf16 autocast with f32
  master weights (synthpart's model.dtype=bfloat16, param_dtype=float32).
  """
  import torch
  from torch import nn
  torch.manual_seed(seed)
  widths = (x.shape[1], *hidden, 10)
  layers: list[nn.Module] = []
  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    layers.append(nn.Linear(a, b))
    if i < len(widths) - 2:
      layers.append(nn.ReLU())
  model = nn.Sequential(*layers).to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  # A writable copy: the dataset's arrays are read-only.
  images = torch.from_numpy(np.array(x)).to(device)
  labels = torch.from_numpy(y.astype(np.int64)).to(device)
  steps = len(y) // batch
  generator = torch.Generator(device=device).manual_seed(seed)

  def epoch(index: int) -> float:
    order = torch.randperm(len(y), generator=generator, device=device)
    total = torch.zeros((), device=device)
    for step in range(steps):
      idx = order[step * batch:(step + 1) * batch]
      xb = images[idx].float().div_(255.0)
      with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        logits = model(xb)
      loss = nn.functional.cross_entropy(logits.float(), labels[idx])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      total += loss.detach()
    return float(total) / steps  # float() waits for the device

  return epoch


def time_rounds(trainers: dict[str, Callable[[int], float]], epochs: int, rounds: int,
                examples_per_epoch: int) -> dict[str, dict[str, Any]]:
  """Alternates the trainers round by round; samples/s per round, after one warm-up epoch each."""
  rates: dict[str, list[float]] = {name: [] for name in trainers}
  losses: dict[str, float] = {}
  for name, epoch in trainers.items():
    losses[name] = epoch(0)
  for r in range(rounds):
    for name, epoch in trainers.items():
      start = time.perf_counter()
      for e in range(epochs):
        losses[name] = epoch(1 + r * epochs + e)
      rates[name].append(epochs * examples_per_epoch / (time.perf_counter() - start))
  return {name: {"best": max(v), "median": statistics.median(v), "rounds": v,
                 "final_loss": losses[name]} for name, v in rates.items()}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch-sizes", default="256,128")
  parser.add_argument("--hidden", default="512,512,512,512,512")
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--examples", type=int, default=60000, help="examples per epoch")
  parser.add_argument("--epochs", type=int, default=1, help="timed epochs per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--data", choices=("auto", "real", "random"), default="auto")
  parser.add_argument("--threads", type=int, default=0,
                      help="PyTorch intra-op threads (default: all CPUs, as XLA uses); 1 also "
                           "makes XLA single-threaded, a fairer race on a busy machine")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  if args.threads == 1:  # must precede jax's import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()
  import jax
  import torch
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  hidden = tuple(int(w) for w in args.hidden.split(","))
  x, y, source = load_data(args.data, args.examples)
  results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "jax": jax.__version__, "jax_backend": jax.default_backend(),
                         "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                         "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                         "load_average": os.getloadavg(),
                         "xla_flags": os.environ.get("XLA_FLAGS", "")},
             "data": source, "hidden": list(hidden), "examples": len(y), "runs": []}
  print(f"data: {source}; {len(y)} examples per epoch; jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    jax_epoch, compile_seconds = jax_trainer(x, y, hidden, batch, args.lr)
    trainers = {"synthpart": jax_epoch, "pytorch": torch_trainer(x, y, hidden, batch, args.lr)}
    steps = len(y) // batch
    rates = time_rounds(trainers, args.epochs, args.rounds, steps * batch)
    ratio = rates["synthpart"]["best"] / rates["pytorch"]["best"]
    results["runs"].append({"batch_size": batch, "compile_seconds": compile_seconds,
                            "ratio_best": ratio,
                            "ratio_median": rates["synthpart"]["median"]
                            / rates["pytorch"]["median"], **rates})
    print(f"batch {batch}: synthpart {rates['synthpart']['best']:,.0f} samples/s (median "
          f"{rates['synthpart']['median']:,.0f}), pytorch {rates['pytorch']['best']:,.0f} "
          f"(median {rates['pytorch']['median']:,.0f}); synthpart / pytorch = {ratio:.2f}; "
          f"final losses {rates['synthpart']['final_loss']:.3f} / "
          f"{rates['pytorch']['final_loss']:.3f}")
  results["machine"]["load_average_after"] = os.getloadavg()
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
