"""Networks as sequences of blocks, and segments as slices of them: init, apply, compose.

A network comes from the config's `[model]`: a dense stack (`hidden`, the default), built-in
blocks (`layers`), or a user's factory (`factory = "my_pkg.nets:build"`, a function
`build(input_shape, num_classes) -> list[Block]`); a classifier `dense(num_classes)` ends the
first two. Segment parameters are a plain list of per-block pytrees, so segments compose by list
concatenation and a segment is a slice of the whole network. Block b's parameters come from the
init key folded with b, so a block starts from the same weights whichever segment holds it:
conventional and partitioned runs start from the same network.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from synthpart import blocks as B
from synthpart.blocks import Block, Shape
from synthpart.config import ModelConfig, layer_text
from synthpart.errors import ConfigError, call_user_code
from synthpart.partition import SegmentSpec, plan_segments

Params = list[Any]  # one pytree per block


def _built_in(index: int, layer: Mapping[str, Any], m: ModelConfig) -> Block:
  """The built-in block of `model.layers[index]`; its init names that entry in a `ConfigError`
  (a layer that does not fit the shape it gets)."""
  kind = layer["type"]
  options = {k: v for k, v in layer.items() if k != "type"}
  if kind in ("dense", "conv"):
    options.setdefault("activation", m.activation)
  if kind in ("dense", "conv", "layer_norm"):
    options.update(dtype=m.dtype, param_dtype=m.param_dtype)
  block = B.BUILT_IN[kind](**options)
  label = f"model.layers[{index}] ({layer_text(layer)})"

  def init(key: jax.Array, shape: Shape) -> tuple[Any, Shape]:
    try:
      return block.init(key, shape)
    except ConfigError as e:
      raise ConfigError(f"{label}: {e}") from None

  return block._replace(init=init)


def load_factory(spec: str) -> Any:
  """The function `"package.module:function"` names."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ConfigError(f"model.factory {spec!r} must look like 'package.module:function'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(f"model.factory {spec!r}: cannot import {module_name}: {e}") from None
  if not callable(fn := getattr(module, attr, None)):
    raise ConfigError(f"model.factory {spec!r}: {module_name} has no function {attr}")
  return fn


def build_network(m: ModelConfig, input_shape: Shape, num_classes: int) -> tuple[Block, ...]:
  """The blocks of the network `m` describes, for inputs of `input_shape` and `num_classes`."""
  if m.factory:
    built = call_user_code(f"model.factory {m.factory}", load_factory(m.factory),
                           tuple(input_shape), num_classes)
    if not isinstance(built, Sequence) or not built or not all(
        isinstance(b, Block) for b in built):
      raise ConfigError(f"model.factory {m.factory!r} must return a non-empty list of "
                        "synthpart.blocks.Block")
    return tuple(built)
  if m.layers:
    hidden = [_built_in(i, layer, m) for i, layer in enumerate(m.layers)]
  else:
    hidden = [B.dense(w, m.activation, m.dtype, m.param_dtype) for w in m.hidden]
  return (*hidden, B.dense(num_classes, None, m.dtype, m.param_dtype))


def dense_plan(widths: Sequence[int], cuts: tuple[int, ...], activation: str = "relu",
               dtype: str = "float32", param_dtype: str = "float32") -> tuple[SegmentSpec, ...]:
  """The segments of a dense network with layer `widths` (input first), cut after `cuts`."""
  network = (*(B.dense(w, activation, dtype, param_dtype) for w in widths[1:-1]),
             B.dense(widths[-1], None, dtype, param_dtype))
  return plan_segments(network, network_shapes(network, (widths[0],)), cuts)


def network_shapes(blocks: Sequence[Block], input_shape: Shape) -> tuple[Shape, ...]:
  """The per-example shape at every block boundary, input first."""
  shapes = [tuple(input_shape)]
  for b, block in enumerate(blocks):
    shapes.append(B.output_shape(block, shapes[-1]))
    if any(size < 1 for size in shapes[-1]):
      raise ConfigError(f"block {b + 1} of the network ({block.name}) gives an empty output "
                        f"{list(shapes[-1])} for its input {list(shapes[-2])}")
  return tuple(shapes)


def init_segment(key: jax.Array, spec: SegmentSpec) -> Params:
  """Initialises the blocks of `spec` from the network's init `key` (block b: key folded with b)."""
  return [block.init(jax.random.fold_in(key, spec.start + offset), spec.shapes[offset])[0]
          for offset, block in enumerate(spec.blocks)]


def apply_segment(params: Params, x: jax.Array, spec: SegmentSpec) -> jax.Array:
  """Maps x [batch, *shapes[0]] to [batch, *shapes[-1]] float32, block after block.

  Hidden blocks, the cut block included, end in their activation, so the composed segments are
  exactly the unpartitioned network; the classifier gives raw logits.
  """
  for block, p in zip(spec.blocks, params):
    x = block.apply(p, x)
  return x.astype(jnp.float32)


def whole_network(specs: tuple[SegmentSpec, ...]) -> SegmentSpec:
  """The spec of all segments joined: one segment from the first input to the last output."""
  shapes = specs[0].shapes + tuple(s for spec in specs[1:] for s in spec.shapes[1:])
  return SegmentSpec(index=0, start=specs[0].start, stop=specs[-1].stop, shapes=shapes,
                     blocks=tuple(b for spec in specs for b in spec.blocks),
                     input_cut=specs[0].input_cut, output_cut=specs[-1].output_cut)


def compose(segment_params: list[Params]) -> Params:
  """Joins trained segments into the parameters of the whole network."""
  return [layer for params in segment_params for layer in params]
