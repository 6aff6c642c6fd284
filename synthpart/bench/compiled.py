"""Memory of every method, per device, from its loops compiled for the problem's shapes.

`memory_report` lowers and compiles each loop a method runs on abstract arguments (shapes and
dtypes only), so it runs nothing and allocates nothing on the devices; the numbers are XLA's
buffer assignment (`synthpart.memory.MemoryUse`), with the training data resident on the device
counted apart. Runs record the same numbers for the loops they really compiled
(`LoopRecord.memory`); this report also covers methods and loops a run did not train, for
the `bench --memory-report` table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from synthpart.bench.stepwise import make_stage_fns
from synthpart.config import TrainConfig
from synthpart.memory import MemoryUse, compiled_memory, tree_bytes
from synthpart.model import init_segment, whole_network
from synthpart.optim import make_optimizer
from synthpart.partition import SegmentSpec
from synthpart.train.epoch import TrainState, make_epoch, make_predict
from synthpart.train.objectives import Constants, Inputs, make_loss, segment_forward
from synthpart.train.problem import Problem, input_constants
from synthpart.train.segments import segment_constants, segment_task


def _compile(fn: Callable[..., Any] | None, *args: Any) -> jax.stages.Compiled:
  """A jitted function compiled for `args` (arrays or `jax.ShapeDtypeStruct`s)."""
  return cast(jax.stages.Wrapped, fn).lower(*args).compile()


def _abstract(tree: Any) -> Any:
  """The shapes and dtypes of a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _abstract_state(spec: SegmentSpec, param_dtype: str,
                    optimizer: optax.GradientTransformation) -> TrainState:
  """The shapes of a segment's parameters and optimizer state."""
  del param_dtype  # the blocks carry their dtypes
  init = functools.partial(init_segment, spec=spec)

  def make(key: jax.Array) -> TrainState:
    params = init(key)
    return TrainState(params, optimizer.init(params))
  return jax.eval_shape(make, jax.random.key(0))


def _cpu_constants(problem: Problem) -> Constants:
  return input_constants(problem, jax.devices("cpu")[0])


def _epoch_memory(problem: Problem, spec: SegmentSpec, inputs: str,
                  train: TrainConfig) -> MemoryUse:
  """Memory of one loop's compiled epoch over the whole training set (data resident)."""
  n = len(problem.train_y)
  optimizer = make_optimizer(train)
  state = _abstract_state(spec, problem.config.model.param_dtype, optimizer)
  data = {"y": jax.ShapeDtypeStruct((n,), jnp.int32)}
  if inputs == "pixels":
    data["x"] = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
  elif inputs == "features":
    data["x"] = jax.ShapeDtypeStruct((n, spec.widths[0]), jnp.float32)
  consts = _abstract(segment_constants(problem, spec, Inputs(inputs), jax.devices("cpu")[0]))
  epoch = make_epoch(make_loss(segment_task(problem, spec, Inputs(inputs))), optimizer,
                     train.batch_size, n)
  compiled = _compile(epoch, state, data, consts, jax.eval_shape(lambda: jax.random.key(0)),
                      jax.ShapeDtypeStruct((), jnp.uint32))
  return compiled_memory(compiled, data=tree_bytes(data))


def _features_memory(problem: Problem, spec: SegmentSpec) -> MemoryUse:
  """Memory of the sequential hand-over: segment `spec`'s outputs over the training set."""
  n = len(problem.train_y)
  params = jax.eval_shape(functools.partial(init_segment, spec=spec),
                          jax.random.key(0))
  consts = _cpu_constants(problem) if spec.is_first else Constants()
  if spec.is_first:
    x = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
  else:
    x = jax.ShapeDtypeStruct((n, spec.widths[0]), jnp.float32)

  task = segment_task(problem, spec, Inputs.PIXELS if spec.is_first else Inputs.FEATURES)
  compiled = _compile(make_predict(lambda p, xb: segment_forward(p, xb, task, consts)), params, x)
  # Its output is the next segment's training set: data too, like the pixels it reads.
  return compiled_memory(compiled, data=tree_bytes(x) + n * spec.widths[-1] * 4)


def _peaks(uses: Iterable[MemoryUse]) -> dict[str, int]:
  uses = list(uses)
  return {"peak": max(u.peak for u in uses),
          "peak_without_data": max(u.peak_without_data for u in uses)}


def _device_entry(segment: int, uses: Mapping[str, MemoryUse]) -> dict[str, Any]:
  """One device's functions and their largest peaks."""
  return {"segment": segment, "functions": {k: v.to_dict() for k, v in uses.items()},
          **_peaks(uses.values())}


def _method_entry(devices: list[dict[str, Any]]) -> dict[str, Any]:
  """A method's devices; its peak is its largest device's."""
  return {"devices": devices, "peak": max(d["peak"] for d in devices),
          "peak_without_data": max(d["peak_without_data"] for d in devices)}


