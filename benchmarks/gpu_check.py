"""Every GPU check in one run (under 5 minutes on an H100/H200): see gpu_check.sh.

  1. the GPU's measured bf16 matmul rate (square matmuls chained in one jitted loop)
  2. width 8192, bf16 compute / f32 params, batch 4096, cut 3+3: conventional and every segment
     loop (and model-parallel), TFLOP/s as a percentage of that rate (target: 70%)
  3. paper size (width 512, f32, batch 256): samples/s of every loop (target: 2 M/s per segment)
  4. the same two networks in a plain PyTorch loop, if torch imports and sees a GPU
  5. per-loop device memory peaks (`memory_stats`), each loop in a fresh process, while time lasts

Results go to OUT/gpu_check.json and OUT/gpu_check.md, rewritten after every section, so a run
cut short still leaves what it measured. `--tiny` runs the same logic at toy sizes (a CPU check).

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable


def _tqdm_stand_in() -> None:
  """synthpart's progress bars import tqdm; a bare GPU image may lack it. Bars are off here."""
  try:
    import tqdm.auto  # noqa: F401
  except ImportError:
    class _Null:
      def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

      def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

      write = staticmethod(lambda *args, **kwargs: None)

    module = types.ModuleType("tqdm")
    module.tqdm = _Null  # type: ignore[attr-defined]
    module.auto = module  # type: ignore[attr-defined]
    sys.modules["tqdm"] = module
    sys.modules["tqdm.auto"] = module


_tqdm_stand_in()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from synthpart import bench  # noqa: E402
from synthpart.train.problem import make_problem  # noqa: E402

SIZES = {  # name -> (wide: width, batch, steps), (paper: width, batch, steps), matmul n, repeats
    "full": {"wide": (8192, 4096, 10), "paper": (512, 256, 1000), "matmul": 8192, "repeats": 3},
    "tiny": {"wide": (32, 64, 2), "paper": (16, 32, 4), "matmul": 128, "repeats": 1},
}
WIDE_TARGET = 0.70  # fraction of the measured bf16 matmul rate
PAPER_TARGET = 2e6  # samples/s per segment


