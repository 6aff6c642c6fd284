"""`synthpart bench SUITE`: throughput, FLOP/s, compile time and memory of every training loop.

The command runs a suite's loops (`synthpart.bench.loops`), adds the compiled memory of every
method (`synthpart.bench.compiled`) unless told not to, and writes bench.json and bench.md into
--out, which it claims before the benchmark runs (`synthpart.rundir.claim`, kind "bench"): another
command's directory is refused, and an earlier benchmark is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax

from synthpart.bench.compiled import format_memory, memory_ratios, memory_report
from synthpart.bench.loops import (
  LOOP_KINDS,
  SUITES,
  Size,
  Suite,
  machine,
  real_subset,
  run_suite,
  suite_config,
  synthetic_dataset,
)
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic, write_text_atomic
from synthpart.prepare import select_devices
from synthpart.rundir import claim
from synthpart.train.problem import make_problem


def _mb(value: float | None) -> str:
  return "-" if value is None else f"{value / 1e6:.1f}"


def _loop_row(loop: dict[str, Any]) -> str:
  """One loop's markdown row: its largest compiled peak over its functions."""
  mem = loop["memory"]
  entries = [mem] if "compiled" in mem else list(mem.values())
  peak = max(e["compiled"]["peak"] for e in entries)
  peak_model = max(e["compiled"]["peak_without_data"] for e in entries)
  device = [e["device"].get("peak_bytes_in_use") for e in entries if e["device"]]
  speed = loop.get("speedup_vs_conventional")
  return (f"| {loop['loop']} | {loop['layers'][0]}-{loop['layers'][1]} | "
          f"{loop['samples_per_s']:,.0f} | {'-' if speed is None else f'{speed:.2f}'} | "
          f"{loop['tflops']:.3f} | {loop['compile_seconds']:.1f} | {_mb(peak)} | "
          f"{_mb(peak_model)} | {_mb(max(device)) if device else '-'} |")


