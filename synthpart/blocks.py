"""Blocks: the pieces a network is a sequence of, each a pure pair of functions.

    init(key, input_shape) -> (params, output_shape)     shapes exclude the batch axis
    apply(params, x [batch, *input_shape]) -> y [batch, *output_shape]

`params` is any pytree of arrays. A network is a tuple of blocks; cuts fall between blocks, and a
segment is the blocks between two cuts (`synthpart.model`). Built-in blocks (`dense`, `conv`,
`pool`, `flatten`, `layer_norm`) are named in a config's `model.layers`; any other function pair
is a block too, and `from_linen` / `from_nnx` turn a Flax module into one:

    import flax.linen as nn
    from synthpart import blocks

    def build(num_classes: int, model) -> list[blocks.Block]:   # model.factory = "pkg.mod:build"
      return [blocks.from_linen(nn.Conv(32, (3, 3)), activation="relu"),
              blocks.pool(2),
              blocks.dense(128, activation="relu"),
              blocks.dense(num_classes)]

A block's `flops(input_shape)` gives its analytic FLOPs per example (`synthpart.flops.Flops`) where
known; blocks without one are counted from XLA's cost analysis of their compiled forward and
backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from synthpart.errors import ConfigError
from synthpart.registry import Registry

Shape = tuple[int, ...]
Params = Any  # a pytree of arrays
Init = Callable[[jax.Array, Shape], tuple[Params, Shape]]
Apply = Callable[[Params, jax.Array], jax.Array]

# Hidden blocks' activation (`model.activation`), the cut blocks' included.
ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry("model.activation")
ACTIVATIONS.add("relu", jax.nn.relu, "max(x, 0)")
ACTIVATIONS.add("gelu", jax.nn.gelu, "Gaussian error linear unit (tanh approximation)")
ACTIVATIONS.add("tanh", jnp.tanh, "hyperbolic tangent")
ACTIVATIONS.add("sigmoid", jax.nn.sigmoid, "logistic function")
ACTIVATIONS.add("silu", jax.nn.silu, "x * sigmoid(x)")
ACTIVATIONS.add("linear", lambda x: x, "the identity: no activation")


class Flops(NamedTuple):
  """FLOPs per example of one block or training loop, by kind (`synthpart.flops`)."""
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


class Block(NamedTuple):
  """One block: `init(key, input_shape) -> (params, output_shape)`, `apply(params, x) -> y`.

  `name` labels it in results; `flops(input_shape)`, where given, is its analytic cost per
  example; `activation` names what its output ends in ("linear" for none), which tells a cut
  after it what values its outputs can reach.
  """
  init: Init
  apply: Apply
  name: str = "block"
  flops: Callable[[Shape], Flops] | None = None
  activation: str = "linear"


def abstract_params(block: Block, input_shape: Shape) -> Params:
  """The shapes and dtypes of the block's params (`jax.ShapeDtypeStruct`s), computing nothing
  and moving nothing to a device (the key is made inside the trace)."""
  return jax.eval_shape(lambda: block.init(jax.random.key(0), input_shape)[0])


def output_shape(block: Block, input_shape: Shape) -> Shape:
  """The block's output shape for `input_shape`, traced from its `apply`, computing nothing."""
  params = abstract_params(block, input_shape)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return tuple(jax.eval_shape(block.apply, params, x).shape[1:])


def _run(module: nn.Module, params: Params, x: jax.Array) -> jax.Array:
  """A linen module's output for `params` (its `params` collection)."""
  return cast(jax.Array, module.apply({"params": params}, x))


def _activate(activation: str | None) -> Callable[[jax.Array], jax.Array]:
  return ACTIVATIONS[activation or "linear"]


def _linen_init(module: nn.Module, dtype: str) -> Init:
  def init(key: jax.Array, shape: Shape) -> tuple[Params, Shape]:
    x = jnp.zeros((1, *shape), dtype)
    params = module.init(key, x)["params"]
    out = jax.eval_shape(lambda p: module.apply({"params": p}, x), params)
    return params, tuple(out.shape[1:])
  return init


