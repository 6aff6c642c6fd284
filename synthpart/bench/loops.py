"""The suites and their loops: each compiled on its device, timed, its memory and FLOP/s counted."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import numpy as np

from synthpart import config as config_lib
from synthpart.bench import stepwise
from synthpart.curves import ledger_bytes
from synthpart.data import Dataset, load_dataset
from synthpart.errors import ConfigError
from synthpart.flops import bytes_moved, step_flops
from synthpart.memory import compiled_memory, device_memory, tree_bytes
from synthpart.model import whole_network
from synthpart.partition import SegmentSpec
from synthpart.placement import Placement, lead_device
from synthpart.results import versions
from synthpart.train import model_parallel, segments
from synthpart.train.objectives import Inputs
from synthpart.train.problem import ORDER_STREAM, Problem
from synthpart.transfers import Ledger, device_name


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

LOOP_KINDS = ("conventional", "sequential", "parallel", "model-parallel", "model-parallel-stepwise")


def synthetic_dataset(num_examples: int, image_shape: tuple[int, int, int] = (28, 28, 1),
                      num_classes: int = 10, seed: int = 0) -> Dataset:
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


def real_subset(name: str, data_dir: str | None, num_examples: int) -> Dataset:
  """The first `num_examples` training examples of a real dataset (its test set unchanged)."""
  dataset = load_dataset(name, data_dir)
  if len(dataset.train_labels) < num_examples:
    raise ConfigError(f"--dataset {name} has {len(dataset.train_labels)} training examples; "
                      f"steps x batch needs {num_examples}")
  return dataclasses.replace(dataset, train_images=dataset.train_images[:num_examples],
                             train_labels=dataset.train_labels[:num_examples])


def suite_config(suite: Suite, size: Size,
                 overrides: dict[str, Any] | None = None) -> config_lib.Config:
  """The `Config` a suite runs: its network, dtypes and batch; one epoch, no recovery."""
  values = {"model.hidden": list(size.hidden), "model.cuts": list(suite.cuts),
            "model.dtype": suite.dtype, "model.param_dtype": suite.param_dtype,
            "train.batch_size": size.batch_size, "train.epochs": 1, "recovery.epochs": 0,
            **(overrides or {})}
  return config_lib.load(None, values)


def _memory(compiled: Any, resident: int, data: int, device: Placement) -> dict[str, Any]:
  """XLA's memory of a compiled function and the device's own counters (None on CPU)."""
  use = compiled_memory(cast(jax.stages.Compiled, compiled), resident, data)
  return {"compiled": use.to_dict(), "device": device_memory(lead_device(device))}


def _time_epochs(dispatch: Callable[[int], Any], repeats: int) -> float:
  """Seconds for `repeats` epochs dispatched back to back, after one warm-up epoch."""
  jax.block_until_ready(dispatch(0))
  start = time.perf_counter()
  out = [dispatch(1 + r) for r in range(repeats)]
  jax.block_until_ready(out)
  return time.perf_counter() - start


def _entry(name: str, kind: str, layers: tuple[int, int], device: Placement, batch: int,
           steps: int, repeats: int, seconds: float, compile_seconds: float,
           flops_per_step: int, memory: dict[str, Any], **extra: Any) -> dict[str, Any]:
  samples = batch * steps * repeats
  return {"loop": name, "kind": kind, "layers": list(layers), "device": device_name(device),
          "batch_size": batch, "steps": steps, "repeats": repeats, "seconds": seconds,
          "samples_per_s": samples / seconds, "flops_per_step": flops_per_step,
          "tflops": flops_per_step * steps * repeats / seconds / 1e12,
          "compile_seconds": compile_seconds, "memory": memory, **extra}


def bench_segment_loop(problem: Problem, spec: SegmentSpec, inputs: str, kind: str,
                       repeats: int, name: str) -> dict[str, Any]:
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
  run = segments.segment_loop(problem, segments.loop_spec(problem, kind, name, spec,
                                                           Inputs(inputs), train=train), data)
  seconds = _time_epochs(run.dispatch, repeats)
  flops = step_flops(problem.widths, spec.start, spec.stop, train.batch_size, train.optimizer)
  return _entry(name, kind, (spec.start, spec.stop), device, train.batch_size,
                run.steps_per_epoch, repeats, seconds, run.compile_seconds, flops,
                _memory(run.epoch_fn, 0, tree_bytes(run.data), device))


def bench_model_parallel(problem: Problem, repeats: int) -> dict[str, Any]:
  """Compiles and times model-parallel backprop (one program per epoch over the segments'
  devices); bytes moved are what its epochs move across the cuts."""
  train = problem.config.train
  loop, _ = model_parallel.start_model_parallel(problem)
  seconds = _time_epochs(lambda e: loop.dispatch(e), repeats)
  steps = loop.info.steps_per_epoch
  flops = sum(step_flops(problem.widths, s.start, s.stop, train.batch_size, train.optimizer,
                         input_grads=not s.is_first) for s in problem.specs)
  moved = [t for e in range(repeats) for t in model_parallel.cut_transfers(problem, e, steps)]
  memory = {"epoch": _memory(loop.epoch_fn, 0, tree_bytes(loop.data), loop.device)}
  return _entry("model-parallel", "model-parallel", loop.info.layers, problem.device_of(0),
                train.batch_size, steps, repeats, seconds, loop.info.compile_seconds, flops,
                memory, bytes_moved=ledger_bytes(moved),
                bytes_moved_expected=bytes_moved(
                    problem.specs, "model-parallel", len(problem.train_y), train.batch_size,
                    repeats),
                devices=loop.info.device.split(","))


def bench_model_parallel_stepwise(problem: Problem, repeats: int) -> dict[str, Any]:
  """Compiles and times model-parallel backprop dispatched step by step (the reference for what
  dispatching costs); bytes moved come from the ledger."""
  train = problem.config.train
  run = stepwise.start_model_parallel(problem, train, problem.key(ORDER_STREAM, 0))
  ledger, warm = Ledger(), Ledger()
  seconds = _time_epochs(lambda e: stepwise.run_epoch(run, e, warm if e == 0 else ledger),
                         repeats)
  flops = sum(step_flops(problem.widths, s.start, s.stop, train.batch_size, train.optimizer,
                         input_grads=not s.is_first) for s in problem.specs)
  memory = {}
  for stage, st in zip(run.stages, run.states, strict=True):
    # What a device holds between its calls (optimizer state while it runs forward, its data
    # while it runs backward) is counted with each call, as in `compiled.memory_report`.
    data = tree_bytes(st.inputs)
    uses = {"forward": (tree_bytes(st.state.opt_state), data), "backward": (data, data),
            "last": (0, data)}
    for fn_name, (resident, data_bytes) in uses.items():
      fn = getattr(stage, fn_name)
      if fn is not None:
        memory[f"segment {stage.spec.index} {fn_name}"] = _memory(fn, resident, data_bytes,
                                                                  stage.device)
  return _entry("model-parallel-stepwise", "model-parallel-stepwise",
                (0, problem.specs[-1].stop), problem.device_of(0), train.batch_size, run.steps,
                repeats, seconds, sum(r.compile_seconds for r in run.results), flops, memory,
                bytes_moved=ledger_bytes(ledger.transfers),
                bytes_moved_expected=bytes_moved(
                    problem.specs, "model-parallel", run.num_examples, train.batch_size, repeats),
                devices=[r.device for r in run.results])


def run_suite(suite: Suite, size: Size, problem: Problem, repeats: int,
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
  if "model-parallel-stepwise" in kinds and len(problem.specs) > 1:
    loops.append(bench_model_parallel_stepwise(problem, repeats))
  base = next((loop for loop in loops if loop["kind"] == "conventional"), None)
  for loop in loops:
    loop["speedup_vs_conventional"] = (loop["samples_per_s"] / base["samples_per_s"]
                                       if base else None)
  return loops


def machine() -> dict[str, Any]:
  """The backend, devices, CPUs, platform, date and package versions of this run."""
  return {"backend": jax.default_backend(),
          "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions()}
