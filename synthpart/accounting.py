"""What each method costs: FLOPs, device memory, bytes moved between devices, time to accuracy.

FLOPs are counted analytically, per example, for dense layers (XLA's GPU cost analysis misses
cuBLAS calls; the CPU count, which is exact, cross-checks these formulas in the tests). For a
layer of `i` inputs and `o` outputs:

  forward            2*i*o (matmul) + o (bias add) + o (activation; hidden layers only)
  activation grads   o (the activation's derivative; hidden layers only)
  weight grads       2*i*o (kernel) + o (bias: a sum over the batch)
  input grads        2*i*o, except for the first layer of a loop whose input is data, SIL
                     vectors or handed-over features: nothing upstream needs that gradient

An activation is counted as one FLOP per element (exact for ReLU; XLA counts GELU/tanh/sigmoid
as more elementwise work plus transcendentals). The optimizer update costs `OPTIMIZER_FLOPS` per
parameter per *step* (as XLA counts optax's updates on CPU), about 1-2% of a step at width 512 and
batch 128. Not counted: the loss and input scaling (O(width) per example, under 1%).

Memory comes from XLA's buffer assignment of each compiled function (`memory_analysis()`), so
it is what the program would allocate on any device; the training data resident on the device
is reported apart, because it is the same for every method that holds the same data. Device
`memory_stats()` (GPU only; None on CPU) adds the measured peak where it exists.

The functions over results documents (`accuracy_curves`, `time_to_accuracy`) are pure: they
take the dicts `synthpart.experiment.results_document` writes, so reports can use them.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from synthpart.flops import Flops
from synthpart.partition import SegmentSpec

# ---------------------------------------------------------------------------------------------
# FLOPs


def layer_flops(width_in: int, width_out: int, activation: bool, input_grads: bool) -> Flops:
  """One dense layer, per example."""
  matmul = 2 * width_in * width_out
  act = width_out if activation else 0
  return Flops(forward=matmul + width_out + act, activation_grads=act,
               weight_grads=matmul + width_out, input_grads=matmul if input_grads else 0)


def loop_flops(widths: Sequence[int], start: int, stop: int, input_grads: bool = False) -> Flops:
  """Dense layers start..stop-1 of the network with layer `widths`, trained as one loop.

  `input_grads`: whether the loop needs the gradient w.r.t. its own input (model-parallel
  segments after the first do: it is sent back across the cut).
  """
  last_layer = len(widths) - 2
  total = Flops()
  for layer in range(start, stop):
    total += layer_flops(widths[layer], widths[layer + 1], activation=layer < last_layer,
                         input_grads=input_grads or layer > start)
  return total


def segment_flops(spec: SegmentSpec, input_grads: bool = False) -> Flops:
  """A segment trained on its own (`input_grads` False) or inside backprop (True), per example.

  Every layer ends in the activation except the network's last (`apply_segment`).
  """
  total = Flops()
  for offset, (width_in, width_out) in enumerate(zip(spec.widths[:-1], spec.widths[1:])):
    final = spec.is_last and offset == spec.num_layers - 1
    total += layer_flops(width_in, width_out, activation=not final,
                         input_grads=input_grads or offset > 0)
  return total


def forward_flops(widths: Sequence[int], start: int, stop: int) -> int:
  """Inference through layers start..stop-1, per example (the sequential schedule's hand-over)."""
  return loop_flops(widths, start, stop).forward


def method_flops(specs: Sequence[SegmentSpec]) -> dict[str, Flops]:
  """Per-example training FLOPs of every loop of every method, for one segment plan.

  Keys: "conventional" (= "recovery"), "segment i" (a partitioned method's loop),
  "model-parallel segment i" (the same layers inside end-to-end backprop).
  """
  widths = _plan_widths(specs)
  last = specs[-1].stop
  out = {"conventional": loop_flops(widths, 0, last), "recovery": loop_flops(widths, 0, last)}
  for spec in specs:
    out[f"segment {spec.index}"] = loop_flops(widths, spec.start, spec.stop)
    out[f"model-parallel segment {spec.index}"] = loop_flops(
        widths, spec.start, spec.stop, input_grads=not spec.is_first)
  return out


# FLOPs per parameter of one update, as XLA counts optax's transformations (adamw and lamb with
# weight decay; 2 fewer for adamw without).
OPTIMIZER_FLOPS = {"adam": 13, "adamw": 15, "sgd": 2, "momentum": 6, "rmsprop": 8, "lamb": 24}


def num_params(widths: Sequence[int], start: int, stop: int) -> int:
  """Kernels and biases of dense layers start..stop-1."""
  return sum(widths[l] * widths[l + 1] + widths[l + 1] for l in range(start, stop))


def optimizer_flops(optimizer: str, params: int) -> int:
  """FLOPs of one optimizer update of `params` parameters."""
  return OPTIMIZER_FLOPS[optimizer] * params


def step_flops(widths: Sequence[int], start: int, stop: int, batch_size: int, optimizer: str,
               input_grads: bool = False) -> int:
  """One training step of layers start..stop-1: the batch forward and backward, plus the update."""
  per_example = loop_flops(widths, start, stop, input_grads).training
  return batch_size * per_example + optimizer_flops(optimizer, num_params(widths, start, stop))


def _plan_widths(specs: Sequence[SegmentSpec]) -> tuple[int, ...]:
  return specs[0].widths + tuple(w for s in specs[1:] for w in s.widths[1:])


def xla_flops(compiled: Any) -> float:
  """XLA's own FLOP count of a compiled function (exact on CPU, undercounted on GPU)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])


# ---------------------------------------------------------------------------------------------
# FLOPs and time along a results document


def document_widths(document: Mapping[str, Any]) -> tuple[int, ...]:
  """The network's layer widths (features, *hidden, classes) from a results document."""
  d = document["dataset"]
  return (d["num_features"], *document["config"]["model"]["hidden"], d["num_classes"])


def loop_flops_per_example(run: Mapping[str, Any], loop: Mapping[str, Any],
                           widths: Sequence[int]) -> float:
  """Training FLOPs per example of one loop (a `segments` entry) of a run (a `runs` entry),
  the optimizer's share of each step spread over the step's batch."""
  start, stop = loop["layers"]
  input_grads = run["method"] == "model-parallel" and start > 0
  step = step_flops(widths, start, stop, loop["batch_size"], loop["optimizer"], input_grads)
  return step / loop["batch_size"]


def _handover_flops(run: Mapping[str, Any], index: int, widths: Sequence[int],
                    num_train: int) -> int:
  """FLOPs done once before loop `index` starts: the sequential schedule's forward pass of the
  previous segment over the training set, whose outputs become this loop's inputs."""
  loop = run["segments"][index]
  if not loop["objective"].startswith("activations") or run["method"] == "model-parallel":
    return 0
  start, _ = run["segments"][index - 1]["layers"]
  return forward_flops(widths, start, loop["layers"][0]) * num_train


def accuracy_curve(run: Mapping[str, Any], widths: Sequence[int],
                   num_train: int) -> list[dict[str, Any]]:
  """One run's curve with cumulative training FLOPs: [{"epoch", "seconds", "flops", "accuracy"?}].

  FLOPs at a point = sum over its loops of examples seen x training FLOPs per example, plus the
  one-off forward passes of the sequential hand-over. Seconds are the run's own (training only).
  """
  per_example = [loop_flops_per_example(run, loop, widths) for loop in run["segments"]]
  out = []
  for point in run["curve"]:
    examples = point["examples"]
    flops = sum(e * f for e, f in zip(examples, per_example))
    flops += sum(_handover_flops(run, i, widths, num_train)
                 for i, e in enumerate(examples) if e > 0 and i > 0)
    entry = {"epoch": point["epoch"], "seconds": point["seconds"], "flops": float(flops)}
    if "accuracy" in point:
      entry["accuracy"] = point["accuracy"]
    out.append(entry)
  return out


def accuracy_curves(document: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """`accuracy_curve` of every run in a results document, by method."""
  widths = document_widths(document)
  num_train = document["dataset"]["num_train"]
  return {run["method"]: accuracy_curve(run, widths, num_train) for run in document["runs"]}


def first_reaching(curve: Iterable[Mapping[str, Any]], target: float) -> Mapping[str, Any] | None:
  """The first point of a curve whose accuracy is at least `target` (epoch granularity)."""
  for point in curve:
    if point.get("accuracy", -1.0) >= target:
      return point
  return None


def _reduction(value: float, baseline: float) -> float | None:
  return None if not baseline else 100.0 * (1.0 - value / baseline)


def time_to_accuracy(document: Mapping[str, Any], fraction: float = 0.9,
                     baseline: str = "conventional") -> dict[str, Any]:
  """The paper's headline: compute and wall time to reach `fraction` of the baseline's accuracy.

  Returns {"target_accuracy", "baseline", "methods": {method: {"reached", "epoch", "flops",
  "seconds", "flops_reduction_pct", "seconds_reduction_pct", "final_accuracy", "total_flops",
  "total_seconds"}}}. Reductions are against the baseline's own first point at the target;
  positive means the method needed less. A method that never reaches it has `reached` False and
  None for the rest of the point's fields.
  """
  curves = accuracy_curves(document)
  runs = {run["method"]: run for run in document["runs"]}
  if baseline not in runs:
    raise KeyError(f"no {baseline!r} run in the document; methods: {', '.join(runs)}")
  target = fraction * runs[baseline]["test_accuracy"]
  base = first_reaching(curves[baseline], target)
  methods = {}
  for method, curve in curves.items():
    point = first_reaching(curve, target)
    entry: dict[str, Any] = {
        "reached": point is not None, "final_accuracy": runs[method]["test_accuracy"],
        "total_flops": curve[-1]["flops"] if curve else 0.0,
        "total_seconds": runs[method]["wall_seconds"], "epoch": None, "flops": None,
        "seconds": None, "flops_reduction_pct": None, "seconds_reduction_pct": None}
    if point is not None:
      entry.update(epoch=point["epoch"], flops=point["flops"], seconds=point["seconds"])
      if base is not None:
        entry["flops_reduction_pct"] = _reduction(point["flops"], base["flops"])
        entry["seconds_reduction_pct"] = _reduction(point["seconds"], base["seconds"])
    methods[method] = entry
  return {"target_accuracy": target, "fraction": fraction, "baseline": baseline,
          "methods": methods}


def format_time_to_accuracy(summary: Mapping[str, Any]) -> str:
  """A markdown table of `time_to_accuracy`."""
  lines = [f"Target: {summary['fraction']:.0%} of {summary['baseline']}'s final accuracy = "
           f"{100 * summary['target_accuracy']:.2f}%", "",
           "| method | final acc | reached at epoch | GFLOP to target | FLOP reduction | "
           "s to target | time reduction | total GFLOP | total s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for method, e in summary["methods"].items():
    def pct(v: float | None) -> str:
      return "-" if v is None else f"{v:.1f}%"
    def num(v: float | None, scale: float = 1.0, fmt: str = ".1f") -> str:
      return "-" if v is None else format(v / scale, fmt)
    lines.append(f"| {method} | {100 * e['final_accuracy']:.2f}% | {num(e['epoch'], fmt='.0f')} | "
                 f"{num(e['flops'], 1e9)} | {pct(e['flops_reduction_pct'])} | "
                 f"{num(e['seconds'])} | {pct(e['seconds_reduction_pct'])} | "
                 f"{num(e['total_flops'], 1e9)} | {num(e['total_seconds'])} |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Bytes moved between devices


def cut_widths(specs: Sequence[SegmentSpec]) -> list[int]:
  """Width of the activations at every cut: each non-last segment's output."""
  return [s.widths[-1] for s in specs[:-1]]


def bytes_moved(specs: Sequence[SegmentSpec], method: str, num_train: int, batch_size: int,
                epochs: int, itemsize: int = 4) -> int:
  """Bytes that cross between segments' devices while `method` trains (activations are f32).

  conventional, pnn-parallel: 0. pnn-sequential: the training set's cut activations, once per
  cut. model-parallel: every step, batch x cut-width activations forward and as many gradients
  back, per cut. Recovery adds the join (`join_bytes`), which goes through the host here.
  """
  method = method.removesuffix("+recovery")
  width = sum(cut_widths(specs))
  if method in ("conventional", "pnn-parallel"):
    return 0
  if method == "pnn-sequential":
    return num_train * width * itemsize
  if method == "model-parallel":
    steps = num_train // batch_size
    return epochs * steps * 2 * batch_size * width * itemsize
  raise ValueError(f"unknown method {method!r}")


def join_bytes(specs: Sequence[SegmentSpec], itemsize: int = 4) -> int:
  """Parameters of the segments after the first, gathered onto one device to join the network."""
  return sum(w_in * w_out + w_out for s in specs[1:]
             for w_in, w_out in zip(s.widths[:-1], s.widths[1:])) * itemsize


def ledger_bytes(transfers: Iterable[Any]) -> int:
  """Total bytes of a transfer ledger (`Transfer`s or their dicts)."""
  return sum(t["bytes"] if isinstance(t, Mapping) else t.bytes for t in transfers)


# ---------------------------------------------------------------------------------------------
# Memory


class MemoryUse(NamedTuple):
  """XLA's buffer assignment of one compiled function, in bytes.

  `resident` is what the device holds throughout training but this function does not take
  (e.g. optimizer state in a forward-only step); `data` is the training data among the
  arguments or `resident` (the dataset on the device).
  """
  argument: int
  output: int
  alias: int
  temp: int
  resident: int = 0
  data: int = 0

  @property
  def peak(self) -> int:
    """Live bytes at the function's peak, donated outputs counted once, plus `resident`."""
    return self.argument + self.output - self.alias + self.temp + self.resident

  @property
  def peak_without_data(self) -> int:
    """The model's share: parameters, optimizer state, activations and workspace."""
    return self.peak - self.data

  def to_dict(self) -> dict[str, int]:
    return {**self._asdict(), "peak": self.peak, "peak_without_data": self.peak_without_data}


def compiled_memory(compiled: Any, resident: int = 0, data: int = 0) -> MemoryUse:
  """`MemoryUse` of a compiled function (`jax.jit(f).lower(...).compile()`)."""
  m = compiled.memory_analysis()
  return MemoryUse(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                   int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), resident, data)


def tree_bytes(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def device_memory(device: jax.Device) -> dict[str, int] | None:
  """The device's own counters (bytes_in_use, peak_bytes_in_use, ...); None where unsupported."""
  stats = device.memory_stats()
  return None if stats is None else {k: int(v) for k, v in stats.items()}


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _abstract_state(spec: SegmentSpec, param_dtype: str, optimizer: Any) -> Any:
  from synthpart.model import init_segment
  from synthpart.train.loop import TrainState
  init = functools.partial(init_segment, spec=spec, param_dtype=param_dtype)

  def make(key: jax.Array) -> Any:
    params = init(key)
    return TrainState(params, optimizer.init(params))
  return jax.eval_shape(make, jax.random.key(0))


def _epoch_memory(problem: Any, spec: SegmentSpec, inputs: str, train: Any) -> MemoryUse:
  """Memory of one loop's compiled epoch over the whole training set (data resident)."""
  from synthpart.train.loop import make_epoch
  from synthpart.train.objectives import make_loss
  from synthpart.train.optim import make_optimizer
  from synthpart.train.schedules import segment_constants, segment_task
  n = len(problem.train_y)
  optimizer = make_optimizer(train)
  state = _abstract_state(spec, problem.config.model.param_dtype, optimizer)
  data = {"y": jax.ShapeDtypeStruct((n,), jnp.int32)}
  if inputs == "pixels":
    data["x"] = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
  elif inputs == "features":
    data["x"] = jax.ShapeDtypeStruct((n, spec.widths[0]), jnp.float32)
  consts = _abstract(segment_constants(problem, spec, inputs, jax.devices("cpu")[0]))
  epoch = make_epoch(make_loss(segment_task(problem, spec, inputs)), optimizer,
                     train.batch_size, n)
  compiled = epoch.lower(state, data, consts, jax.eval_shape(lambda: jax.random.key(0)),
                         jax.ShapeDtypeStruct((), jnp.uint32)).compile()
  return compiled_memory(compiled, data=tree_bytes(data))


def _features_memory(problem: Any, spec: SegmentSpec) -> MemoryUse:
  """Memory of the sequential hand-over: segment `spec`'s outputs over the training set."""
  from synthpart.train.loop import make_predict
  from synthpart.train.objectives import preprocess_pixels
  from synthpart.model import apply_segment, init_segment
  m = problem.config.model
  n = len(problem.train_y)
  params = jax.eval_shape(functools.partial(init_segment, spec=spec, param_dtype=m.param_dtype),
                          jax.random.key(0))
  if spec.is_first:
    x = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
    prep = functools.partial(preprocess_pixels, consts=_consts_for_features(problem))
  else:
    x = jax.ShapeDtypeStruct((n, spec.widths[0]), jnp.float32)
    prep = lambda v: v  # noqa: E731
  predict = make_predict(lambda p, xb: apply_segment(p, prep(xb), spec, m.activation, m.dtype))
  compiled = predict.lower(params, x).compile()
  # Its output is the next segment's training set: data too, like the pixels it reads.
  return compiled_memory(compiled, data=tree_bytes(x) + n * spec.widths[-1] * 4)


def _consts_for_features(problem: Any) -> Any:
  from synthpart.train.schedules import input_constants
  return input_constants(problem, jax.devices("cpu")[0])


def _model_parallel_memory(problem: Any) -> list[dict[str, Any]]:
  """Per device: the largest of its step functions, plus what stays resident between them.

  Resident on every device: its parameters and optimizer state and its copy of the epoch's
  order [steps, batch]; on the first also the pixels, on the last the labels.
  """
  from synthpart.train.model_parallel import make_stage_fns
  from synthpart.train.objectives import Constants
  from synthpart.train.optim import make_optimizer
  m, train = problem.config.model, problem.config.train
  n, b = len(problem.train_y), train.batch_size
  optimizer = make_optimizer(train)
  order = jax.ShapeDtypeStruct((n // b, b), jnp.int32)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  out = []
  x = None
  for spec in problem.specs:
    forward, backward, last = make_stage_fns(spec, optimizer, m.activation, m.dtype)
    state = _abstract_state(spec, m.param_dtype, optimizer)
    if spec.is_last:
      labels = jax.ShapeDtypeStruct((n,), jnp.int32)
      compiled = last.lower(state, x, labels, order, step).compile()
      uses = {"step": compiled_memory(compiled, data=tree_bytes(labels))}
    else:
      if spec.is_first:
        source = jax.ShapeDtypeStruct(problem.train_x.shape, jnp.uint8)
        consts = _abstract(_consts_for_features(problem))
        data = tree_bytes(source)
      else:
        source, consts, data = x, Constants(), 0
      fwd = forward.lower(state.params, source, consts, order, step).compile()
      y, residuals = jax.eval_shape(forward, state.params, source, consts, order, step)
      bwd = backward.lower(residuals, y, state).compile()
      uses = {"forward": compiled_memory(fwd, resident=tree_bytes(state.opt_state), data=data),
              "backward": compiled_memory(bwd, resident=data + tree_bytes(order), data=data)}
      x = y
    out.append({"segment": spec.index, "functions": {k: v.to_dict() for k, v in uses.items()},
                **_peaks(uses.values())})
  return out


def _peaks(uses: Iterable[MemoryUse]) -> dict[str, int]:
  uses = list(uses)
  return {"peak": max(u.peak for u in uses),
          "peak_without_data": max(u.peak_without_data for u in uses)}


def memory_report(problem: Any, with_model_parallel: bool = True) -> dict[str, Any]:
  """Compiled memory of every method, per segment (= per device), without running anything.

  Returns {method: {"devices": [{"segment", "functions": {name: MemoryUse dict}, "peak",
  "peak_without_data"}], "peak", "peak_without_data"}}, where a method's peak is its largest
  device's. Methods: conventional, recovery, pnn-sequential (its training loops),
  "pnn-sequential hand-over" (each non-last segment's outputs over the training set, computed
  between its training and the next segment's), pnn-parallel, model-parallel.
  """
  from synthpart.model import whole_network
  specs = problem.specs
  whole = whole_network(specs)
  config = problem.config
  report: dict[str, Any] = {}

  def method(devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"devices": devices, "peak": max(d["peak"] for d in devices),
            "peak_without_data": max(d["peak_without_data"] for d in devices)}

  def one(segment: int, uses: dict[str, MemoryUse]) -> dict[str, Any]:
    return {"segment": segment, "functions": {k: v.to_dict() for k, v in uses.items()},
            **_peaks(uses.values())}

  # Both schedules train the first segment on pixels alike: each distinct loop compiles once.
  epoch_memory = functools.cache(functools.partial(_epoch_memory, problem))
  report["conventional"] = method([one(0, {"epoch": epoch_memory(whole, "pixels",
                                                                 config.train)})])
  if config.recovery.epochs:
    report["recovery"] = method([one(0, {"epoch": epoch_memory(whole, "pixels",
                                                              config.recovery)})])
  if len(specs) > 1:
    sequential, handover, parallel = [], [], []
    for spec in specs:
      train = config.segment_train(spec.index)
      sequential.append(one(spec.index, {"epoch": epoch_memory(
          spec, "pixels" if spec.is_first else "features", train)}))
      if not spec.is_last:
        handover.append(one(spec.index, {"features": _features_memory(problem, spec)}))
      parallel.append(one(spec.index, {"epoch": epoch_memory(
          spec, "pixels" if spec.is_first else "sil", train)}))
    report["pnn-sequential"] = method(sequential)
    report["pnn-sequential hand-over"] = method(handover)
    report["pnn-parallel"] = method(parallel)
    if with_model_parallel:
      report["model-parallel"] = method(_model_parallel_memory(problem))
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