def dense(width: int, activation: str | None = None, dtype: str = "float32",
          param_dtype: str = "float32") -> Block:
  """A fully connected layer [batch, *in] -> [batch, width] (inputs flattened), then
  `activation`. Weights: Flax's `nn.Dense` (LeCun normal kernel, zero bias)."""
  act = _activate(activation)
  template = nn.Dense(width, dtype=jnp.dtype(param_dtype), param_dtype=jnp.dtype(param_dtype))

  def init(key: jax.Array, shape: Shape) -> tuple[Params, Shape]:
    x = jnp.zeros((1, math.prod(shape)), param_dtype)
    return template.init(key, x)["params"], (width,)

  def apply(params: Params, x: jax.Array) -> jax.Array:
    if x.ndim > 2:
      x = x.reshape(x.shape[0], -1)
    layer = nn.Dense(width, dtype=jnp.dtype(dtype), param_dtype=params["kernel"].dtype)
    return act(_run(layer, params, x))

  def flops(shape: Shape) -> Flops:
    i, o = math.prod(shape), width
    a = 0 if act is ACTIVATIONS["linear"] else o
    return Flops(forward=2 * i * o + o + a, activation_grads=a, weight_grads=2 * i * o + o,
                 input_grads=2 * i * o)

  return Block(init, apply, f"dense {width}", flops, activation or "linear")


# The names a built-in block's string options may take (`model.layers`).
PADDINGS = ("SAME", "VALID")
POOL_KINDS = ("max", "avg")
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"padding": PADDINGS, "kind": POOL_KINDS}


def conv(features: int, kernel: int = 3, stride: int = 1, padding: str = "SAME",
         activation: str | None = None, dtype: str = "float32",
         param_dtype: str = "float32") -> Block:
  """A 2-D convolution over NHWC inputs [batch, H, W, C] -> [batch, H', W', features], then
  `activation`. Weights: Flax's `nn.Conv`."""
  if padding not in PADDINGS:
    raise ConfigError(f"conv padding {padding!r} is not one of {', '.join(PADDINGS)}")
  act = _activate(activation)

  def module(compute: Any) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   dtype=jnp.dtype(compute), param_dtype=jnp.dtype(param_dtype))

  def init(key: jax.Array, shape: Shape) -> tuple[Params, Shape]:
    if len(shape) != 3:
      raise ConfigError(f"a conv block needs image inputs [H, W, C], got {list(shape)}")
    if padding == "VALID" and kernel > min(shape[:2]):
      raise ConfigError(f"a conv of kernel {kernel} with VALID padding shrinks its input "
                        f"{list(shape)} below 1x1; allowed: kernel at most {min(shape[:2])}, "
                        "or padding SAME")
    return _linen_init(module(param_dtype), param_dtype)(key, shape)

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return act(_run(module(dtype), params, x))

  def flops(shape: Shape) -> Flops:
    h, w, c = shape
    taps_h, out_h = _taps(h, kernel, stride, padding)
    taps_w, out_w = _taps(w, kernel, stride, padding)
    out = out_h * out_w * features
    mac = 2 * taps_h * taps_w * c * features  # padding taps multiply nothing
    a = 0 if act is ACTIVATIONS["linear"] else out
    return Flops(forward=mac + out + a, activation_grads=a, weight_grads=mac + out,
                 input_grads=mac)

  return Block(init, apply, f"conv {kernel}x{kernel}x{features}/{stride}", flops,
               activation or "linear")


