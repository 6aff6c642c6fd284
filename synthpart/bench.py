"""`synthpart bench SUITE`: throughput, FLOP/s, compile time and memory of every training loop.

For one suite (a network, dtype, batch and cut), it compiles and times each loop a method runs:

  conventional              the whole network, end to end (recovery epochs run the same loop)
  sequential segment i      segment i on the previous segment's features (pixels for the first)
  parallel segment i        segment i on SIL vectors plus noise (pixels for the first)
  model-parallel            end-to-end backprop across the segments' devices, step by step

and reports samples/s, analytic TFLOP/s (`synthpart.accounting`), compile seconds, XLA's memory
analysis of the compiled loop and, on GPUs, the device's own memory counters. The data is random,
of the right shapes (offline), unless `--dataset` names a real one. Timing starts after a warm-up
epoch and covers `--repeats` epochs of `--steps` steps each, dispatched back to back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from synthpart import accounting
from synthpart import config as config_lib
from synthpart.data import Dataset, load_dataset
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.model import whole_network
from synthpart.placement import device_name
from synthpart.results import versions
from synthpart.setup import select_devices
from synthpart.train import model_parallel, schedules
from synthpart.train.driver import start_loop
from synthpart.train.problem import ORDER_STREAM, make_problem


class Size(NamedTuple):
  hidden: tuple[int, ...]
  batch_size: int
  steps: int


@dataclasses.dataclass(frozen=True)
class Suite:
  """A benchmark: one network and cut, its sizes on accelerators and (smaller) on CPU."""
  name: str
  description: str
  cuts: tuple[int, ...]
  dtype: str
  param_dtype: str
  accelerator: Size
  cpu: Size

  def size(self, backend: str, full: bool) -> Size:
    return self.accelerator if full or backend != "cpu" else self.cpu


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("paper", "the paper's shape: 6 dense layers of width 512, f32, batch 256, cut 3+3",
          cuts=(3,), dtype="float32", param_dtype="float32",
          accelerator=Size((512,) * 5, 256, 200), cpu=Size((512,) * 5, 256, 40)),
    Suite("wide", "width 4096, bf16 compute with f32 master weights, batch 1024, cut 3+3",
          cuts=(3,), dtype="bfloat16", param_dtype="float32",
          accelerator=Size((4096,) * 5, 1024, 50), cpu=Size((1024,) * 5, 1024, 3)),
    Suite("wide-8192", "width 8192, bf16 compute with f32 master weights, batch 4096, cut 3+3",
          cuts=(3,), dtype="bfloat16", param_dtype="float32",
          accelerator=Size((8192,) * 5, 4096, 20), cpu=Size((1024,) * 5, 1024, 2)),
)}

LOOP_KINDS = ("conventional", "sequential", "parallel", "model-parallel")


def synthetic_dataset(num_examples: int, image_shape: tuple[int, int, int] = (28, 28, 1),
                      num_classes: int = 10, seed: int = 0) -> Any:
  """Random uint8 images [n, H, W, C] and labels: Fashion-MNIST's shapes, nothing to learn."""
  rng = np.random.default_rng(seed)
  num_test = min(num_examples, 1024)
  return Dataset(
      name="synthetic", num_classes=num_classes,
      train_images=rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8),
      train_labels=rng.integers(0, num_classes, num_examples).astype(np.int32),
      test_images=rng.integers(0, 256, (num_test, *image_shape), dtype=np.uint8),
      test_labels=rng.integers(0, num_classes, num_test).astype(np.int32),
      source="random (synthpart.bench)")


def suite_config(suite: Suite, size: Size, overrides: dict[str, Any] | None = None) -> Any:
  """The `Config` a suite runs: its network, dtypes and batch; one epoch, no recovery."""
  values = {"model.hidden": list(size.hidden), "model.cuts": list(suite.cuts),
            "model.dtype": suite.dtype, "model.param_dtype": suite.param_dtype,
            "train.batch_size": size.batch_size, "train.epochs": 1, "recovery.epochs": 0,
            **(overrides or {})}
  return config_lib.load(None, values)


