"""Blocks: built-in CNN blocks, Flax linen and NNX adapters, factories, SIL at feature maps."""

import math
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synthpart import blocks as B
from synthpart.config import load as load_config
from synthpart.errors import ConfigError
from synthpart.model import apply_segment, dense_plan, init_segment, network_shapes
from synthpart.progress import Progress
from synthpart.train import schedules as S
from synthpart.train.problem import make_problem

from tiny import tiny_config, tiny_dataset

CNN = ("conv:features=4:kernel=3,pool:window=2,conv:features=4:kernel=3:stride=2,flatten,"
       "dense:width=8")


def test_default_dense_blocks_are_the_plain_mlp():
  (spec,) = dense_plan((6, 5, 3), ())
  params = init_segment(jax.random.key(0), spec)
  x = np.random.default_rng(0).random((4, 6), np.float32)
  hidden = jax.nn.relu(x @ params[0]["kernel"] + params[0]["bias"])
  logits = hidden @ params[1]["kernel"] + params[1]["bias"]
  np.testing.assert_array_equal(apply_segment(params, x, spec), logits)


@pytest.mark.parametrize("block, shape, out", [
    (B.conv(8, 3), (6, 6, 2), (6, 6, 8)),
    (B.conv(8, 3, stride=2, padding="VALID"), (7, 7, 2), (3, 3, 8)),
    (B.pool(2), (6, 6, 3), (3, 3, 3)),
    (B.pool(3, 2, "avg"), (7, 7, 3), (3, 3, 3)),
    (B.flatten(), (2, 3, 4), (24,)),
    (B.layer_norm(), (5,), (5,)),
    (B.dense(7, "relu"), (2, 3, 4), (7,)),
])
def test_built_in_blocks_declare_their_output_shape(block, shape, out):
  params, declared = block.init(jax.random.key(0), shape)
  y = block.apply(params, jnp.ones((2, *shape)))
  assert declared == out == y.shape[1:] == B.output_shape(block, shape)


@pytest.mark.parametrize("block, shape", [
    (B.dense(7, "relu"), (12,)), (B.conv(8, 3), (6, 6, 2)),
    (B.conv(4, 3, stride=2), (7, 7, 3)), (B.conv(4, 3, padding="VALID"), (6, 6, 2))])
def test_analytic_forward_flops_match_xla(block, shape):
  params, _ = block.init(jax.random.key(0), shape)
  compiled = jax.jit(block.apply).lower(params, jnp.ones((1, *shape))).compile()
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  assert block.flops(shape).forward == pytest.approx(xla["flops"], rel=0.02)


def test_a_cnn_from_the_config_trains_with_feature_map_sil():
  config = tiny_config(**{"model.layers": CNN, "model.cuts": [2]})
  problem = make_problem(config, tiny_dataset(shape=(8, 8, 1)))
  assert problem.shapes[2] == (4, 4, 4)
  assert problem.sil[2].shape == (4, 4, 4, 4)  # one kappa * U(0, 1) tensor per class
  assert problem.train_x.shape[1:] == (8, 8, 1)  # images stay images
  assert S.train_conventional(problem, Progress(quiet=True))[1].test_accuracy > 0.8
  for train in (S.train_sequential, S.train_parallel):
    _, result = train(problem, Progress(quiet=True))
    assert all(math.isfinite(l) for s in result.segments for l in s.loss_per_epoch)
    assert result.segments[0].loss_per_epoch[-1] < result.segments[0].loss_per_epoch[0]


def test_layers_and_cuts_are_checked():
  with pytest.raises(ConfigError, match="model.layers\\[0\\].type = 'convolution'"):
    load_config(overrides={"model.layers": "convolution:features=3"})
  with pytest.raises(ConfigError, match="conv has no option width"):
    load_config(overrides={"model.layers": "conv:width=3"})
  with pytest.raises(ConfigError, match="model.cuts"):
    load_config(overrides={"model.layers": "conv:features=3,flatten", "model.cuts": [3]})


class LinenMLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.width)(x.reshape(x.shape[0], -1))


class NNXMLP(nnx.Module):
  def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
    self.linear = nnx.Linear(din, dout, rngs=rngs)

  def __call__(self, x):
    return self.linear(x)


def test_linen_and_nnx_blocks_compose_and_train_through_a_factory(tmp_path, monkeypatch):
  (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
      from flax import nnx
      from synthpart import blocks
      from test_blocks import LinenMLP, NNXMLP

      def build(input_shape, num_classes):
        return [blocks.from_linen(LinenMLP(16), activation="relu"),
                blocks.from_nnx(lambda rngs: NNXMLP(16, 16, rngs), activation="relu"),
                blocks.dense(num_classes)]
  """))
  monkeypatch.syspath_prepend(str(tmp_path))
  config = tiny_config(**{"model.factory": "my_nets:build", "model.cuts": [2]})
  problem = make_problem(config, tiny_dataset())
  assert problem.shapes == ((4, 4, 1), (16,), (16,), (4,))
  for train in (S.train_conventional, S.train_sequential, S.train_parallel):
    _, result = train(problem, Progress(quiet=True))
    assert result.test_accuracy > 0.6, result.method
  sys.modules.pop("my_nets", None)


def test_nnx_block_params_are_a_pytree_and_init_is_seeded():
  block = B.from_nnx(lambda rngs: NNXMLP(3, 2, rngs))
  a, shape = block.init(jax.random.key(1), (3,))
  b, _ = block.init(jax.random.key(1), (3,))
  assert shape == (2,)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  y = jax.jit(block.apply)(a, jnp.ones((5, 3)))
  assert y.shape == (5, 2)


def test_a_bad_factory_is_one_line(monkeypatch, tmp_path):
  (tmp_path / "bad_nets.py").write_text("def build(input_shape, num_classes):\n  return 3\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  for spec, message in (("no_such_module:build", "cannot import"),
                        ("bad_nets:missing", "has no function"), ("bad_nets", "must look like"),
                        ("bad_nets:build", "must return a non-empty list")):
    config = tiny_config(**{"model.factory": spec, "model.cuts": [1]})
    with pytest.raises(ConfigError, match=message) as e:
      make_problem(config, tiny_dataset())
    assert "\n" not in str(e.value)
  sys.modules.pop("bad_nets", None)


def test_network_shapes_follow_the_blocks():
  blocks = (B.conv(3, 3, stride=2), B.flatten(), B.dense(5))
  assert network_shapes(blocks, (8, 8, 1)) == ((8, 8, 1), (4, 4, 3), (48,), (5,))
