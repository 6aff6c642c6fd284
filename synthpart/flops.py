"""What a loop costs, counted analytically: FLOPs per example and step, bytes moved between devices.

FLOPs are counted per example for dense layers (XLA's GPU cost analysis misses cuBLAS calls; the
CPU count, which is exact, cross-checks these formulas in the tests). For a layer of `i` inputs
and `o` outputs:

  forward            2*i*o (matmul) + o (bias add) + o (activation; hidden layers only)
  activation grads   o (the activation's derivative; hidden layers only)
  weight grads       2*i*o (kernel) + o (bias: a sum over the batch)
  input grads        2*i*o, except for the first layer of a loop whose input is data, SIL
                     vectors or handed-over features: nothing upstream needs that gradient

An activation is counted as one FLOP per element (exact for ReLU; XLA counts GELU/tanh/sigmoid
as more elementwise work plus transcendentals). The optimizer update costs `OPTIMIZER_FLOPS` per
parameter per *step* (as XLA counts optax's updates on CPU), about 1-2% of a step at width 512 and
batch 128. Not counted: the loss and input scaling (O(width) per example, under 1%).

Bytes moved are what each method sends across its cuts (`bytes_moved`), to check against the
transfer ledgers the runs record (`synthpart.curves.ledger_bytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax

from synthpart.partition import SegmentSpec

# ---------------------------------------------------------------------------------------------
# FLOPs


class Flops(NamedTuple):
  """FLOPs per example of one training loop (or layer), by kind; see the module docstring."""
  forward: int = 0
  activation_grads: int = 0
  weight_grads: int = 0
  input_grads: int = 0

  @property
  def backward(self) -> int:
    return self.activation_grads + self.weight_grads + self.input_grads

  @property
  def training(self) -> int:
    """Forward plus backward: the FLOPs of one example through one training step."""
    return self.forward + self.backward

  def __add__(self, other: Flops) -> Flops:  # type: ignore[override]
    return Flops(*(a + b for a, b in zip(self, other, strict=True)))

  def scale(self, factor: float) -> Flops:
    return Flops(*(round(v * factor) for v in self))


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
  pairs = zip(spec.widths[:-1], spec.widths[1:], strict=True)
  for offset, (width_in, width_out) in enumerate(pairs):
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
  return sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(start, stop))


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


def xla_flops(compiled: jax.stages.Compiled) -> float:
  """XLA's own FLOP count of a compiled function (exact on CPU, undercounted on GPU)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0]
  if not analysis:
    raise ValueError("this backend gives no cost analysis of compiled functions")
  return float(analysis["flops"])


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
  widths = _plan_widths(specs)
  return sum(num_params(widths, s.start, s.stop) for s in specs[1:]) * itemsize