def format_markdown(document: dict[str, Any]) -> str:
  """The loops as a markdown table, with the suite, sizes and machine above it."""
  s, m = document["suite"], document["machine"]
  lines = [f"# synthpart bench {s['name']}", "",
           (f"{s['description']}. Hidden {s['hidden'][0]} x {len(s['hidden'])}, cuts "
            f"{s['cuts']}, batch {s['batch_size']}, {s['steps']} steps x {s['repeats']} timed "
            f"epochs, compute {s['dtype']}, params {s['param_dtype']}, data {s['data']}."),
           (f"Machine: {m['backend']} ({', '.join(sorted(set(m['devices'])))}), "
            f"{m['cpu_count']} CPUs, jax {m['versions'].get('jax')}, {m['date']}."), "",
           ("| loop | layers | samples/s | x conv | TFLOP/s | compile s | peak MB | "
            "peak MB w/o data | device peak MB |"),
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [_loop_row(loop) for loop in document["loops"]]
  mp = next((loop for loop in document["loops"] if loop["kind"] == "model-parallel"), None)
  if mp:
    moved, expected = mp["bytes_moved"] / 1e6, mp["bytes_moved_expected"] / 1e6
    lines += ["", (f"model-parallel moved {moved:.1f} MB between devices in {mp['repeats']} "
                   f"timed epochs (expected {expected:.1f} MB) over {', '.join(mp['devices'])}; "
                   "the partitioned loops move none while training.")]
  if document.get("memory"):
    lines += ["", *format_memory(document["memory"])]
  return "\n".join(lines) + "\n"


def add_bench_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
  """Adds `synthpart bench SUITE` to the command's subparsers."""
  p = sub.add_parser("bench", help="samples/s, TFLOP/s, compile time and memory of every loop",
                     description=(__doc__ or "").split("\n\n")[0])
  p.add_argument("suite", choices=sorted(SUITES), help="; ".join(
      f"{s.name}: {s.description}" for s in SUITES.values()))
  p.add_argument("--steps", type=int, default=None, metavar="N",
                 help="steps per timed epoch (default: the suite's, smaller on CPU)")
  p.add_argument("--repeats", type=int, default=2, metavar="N", help="timed epochs (default 2)")
  p.add_argument("--batch-size", type=int, default=None, metavar="N")
  p.add_argument("--width", type=int, default=None, metavar="W",
                 help="width of every hidden layer (default: the suite's)")
  p.add_argument("--full", action="store_true",
                 help="the accelerator sizes even on CPU (slow there)")
  p.add_argument("--loops", default=",".join(LOOP_KINDS), metavar="K1,K2",
                 help=f"which loops, comma separated: {', '.join(LOOP_KINDS)}")
  p.add_argument("--dataset", default=None, metavar="NAME",
                 help="a real dataset (its first steps x batch training examples) instead of "
                      "random data")
  p.add_argument("--data-dir", default=None, metavar="DIR")
  p.add_argument("--devices", type=int, default=0, metavar="N",
                 help="devices to spread segments over (default: one per segment, simulated "
                      "on CPU)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="any setting by its dotted name, e.g. train.optimizer=sgd (repeatable)")
  p.add_argument("--no-memory-report", dest="memory_report", action="store_false",
                 help="skip the per-method, per-device memory report (it compiles every "
                      "method once more, without running it)")
  p.add_argument("--out", default=None, metavar="DIR",
                 help="where bench.json and bench.md go (default runs/bench-SUITE-TIME); "
                      "a directory of another command is refused")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an earlier benchmark's bench.json and bench.md in --out")
  p.set_defaults(func=run_bench_command)
  return p


def _check_positive(name: str, value: int | None) -> None:
  if value is not None and value < 1:
    raise ConfigError(f"--{name} must be at least 1, got {value}")


def _loop_kinds(text: str) -> list[str]:
  kinds = [k.strip() for k in text.split(",") if k.strip()]
  if not kinds or any(k not in LOOP_KINDS for k in kinds):
    raise ConfigError(f"--loops {text!r}: choose from {', '.join(LOOP_KINDS)}")
  return kinds


def _overrides(items: list[str]) -> dict[str, Any]:
  overrides: dict[str, Any] = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. train.optimizer=sgd")
    overrides[key.strip()] = value.strip()
  return overrides


def run_bench_command(args: argparse.Namespace) -> int:
  for name in ("steps", "repeats", "batch_size", "width"):
    _check_positive(name.replace("_", "-"), getattr(args, name))
  kinds = _loop_kinds(args.loops)
  suite = SUITES[args.suite]
  overrides = _overrides(args.set)
  out = Path(args.out or f"runs/bench-{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}")
  with claim(out, "bench"):  # before the benchmark runs: a directory it may not write refused
    earlier = [name for name in ("bench.json", "bench.md") if (out / name).exists()]
    if earlier and not args.overwrite:
      raise ConfigError(f"--out {out} holds an earlier benchmark ({', '.join(earlier)}); "
                        "choose another --out or pass --overwrite to replace it")
    return _run_bench(args, suite, kinds, overrides, out)


def _run_bench(args: argparse.Namespace, suite: Suite, kinds: list[str],
               overrides: dict[str, Any], out: Path) -> int:
  devices = select_devices(args.devices, len(suite.cuts) + 1)
  size = suite.size(jax.default_backend(), args.full)
  size = Size(tuple(args.width or w for w in size.hidden), args.batch_size or size.batch_size,
              args.steps or size.steps)
  config = suite_config(suite, size, overrides)
  num_examples = size.steps * config.train.batch_size
  if args.dataset:
    dataset = real_subset(args.dataset, args.data_dir, num_examples)
  else:
    dataset = synthetic_dataset(num_examples)
  problem = make_problem(config, dataset, devices)
  loops = run_suite(suite, size, problem, args.repeats, kinds)
  memory = None
  if args.memory_report:
    report = memory_report(problem)
    memory = {"methods": report, "ratios": memory_ratios(report)}
  document = {
      "suite": {"name": suite.name, "description": suite.description,
                "hidden": list(config.model.hidden), "cuts": list(config.model.cuts),
                "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
                "batch_size": config.train.batch_size, "steps": size.steps,
                "repeats": args.repeats, "data": dataset.source,
                "scaled_for_cpu": size.hidden != suite.accelerator.hidden
                and not args.width},
      "config": config.to_dict(), "machine": machine(), "loops": loops, "memory": memory}
  write_json_atomic(out / "bench.json", document)
  markdown = format_markdown(document)
  write_text_atomic(out / "bench.md", markdown)
  print(markdown)
  print(f"results: {out / 'bench.json'}")
  return 0