def matmul_rate(n: int, chain: int = 20, trials: int = 3) -> dict[str, Any]:
  """TFLOP/s of bf16 [n, n] @ [n, n], `chain` matmuls per jitted call, best of `trials`."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.bfloat16)
  b = (jax.random.normal(key_b, (n, n), jnp.float32) / np.sqrt(n)).astype(jnp.bfloat16)

  @jax.jit
  def chained(a: jax.Array, b: jax.Array) -> jax.Array:
    return jax.lax.fori_loop(0, chain, lambda i, c: c @ b, a)

  jax.block_until_ready(chained(a, b))
  best = float("inf")
  for _ in range(trials):
    start = time.perf_counter()
    jax.block_until_ready(chained(a, b))
    best = min(best, time.perf_counter() - start)
  return {"n": n, "chain": chain, "seconds": best, "tflops": 2 * n ** 3 * chain / best / 1e12}


def run_suite(name: str, width: int, batch: int, steps: int, repeats: int,
              kinds: tuple[str, ...] = bench.LOOP_KINDS) -> dict[str, Any]:
  suite = bench.SUITES[name]
  size = bench.Size((width,) * 5, batch, steps)
  problem = make_problem(bench.suite_config(suite, size), bench.synthetic_dataset(steps * batch),
                         jax.devices()[:1])
  loops = bench.run_suite(suite, size, problem, repeats, kinds)
  return {"suite": name, "width": width, "batch_size": batch, "steps": steps,
          "dtype": suite.dtype, "loops": loops}


def torch_check(width: int, batch: int, steps: int, bf16: bool) -> dict[str, Any] | None:
  """samples/s of the plain PyTorch loop on the GPU (None without torch or CUDA)."""
  try:
    import torch
  except ImportError:
    return None
  if not torch.cuda.is_available():
    return None
  sys.path.insert(0, str(Path(__file__).parent))
  from torch_vs_jax import torch_trainer
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (steps * batch, 784), dtype=np.uint8)
  y = rng.integers(0, 10, steps * batch).astype(np.int32)
  epoch = torch_trainer(x, y, (width,) * 5, batch, 1e-3, device="cuda", bf16=bf16)
  epoch(0)
  start = time.perf_counter()
  epoch(1)
  seconds = time.perf_counter() - start
  return {"torch": torch.__version__, "width": width, "batch_size": batch, "bf16": bf16,
          "samples_per_s": steps * batch / seconds}


def memory_probe(kind: str, segment: int, width: int, batch: int, steps: int,
                 suite: str) -> dict[str, Any]:
  """One loop alone in this process: the device's peak is that loop's own."""
  from synthpart.model import whole_network
  size = bench.Size((width,) * 5, batch, steps)
  problem = make_problem(bench.suite_config(bench.SUITES[suite], size),
                         bench.synthetic_dataset(steps * batch), jax.devices()[:1])
  if kind == "conventional":
    spec, inputs = whole_network(problem.specs), "pixels"
  else:
    spec = problem.specs[segment]
    inputs = "pixels" if spec.is_first else ("features" if kind == "sequential" else "sil")
  loop = bench.bench_segment_loop(problem, spec, inputs, kind, 1, f"{kind} {segment}")
  stats = jax.devices()[0].memory_stats() or {}
  return {"loop": loop["loop"], "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
          "compiled_peak": loop["memory"]["compiled"]["peak"]}


def summarize(results: dict[str, Any]) -> str:
  """The checks as markdown, with each target and whether it was met."""
  lines = ["# GPU check", "", f"Device: {results['device']}; jax {results['jax']}; "
           f"{results['date']}; sizes: {results['sizes']}.", ""]
  rate = results.get("matmul")
  if rate:
    lines += [f"bf16 matmul ({rate['n']}^3, {rate['chain']} chained): "
              f"{rate['tflops']:.1f} TFLOP/s", ""]
  wide = results.get("wide")
  if wide and rate:
    lines += [f"## Width {wide['width']}, {wide['dtype']}, batch {wide['batch_size']} "
              f"(target {WIDE_TARGET:.0%} of the matmul rate)", "",
              "| loop | samples/s | TFLOP/s | % of matmul | met | compile s |", "|---|---|---|---|---|---|"]
    for l in wide["loops"]:
      share = l["tflops"] / rate["tflops"]
      lines.append(f"| {l['loop']} | {l['samples_per_s']:,.0f} | {l['tflops']:.1f} | "
                   f"{100 * share:.0f}% | {'yes' if share >= WIDE_TARGET else 'no'} | "
                   f"{l['compile_seconds']:.1f} |")
    lines.append("")
  paper = results.get("paper")
  if paper:
    lines += [f"## Paper size: width {paper['width']}, f32, batch {paper['batch_size']} "
              f"(target {PAPER_TARGET / 1e6:.0f} M samples/s per segment)", "",
              "| loop | samples/s | TFLOP/s | met | compile s |", "|---|---|---|---|---|"]
    for l in paper["loops"]:
      met = "yes" if l["samples_per_s"] >= PAPER_TARGET else "no"
      lines.append(f"| {l['loop']} | {l['samples_per_s']:,.0f} | {l['tflops']:.2f} | "
                   f"{met if 'segment' in l['loop'] else '-'} | {l['compile_seconds']:.1f} |")
    lines.append("")
  for entry in results.get("torch") or []:
    lines.append(f"PyTorch {entry['torch']} width {entry['width']} batch {entry['batch_size']}"
                 f"{' bf16' if entry['bf16'] else ' f32'}: {entry['samples_per_s']:,.0f} "
                 "samples/s")
  if results.get("memory"):
    lines += ["", "## Device memory peaks, one loop per process", "",
              "| loop | device peak MB | compiled peak MB |", "|---|---|---|"]
    for m in results["memory"]:
      peak = m.get("peak_bytes_in_use")
      lines.append(f"| {m['loop']} | {'-' if peak is None else f'{peak / 1e6:,.0f}'} | "
                   f"{m['compiled_peak'] / 1e6:,.0f} |")
  if results.get("skipped"):
    lines += ["", f"Skipped for time: {', '.join(results['skipped'])}"]
  if results.get("errors"):
    lines += ["", "Errors:"] + [f"- {k}: {v}" for k, v in results["errors"].items()]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
  parser.add_argument("--tiny", action="store_true", help="toy sizes: check the logic on CPU")
  parser.add_argument("--budget", type=float, default=270.0,
                      help="seconds; sections that would start after it are skipped")
  parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sizes = SIZES["tiny" if args.tiny else "full"]
  if args.probe:  # a child process of section 5: KIND:SEGMENT:SUITE
    kind, segment, suite = args.probe.split(":")
    width, batch, steps = sizes["wide" if suite == "wide-8192" else "paper"]
    print(json.dumps(memory_probe(kind, int(segment), width, batch, steps, suite)))
    return 0
  start = time.perf_counter()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  device = jax.devices()[0]
  results: dict[str, Any] = {"device": f"{device.platform} {device.device_kind}",
                             "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "sizes": "tiny" if args.tiny else "full", "skipped": [],
                             "errors": {}}

  def save() -> None:
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    (out / "gpu_check.md").write_text(summarize(results))

  def section(name: str, fn: Callable[[], Any], reserve: float = 0.0) -> None:
    elapsed = time.perf_counter() - start
    if elapsed + reserve > args.budget:
      results["skipped"].append(name)
    else:
      t = time.perf_counter()
      try:
        results[name] = fn()
      except Exception as e:  # noqa: BLE001  (one failing check must not lose the others)
        results["errors"][name] = f"{type(e).__name__}: {e}"
      print(f"[{time.perf_counter() - start:6.1f}s] {name} done in "
            f"{time.perf_counter() - t:.1f}s", flush=True)
    save()

  repeats = sizes["repeats"]
  section("matmul", lambda: matmul_rate(sizes["matmul"]))
  section("wide", lambda: run_suite("wide-8192", *sizes["wide"], repeats=repeats), reserve=60)
  section("paper", lambda: run_suite("paper", *sizes["paper"], repeats=repeats), reserve=30)
  section("torch", lambda: [r for r in (torch_check(*sizes["paper"], bf16=False),
                                        torch_check(*sizes["wide"], bf16=True)) if r],
          reserve=30)
  probes = [f"{kind}:{seg}:{suite}" for suite in ("wide-8192", "paper")
            for kind, seg in (("conventional", 0), ("parallel", 0), ("parallel", 1))]
  memory = []
  for probe in probes:
    if time.perf_counter() - start + 40 > args.budget:
      results["skipped"].append(f"memory {probe}")
      continue
    command = [sys.executable, __file__, "--probe", probe] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
      memory.append({"probe": probe, **json.loads(done.stdout.strip().splitlines()[-1])})
    else:
      results["errors"][f"memory {probe}"] = done.stderr.strip()[-500:]
    results["memory"] = memory
    save()
  print(summarize(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