def _memory(compiled: Any, data: Any, device: Any) -> dict[str, Any]:
  return {"compiled": accounting.compiled_memory(compiled, data=accounting.tree_bytes(data))
          .to_dict(), "device": accounting.device_memory(device)}


def _time_epochs(dispatch: Callable[[int], Any], repeats: int) -> float:
  """Seconds for `repeats` epochs dispatched back to back, after one warm-up epoch."""
  jax.block_until_ready(dispatch(0))
  start = time.perf_counter()
  out = [dispatch(1 + r) for r in range(repeats)]
  jax.block_until_ready(out)
  return time.perf_counter() - start


def _entry(name: str, kind: str, layers: tuple[int, int], device: Any, batch: int, steps: int,
           repeats: int, seconds: float, compile_seconds: float, flops_per_step: int,
           memory: dict[str, Any], **extra: Any) -> dict[str, Any]:
  samples = batch * steps * repeats
  return {"loop": name, "kind": kind, "layers": list(layers), "device": device_name(device),
          "batch_size": batch, "steps": steps, "repeats": repeats, "seconds": seconds,
          "samples_per_s": samples / seconds, "flops_per_step": flops_per_step,
          "tflops": flops_per_step * steps * repeats / seconds / 1e12,
          "compile_seconds": compile_seconds, "memory": memory, **extra}


def bench_segment_loop(problem: Any, spec: Any, inputs: str, kind: str, repeats: int,
                       name: str) -> dict[str, Any]:
  """Compiles and times one loop of the shared epoch function on its device."""
  device = problem.device_of(spec.index)
  train = problem.config.segment_train(spec.index)
  n = len(problem.train_y)
  data: dict[str, Any] = {"y": problem.train_y}
  if inputs == "pixels":
    data["x"] = problem.train_x
  elif inputs == "features":
    rng = np.random.default_rng(spec.index)
    data["x"] = rng.random((n, spec.widths[0]), dtype=np.float32)
  run = start_loop(
      schedules.segment_task(problem, spec, inputs), train,
      schedules.init_params(problem, spec, device), data,
      schedules.segment_constants(problem, spec, inputs, device),
      problem.key(ORDER_STREAM, spec.start), device, name)
  seconds = _time_epochs(run.dispatch, repeats)
  widths = problem.widths
  flops = accounting.step_flops(widths, spec.start, spec.stop, train.batch_size, train.optimizer)
  return _entry(name, kind, (spec.start, spec.stop), device, train.batch_size,
                run.result.steps_per_epoch, repeats, seconds, run.result.compile_seconds, flops,
                _memory(run.epoch_fn, run.data, device))


def bench_model_parallel(problem: Any, repeats: int) -> dict[str, Any]:
  """Compiles and times model-parallel backprop; bytes moved come from the ledger."""
  train = problem.config.train
  run = model_parallel.start_model_parallel(problem, train,
                                            problem.key(ORDER_STREAM, 0))
  ledger: list[Any] = []
  warm: list[Any] = []
  seconds = _time_epochs(lambda e: model_parallel.run_epoch(run, e, warm if e == 0 else ledger),
                         repeats)
  widths = problem.widths
  flops = sum(accounting.step_flops(widths, s.start, s.stop, train.batch_size, train.optimizer,
                                    input_grads=not s.is_first) for s in problem.specs)
  memory = {}
  for stage, st in zip(run.stages, run.states):
    # What a device holds between its calls (optimizer state while it runs forward, its data
    # while it runs backward) is counted with each call, as in `accounting.memory_report`.
    data = accounting.tree_bytes(st.inputs)
    uses = {"forward": (accounting.tree_bytes(st.state.opt_state), data),
            "backward": (data, data), "last": (0, data)}
    for fn_name, (resident, data_bytes) in uses.items():
      fn = getattr(stage, fn_name)
      if fn is not None:
        memory[f"segment {stage.spec.index} {fn_name}"] = {
            "compiled": accounting.compiled_memory(fn, resident, data_bytes).to_dict(),
            "device": accounting.device_memory(stage.device)}
  return _entry("model-parallel", "model-parallel", (0, problem.specs[-1].stop),
                problem.device_of(0), train.batch_size, run.steps, repeats, seconds,
                sum(r.compile_seconds for r in run.results), flops, memory,
                bytes_moved=accounting.ledger_bytes(ledger),
                bytes_moved_expected=accounting.bytes_moved(
                    problem.specs, "model-parallel", run.num_examples, train.batch_size, repeats),
                devices=[r.device for r in run.results])


