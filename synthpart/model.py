"""Pure-functional fully connected segments: init(key) -> params, apply(params, x) -> y.

Parameters are a plain list of per-layer pytrees (Flax `Dense` variables), one entry per dense
layer, so segments compose by list concatenation and a segment is a slice of the whole network.
Layer l's weights come from the init key folded with l, so a layer starts from the same weights
whichever segment holds it: conventional and partitioned runs start from the same network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from synthpart.partition import SegmentSpec
from synthpart.registry import Registry

Params = list[Any]  # one {"kernel": [in, out], "bias": [out]} dict per dense layer

# Hidden layers' activation (`model.activation`), the cut layers' included.
ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry("model.activation")
ACTIVATIONS.add("relu", jax.nn.relu, "max(x, 0)")
ACTIVATIONS.add("gelu", jax.nn.gelu, "Gaussian error linear unit (tanh approximation)")
ACTIVATIONS.add("tanh", jnp.tanh, "hyperbolic tangent")
ACTIVATIONS.add("sigmoid", jax.nn.sigmoid, "logistic function")
ACTIVATIONS.add("silu", jax.nn.silu, "x * sigmoid(x)")


def _dense(width: int, dtype: str, param_dtype: str) -> nn.Dense:
  return nn.Dense(width, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype))


def init_segment(key: jax.Array, spec: SegmentSpec, param_dtype: str = "float32") -> Params:
  """Initialises the layers of `spec` from the network's init `key`."""
  params = []
  for offset, (width_in, width_out) in enumerate(zip(spec.widths[:-1], spec.widths[1:])):
    layer_key = jax.random.fold_in(key, spec.start + offset)
    dense = _dense(width_out, param_dtype, param_dtype)
    params.append(dense.init(layer_key, jnp.zeros((1, width_in), param_dtype))["params"])
  return params


def apply_segment(params: Params, x: jax.Array, spec: SegmentSpec, activation: str = "relu",
                  dtype: str = "float32") -> jax.Array:
  """Maps x [batch, widths[0]] to [batch, widths[-1]] float32.

  Hidden layers, the cut layer included, end in `activation`, so the composed segments are
  exactly the unpartitioned network; only the network's last layer gives raw logits.
  """
  act = ACTIVATIONS[activation]
  for offset, layer in enumerate(params):
    width_out = spec.widths[offset + 1]
    x = _dense(width_out, dtype, layer["kernel"].dtype).apply({"params": layer}, x)
    if not (spec.is_last and offset == len(params) - 1):
      x = act(x)
  return x.astype(jnp.float32)


def whole_network(specs: tuple[SegmentSpec, ...]) -> SegmentSpec:
  """The spec of all segments joined: one segment from the first input to the last output."""
  widths = specs[0].widths + tuple(w for s in specs[1:] for w in s.widths[1:])
  return SegmentSpec(index=0, start=specs[0].start, stop=specs[-1].stop, widths=widths,
                     input_cut=specs[0].input_cut, output_cut=specs[-1].output_cut)


def compose(segment_params: list[Params]) -> Params:
  """Joins trained segments into the parameters of the whole network."""
  return [layer for params in segment_params for layer in params]