def _taps(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
  """Along one axis: (kernel taps that land inside the input, summed over outputs; outputs)."""
  if padding == "SAME":
    out = -(-size // stride)
    low = max((out - 1) * stride + kernel - size, 0) // 2
  else:
    out, low = (size - kernel) // stride + 1, 0
  taps = sum(1 for o in range(out) for t in range(kernel) if 0 <= o * stride + t - low < size)
  return taps, out


def pool(window: int = 2, stride: int | None = None, kind: str = "max") -> Block:
  """Max or average pooling over NHWC inputs, `window` x `window`, stride `stride` (default
  the window), VALID padding."""
  if kind not in POOL_KINDS:
    raise ConfigError(f"pool kind {kind!r} is not one of {', '.join(POOL_KINDS)}")
  step = stride or window
  fn = nn.max_pool if kind == "max" else nn.avg_pool

  def apply(params: Params, x: jax.Array) -> jax.Array:
    del params
    return fn(x, (window, window), strides=(step, step), padding="VALID")

  def init(key: jax.Array | None, shape: Shape) -> tuple[Params, Shape]:
    del key
    if len(shape) != 3:
      raise ConfigError(f"a pool block needs image inputs [H, W, C], got {list(shape)}")
    h, w, c = shape
    if window > min(h, w):
      raise ConfigError(f"a {kind} pool of window {window} shrinks its input {list(shape)} "
                        f"below 1x1; allowed: window at most {min(h, w)}")
    return {}, ((h - window) // step + 1, (w - window) // step + 1, c)

  def flops(shape: Shape) -> Flops:
    _, out = init(None, shape)
    n = window * window * math.prod(out)
    return Flops(forward=n, input_grads=n)

  return Block(init, apply, f"{kind} pool {window}/{step}", flops)


def flatten() -> Block:
  """[batch, *shape] -> [batch, prod(shape)]."""
  def init(key: jax.Array, shape: Shape) -> tuple[Params, Shape]:
    del key
    return {}, (math.prod(shape),)

  def apply(params: Params, x: jax.Array) -> jax.Array:
    del params
    return x.reshape(x.shape[0], -1)

  return Block(init, apply, "flatten", lambda shape: Flops())


def layer_norm(dtype: str = "float32", param_dtype: str = "float32") -> Block:
  """Layer normalisation over the last axis, with a learned scale and bias (Flax `LayerNorm`)."""
  def module(compute: Any) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=jnp.dtype(compute), param_dtype=jnp.dtype(param_dtype))

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return _run(module(dtype), params, x)

  def flops(shape: Shape) -> Flops:
    n = math.prod(shape)
    return Flops(forward=8 * n, weight_grads=4 * n, input_grads=8 * n)

  return Block(_linen_init(module(param_dtype), param_dtype), apply, "layer norm", flops)


def from_linen(module: nn.Module, activation: str | None = None, name: str | None = None,
               dtype: str = "float32") -> Block:
  """A Flax linen module as a block: its `params` collection is the block's params.

  The module must be deterministic and stateless apart from `params` (no batch statistics, no
  dropout rng); `activation` is applied after it.
  """
  act = _activate(activation)

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return act(_run(module, params, x))

  return Block(_linen_init(module, dtype), apply, name or type(module).__name__, None,
               activation or "linear")


def from_nnx(make: Callable[[nnx.Rngs], nnx.Module], activation: str | None = None,
             name: str | None = None, dtype: str = "float32") -> Block:
  """A Flax NNX module as a block. `make(rngs)` builds the module (for the init key's draw).

  The module is split once into its static graph definition, kept outside the params, and its
  state, which is the block's params pytree; `apply` merges them back, calls the module and
  returns the output, so the block stays a pure function of its params.
  """
  act = _activate(activation)
  box: dict[str, Any] = {}

  def graphdef() -> Any:
    if "graphdef" not in box:
      box["graphdef"] = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))[0]
    return box["graphdef"]

  def init(key: jax.Array, shape: Shape) -> tuple[Params, Shape]:
    module = make(nnx.Rngs(params=key))
    _, state = nnx.split(module)
    out = jax.eval_shape(lambda s: apply(s, jnp.zeros((1, *shape), dtype)), state)
    return state, tuple(out.shape[1:])

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return act(nnx.merge(graphdef(), params)(x))

  return Block(init, apply, name or "nnx module", None, activation or "linear")


# The built-in blocks a config's `model.layers` may name, by their `type`.
BUILT_IN: Registry[Callable[..., Block]] = Registry("model.layers type")
BUILT_IN.add("dense", dense, "width, activation")
BUILT_IN.add("conv", conv, "features, kernel, stride, padding (SAME | VALID), activation")
BUILT_IN.add("pool", pool, "window, stride, kind (max | avg)")
BUILT_IN.add("flatten", flatten, "")
BUILT_IN.add("layer_norm", layer_norm, "")