def run_suite(suite: Suite, size: Size, problem: Any, repeats: int,
              kinds: Sequence[str] = LOOP_KINDS) -> list[dict[str, Any]]:
  """Every loop of every kind in `kinds`, in order; conventional first (the baseline)."""
  loops = []
  if "conventional" in kinds:
    loops.append(bench_segment_loop(problem, whole_network(problem.specs), "pixels",
                                    "conventional", repeats, "conventional"))
  for kind, later in (("sequential", "features"), ("parallel", "sil")):
    if kind in kinds:
      for spec in problem.specs:
        loops.append(bench_segment_loop(problem, spec, "pixels" if spec.is_first else later,
                                        kind, repeats, f"{kind} segment {spec.index}"))
  if "model-parallel" in kinds and len(problem.specs) > 1:
    loops.append(bench_model_parallel(problem, repeats))
  base = next((l for l in loops if l["kind"] == "conventional"), None)
  for loop in loops:
    loop["speedup_vs_conventional"] = (loop["samples_per_s"] / base["samples_per_s"]
                                       if base else None)
  return loops


def machine() -> dict[str, Any]:
  return {"backend": jax.default_backend(),
          "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions()}


def _mb(value: float | None) -> str:
  return "-" if value is None else f"{value / 1e6:.1f}"


def format_markdown(document: dict[str, Any]) -> str:
  """The loops as a markdown table, with the suite, sizes and machine above it."""
  s, m = document["suite"], document["machine"]
  lines = [f"# synthpart bench {s['name']}", "",
           f"{s['description']}. Hidden {s['hidden'][0]} x {len(s['hidden'])}, cuts "
           f"{s['cuts']}, batch {s['batch_size']}, {s['steps']} steps x {s['repeats']} timed "
           f"epochs, compute {s['dtype']}, params {s['param_dtype']}, data {s['data']}.",
           f"Machine: {m['backend']} ({', '.join(sorted(set(m['devices'])))}), "
           f"{m['cpu_count']} CPUs, jax {m['versions'].get('jax')}, {m['date']}.", "",
           "| loop | layers | samples/s | x conv | TFLOP/s | compile s | peak MB | "
           "peak MB w/o data | device peak MB |",
           "|---|---|---|---|---|---|---|---|---|"]
  for l in document["loops"]:
    mem = l["memory"]
    entries = [mem] if "compiled" in mem else list(mem.values())
    peak = max(e["compiled"]["peak"] for e in entries)
    peak_model = max(e["compiled"]["peak_without_data"] for e in entries)
    device = [e["device"].get("peak_bytes_in_use") for e in entries if e["device"]]
    speed = l.get("speedup_vs_conventional")
    lines.append(
        f"| {l['loop']} | {l['layers'][0]}-{l['layers'][1]} | {l['samples_per_s']:,.0f} | "
        f"{'-' if speed is None else f'{speed:.2f}'} | {l['tflops']:.3f} | "
        f"{l['compile_seconds']:.1f} | {_mb(peak)} | {_mb(peak_model)} | "
        f"{_mb(max(device)) if device else '-'} |")
  mp = next((l for l in document["loops"] if l["kind"] == "model-parallel"), None)
  if mp:
    lines += ["", f"model-parallel moved {mp['bytes_moved'] / 1e6:.1f} MB between devices in "
              f"{mp['repeats']} timed epochs (expected {mp['bytes_moved_expected'] / 1e6:.1f} MB)"
              f" over {', '.join(mp['devices'])}; the partitioned loops move none while training."]
  if document.get("memory"):
    lines += ["", *format_memory(document["memory"])]
  return "\n".join(lines) + "\n"


def format_memory(memory: dict[str, Any]) -> list[str]:
  """Per method: each device's peak, and the largest device's against conventional's."""
  lines = ["Memory per method (XLA's buffer assignment of each compiled loop; the largest "
           "device's peak; 'model' leaves out the training data resident on the device):", "",
           "| method | device peaks MB (model) | peak MB | model peak MB | x conv | "
           "model x conv | model <= 60%? |", "|---|---|---|---|---|---|---|"]
  for method, entry in memory["methods"].items():
    ratio = memory["ratios"][method]
    devices = ", ".join(f"{d['peak'] / 1e6:.1f} ({d['peak_without_data'] / 1e6:.1f})"
                        for d in entry["devices"])
    lines.append(f"| {method} | {devices} | {entry['peak'] / 1e6:.1f} | "
                 f"{entry['peak_without_data'] / 1e6:.1f} | {ratio['ratio']:.3f} | "
                 f"{ratio['ratio_without_data']:.3f} | "
                 f"{'-' if method == 'conventional' else 'yes' if ratio['met'] else 'no'} |")
  return lines


def add_bench_command(sub: Any) -> argparse.ArgumentParser:
  """Adds `synthpart bench SUITE` to the command's subparsers."""
  p = sub.add_parser("bench", help="samples/s, TFLOP/s, compile time and memory of every loop",
                     description=__doc__.split("\n\n")[0])
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
                 help="where bench.json and bench.md go (default runs/bench-SUITE-TIME)")
  p.set_defaults(func=run_bench_command)
  return p


