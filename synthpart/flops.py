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

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from synthpart.blocks import Block, Flops, Shape
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


def block_flops(block: Block, shape: Shape) -> Flops:
  """One block's FLOPs per example for inputs of `shape`: its analytic count where it has one,
  else XLA's cost analysis of its compiled forward pass, of its parameter gradients and of its
  input gradients (exact on CPU)."""
  if block.flops is not None:
    return block.flops(shape)
  params = jax.eval_shape(lambda k: block.init(k, shape)[0], jax.random.key(0))
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)

  def count(fn: Callable[..., Any]) -> int:
    return round(xla_flops(jax.jit(fn).lower(params, x).compile()))

  def total(p: Any, x: jax.Array) -> jax.Array:
    return jnp.sum(block.apply(p, x))

  forward = count(block.apply)
  weights = count(jax.grad(total)) - forward
  both = count(jax.grad(total, argnums=(0, 1))) - forward
  return Flops(forward=forward, weight_grads=max(weights, 0), input_grads=max(both - weights, 0))


def segment_flops(spec: SegmentSpec, input_grads: bool = False) -> Flops:
  """A segment trained on its own (`input_grads` False) or inside backprop (True), per example.

  The first block of a loop needs no gradient w.r.t. its input unless `input_grads`: its input is
  data, SIL tensors or handed-over activations.
  """
  total = Flops()
  for offset, block in enumerate(spec.blocks):
    cost = block_flops(block, spec.shapes[offset])
    if offset == 0 and not input_grads:
      cost = cost._replace(input_grads=0)
    total += cost
  return total


def segment_params(spec: SegmentSpec) -> int:
  """Parameters of the segment's blocks."""
  return sum(math.prod(leaf.shape) for offset, block in enumerate(spec.blocks)
             for leaf in jax.tree.leaves(jax.eval_shape(  # the key made inside: no transfer
                 lambda b=block, o=offset: b.init(jax.random.key(0), spec.shapes[o])[0])))


def segment_step_flops(spec: SegmentSpec, batch_size: int, optimizer: str,
                       input_grads: bool = False) -> int:
  """One training step of a segment: the batch's forward and backward, plus the update."""
  return (batch_size * segment_flops(spec, input_grads).training
          + optimizer_flops(optimizer, segment_params(spec)))


def forward_flops(widths: Sequence[int], start: int, stop: int) -> int:
  """Inference through layers start..stop-1, per example (the sequential schedule's hand-over)."""
  return loop_flops(widths, start, stop).forward


def method_flops(specs: Sequence[SegmentSpec]) -> dict[str, Flops]:
  """Per-example training FLOPs of every loop of every method, for one segment plan.

  Keys: "conventional" (= "recovery"), "segment i" (a partitioned method's loop),
  "model-parallel segment i" (the same layers inside end-to-end backprop).
  """
  whole = segment_flops(_joined(specs))
  out = {"conventional": whole, "recovery": whole}
  for spec in specs:
    out[f"segment {spec.index}"] = segment_flops(spec)
    out[f"model-parallel segment {spec.index}"] = segment_flops(spec, input_grads=not spec.is_first)
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


def _joined(specs: Sequence[SegmentSpec]) -> SegmentSpec:
  """All segments as one (as `synthpart.model.whole_network` joins them)."""
  return specs[0]._replace(stop=specs[-1].stop, output_cut=specs[-1].output_cut,
                           shapes=specs[0].shapes + tuple(x for s in specs[1:]
                                                          for x in s.shapes[1:]),
                           blocks=tuple(b for s in specs for b in s.blocks))


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
  return sum(segment_params(s) for s in specs[1:]) * itemsize