def _model_parallel_memory(problem: Problem) -> list[dict[str, Any]]:
  """Per device: the largest of its step functions, plus what stays resident between them.

  Resident on every device: its parameters and optimizer state and its copy of the epoch's
  order [steps, batch]; on the first also the pixels, on the last the labels.
  """
  m, train = problem.config.model, problem.config.train
  n, b = len(problem.train_y), train.batch_size
  optimizer = make_optimizer(train)
  order = jax.ShapeDtypeStruct((n // b, b), jnp.int32)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  out = []
  x: Any = None
  for spec in problem.specs:
    forward, backward, last = make_stage_fns(spec, optimizer, problem.input_scale)
    state = _abstract_state(spec, m.param_dtype, optimizer)
    if spec.is_last:
      labels = jax.ShapeDtypeStruct((n,), jnp.int32)
      compiled = _compile(last, state, x, labels, order, step)
      uses = {"step": compiled_memory(compiled, data=tree_bytes(labels))}
    else:
      if spec.is_first:
        source: Any = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
        consts = _abstract(_cpu_constants(problem))
        data = tree_bytes(source)
      else:
        source, consts, data = x, Constants(), 0
      fwd = _compile(forward, state.params, source, consts, order, step)
      y, residuals = jax.eval_shape(cast(Callable[..., Any], forward), state.params, source,
                                    consts, order, step)
      bwd = _compile(backward, residuals, y, state)
      uses = {"forward": compiled_memory(fwd, resident=tree_bytes(state.opt_state), data=data),
              "backward": compiled_memory(bwd, resident=data + tree_bytes(order), data=data)}
      x = y
    out.append(_device_entry(spec.index, uses))
  return out


def memory_report(problem: Problem, with_model_parallel: bool = True) -> dict[str, Any]:
  """Compiled memory of every method, per segment (= per device), without running anything.

  Returns {method: {"devices": [{"segment", "functions": {name: MemoryUse dict}, "peak",
  "peak_without_data"}], "peak", "peak_without_data"}}, where a method's peak is its largest
  device's. Methods: conventional, recovery, pnn-sequential (its training loops),
  "pnn-sequential hand-over" (each non-last segment's outputs over the training set, computed
  between its training and the next segment's), pnn-parallel, model-parallel-stepwise (the
  step-by-step functions; the compiled baseline's memory is recorded by its run and bench).
  """
  specs = problem.specs
  whole = whole_network(specs)
  config = problem.config
  report: dict[str, Any] = {}
  # Both schedules train the first segment on pixels alike: each distinct loop compiles once.
  epoch_memory = functools.cache(functools.partial(_epoch_memory, problem))
  report["conventional"] = _method_entry(
      [_device_entry(0, {"epoch": epoch_memory(whole, "pixels", config.train)})])
  if config.recovery.epochs:
    report["recovery"] = _method_entry(
        [_device_entry(0, {"epoch": epoch_memory(whole, "pixels", config.recovery)})])
  if len(specs) > 1:
    sequential, handover, parallel = [], [], []
    for spec in specs:
      train = config.segment_train(spec.index)
      sequential.append(_device_entry(spec.index, {"epoch": epoch_memory(
          spec, "pixels" if spec.is_first else "features", train)}))
      if not spec.is_last:
        handover.append(_device_entry(spec.index, {"features": _features_memory(problem, spec)}))
      parallel.append(_device_entry(spec.index, {"epoch": epoch_memory(
          spec, "pixels" if spec.is_first else "sil", train)}))
    report["pnn-sequential"] = _method_entry(sequential)
    report["pnn-sequential hand-over"] = _method_entry(handover)
    report["pnn-parallel"] = _method_entry(parallel)
    if with_model_parallel:
      report["model-parallel-stepwise"] = _method_entry(_model_parallel_memory(problem))
  return report


def memory_ratios(report: Mapping[str, Any], baseline: str = "conventional",
                  target: float = 0.6) -> dict[str, dict[str, Any]]:
  """Each method's largest device peak over the baseline's, with and without resident data.

  `met` says whether the data-free ratio is at or under `target` (the larger segment's
  peak <= 60% of conventional's).
  """
  base = report[baseline]
  out = {}
  for method, entry in report.items():
    ratio = entry["peak"] / base["peak"]
    ratio_model = entry["peak_without_data"] / base["peak_without_data"]
    out[method] = {"ratio": ratio, "ratio_without_data": ratio_model,
                   "met": ratio_model <= target, "target": target}
  return out


def format_memory(memory: Mapping[str, Any]) -> list[str]:
  """Per method: each device's peak, and the largest device's against conventional's."""
  lines = [("Memory per method (XLA's buffer assignment of each compiled loop; the largest "
            "device's peak; 'model' leaves out the training data resident on the device):"), "",
           ("| method | device peaks MB (model) | peak MB | model peak MB | x conv | "
            "model x conv | model <= 60%? |"), "|---|---|---|---|---|---|---|"]
  for method, entry in memory["methods"].items():
    ratio = memory["ratios"][method]
    devices = ", ".join(f"{d['peak'] / 1e6:.1f} ({d['peak_without_data'] / 1e6:.1f})"
                        for d in entry["devices"])
    met = "-" if method == "conventional" else "yes" if ratio["met"] else "no"
    lines.append(f"| {method} | {devices} | {entry['peak'] / 1e6:.1f} | "
                 f"{entry['peak_without_data'] / 1e6:.1f} | {ratio['ratio']:.3f} | "
                 f"{ratio['ratio_without_data']:.3f} | {met} |")
  return lines