def _check_positive(name: str, value: int | None) -> None:
  if value is not None and value < 1:
    raise ConfigError(f"--{name} must be at least 1, got {value}")


def run_bench_command(args: argparse.Namespace) -> int:
  for name in ("steps", "repeats", "batch_size", "width"):
    _check_positive(name.replace("_", "-"), getattr(args, name))
  kinds = [k.strip() for k in args.loops.split(",") if k.strip()]
  unknown = [k for k in kinds if k not in LOOP_KINDS]
  if unknown or not kinds:
    raise ConfigError(f"--loops {args.loops!r}: choose from {', '.join(LOOP_KINDS)}")
  suite = SUITES[args.suite]
  overrides: dict[str, Any] = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. train.optimizer=sgd")
    overrides[key.strip()] = value.strip()
  devices = select_devices(args.devices, len(suite.cuts) + 1)
  size = suite.size(jax.default_backend(), args.full)
  size = Size(tuple(args.width or w for w in size.hidden), args.batch_size or size.batch_size,
              args.steps or size.steps)
  config = suite_config(suite, size, overrides)
  num_examples = size.steps * config.train.batch_size
  if args.dataset:
    dataset = _real_subset(args.dataset, args.data_dir, num_examples)
  else:
    dataset = synthetic_dataset(num_examples)
  problem = make_problem(config, dataset, devices)
  loops = run_suite(suite, size, problem, args.repeats, kinds)
  memory = None
  if args.memory_report:
    report = accounting.memory_report(problem)
    memory = {"methods": report, "ratios": accounting.memory_ratios(report)}
  document = {
      "suite": {"name": suite.name, "description": suite.description,
                "hidden": list(config.model.hidden), "cuts": list(config.model.cuts),
                "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
                "batch_size": config.train.batch_size, "steps": size.steps,
                "repeats": args.repeats, "data": dataset.source,
                "scaled_for_cpu": size.hidden != suite.accelerator.hidden
                and not args.width},
      "config": config.to_dict(), "machine": machine(), "loops": loops, "memory": memory}
  out = Path(args.out or f"runs/bench-{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}")
  write_json_atomic(out / "bench.json", document)
  markdown = format_markdown(document)
  (out / "bench.md").write_text(markdown)
  print(markdown)
  print(f"results: {out / 'bench.json'}")
  return 0


def _real_subset(name: str, data_dir: str | None, num_examples: int) -> Any:
  """The first `num_examples` training examples of a real dataset (its test set unchanged)."""
  dataset = load_dataset(name, data_dir)
  if len(dataset.train_labels) < num_examples:
    raise ConfigError(f"--dataset {name} has {len(dataset.train_labels)} training examples; "
                      f"steps x batch needs {num_examples}")
  return dataclasses.replace(dataset, train_images=dataset.train_images[:num_examples],
                             train_labels=dataset.train_labels[:num_examples])
