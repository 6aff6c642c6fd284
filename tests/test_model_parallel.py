import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthpart import curves, flops
from synthpart.bench import stepwise
from synthpart.errors import ConfigError
from synthpart.model import compose, whole_network
from synthpart.progress import Progress
from synthpart.train import model_parallel as MP
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.epoch import epoch_order

from tiny import tiny_config, tiny_dataset

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("model_parallel")


QUIET = Progress(quiet=True)


def _problem(devices, **overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), devices)


@pytest.fixture(scope="module")
def three_segments():
  """Conventional and model-parallel runs of one 3-segment problem on 3 devices."""
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2]})
  conventional = S.train_conventional(problem, QUIET)
  # Nothing crosses outside the compiled epoch but explicit hand-overs for evaluation.
  with jax.transfer_guard("disallow"):
    model_parallel = MP.train_model_parallel(problem, QUIET)
  return problem, conventional, model_parallel


def _close(a_params, b_params, rtol=1e-5, atol=1e-6):
  for a, b in zip(jax.tree.leaves(a_params), jax.tree.leaves(b_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_reaches_the_conventional_network(three_segments):
  problem, ((conv_params,), conv), (mp_params, mp) = three_segments
  assert mp.method == "model-parallel"
  _close(conv_params, compose(mp_params))
  np.testing.assert_allclose(mp.segments[0].loss_per_epoch, conv.segments[0].loss_per_epoch,
                             rtol=1e-6)
  assert mp.test_accuracy == pytest.approx(conv.test_accuracy, abs=1 / 64)
  assert mp.test_accuracy > 0.5  # it learned: 4 classes
  assert [p.epoch for p in mp.curve] == [1, 2, 3]
  assert mp.curve[-1].accuracy == mp.test_accuracy
  assert mp.curve[-1].examples == (3 * 8 * 32,)  # 256 examples, batch 32, 3 epochs
  # The loop records what start_loop records: memory of the compiled epoch, FLOPs.
  (loop,) = mp.segments
  assert loop.device == "cpu:0,cpu:1,cpu:2" and tuple(loop.layers) == (0, 4)
  assert loop.memory["peak"] > loop.memory["data"] > 0
  assert loop.flops_per_step == conv.segments[0].flops_per_step > 0


def test_each_stage_lives_on_its_own_device():
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2]})
  loop, plan = MP.start_model_parallel(problem)
  devices = jax.devices()[:3]
  for slot in jax.tree.leaves(loop.state):
    assert slot.shape[0] == 3  # one row per stage
    assert [s.device for s in sorted(slot.addressable_shards, key=lambda s: s.index)] == devices
  for params, device, spec in zip(MP.stage_params(plan, loop.state.params, devices), devices,
                                  problem.specs, strict=True):
    assert {d for leaf in jax.tree.leaves(params) for d in leaf.devices()} == {device}
    assert [leaf.shape for leaf in jax.tree.leaves(params)] == [
        leaf.shape for leaf in jax.tree.leaves(segments.init_params(problem, spec, device))]


def test_activations_and_gradients_cross_inside_the_compiled_epoch():
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2]})
  loop, _ = MP.start_model_parallel(problem)
  # In the one program of an epoch, each step: activations forward and gradients back, per cut.
  pairs = re.findall(r"collective-permute\(.*source_target_pairs=\{\{(\d+),(\d+)\}\}",
                     loop.epoch_fn.as_text())
  assert sorted(pairs) == [("0", "1"), ("1", "0"), ("1", "2"), ("2", "1")]


def test_ledger_matches_the_analytic_bytes(three_segments):
  problem, _, (_, mp) = three_segments
  train = problem.config.train
  expected = flops.bytes_moved(problem.specs, "model-parallel", len(problem.train_y),
                               train.batch_size, train.epochs)
  assert curves.ledger_bytes(mp.transfers) == expected > 0
  steps = len(problem.train_y) // train.batch_size
  training = [t for t in mp.transfers if t.kind == "training"]
  first = training[0]
  assert (first.source, first.destination) == ("cpu:0", "cpu:1")
  assert first.what == f"cut 1 activations (epoch 1, {steps} transfers)"
  assert first.bytes == steps * train.batch_size * problem.widths[1] * 4
  # Each epoch: activations forward and gradients back across both cuts.
  assert len(training) == 4 * train.epochs
  assert {(t.source, t.destination) for t in training} == {
      ("cpu:0", "cpu:1"), ("cpu:1", "cpu:2"), ("cpu:2", "cpu:1"), ("cpu:1", "cpu:0")}
  assert {t.kind for t in mp.transfers} == {"training", "evaluation"}


def test_needs_a_cut_and_a_device_per_segment():
  with pytest.raises(ConfigError, match="at least one cut"):
    MP.train_model_parallel(_problem(jax.devices()[:1], **{"model.cuts": []}), QUIET)
  with pytest.raises(ConfigError, match="a device of its own"):
    MP.start_model_parallel(_problem(jax.devices()[:2], **{"model.cuts": [1, 2]}))


def test_slots_hold_every_stage_and_give_it_back():
  trees = [{"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4), "n": jnp.int32(7)},
           {"c": jnp.full((5,), 2.0)}]
  slots = MP.plan_slots(trees)
  # Largest to largest within a dtype: float slots of 6 and 4 elements, one int slot.
  assert sorted(zip(slots.sizes, map(str, slots.dtypes))) == [
      (1, "int32"), (4, "float32"), (6, "float32")]
  for stage, tree in enumerate(trees):
    back = MP.unpack(slots, stage, MP.pack(slots, stage, tree))
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back), strict=True):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == b.dtype


def test_the_stepwise_reference_reaches_the_conventional_network_too():
  problem = _problem(jax.devices()[:2], **{"train.epochs": 2})
  (conv_params,), _ = S.train_conventional(problem, QUIET)
  params, result = stepwise.train_model_parallel(problem, QUIET, track_accuracy=False)
  assert result.method == "model-parallel-stepwise"
  _close(conv_params, compose(params), rtol=1e-4, atol=1e-5)
  assert curves.ledger_bytes(result.transfers) == flops.bytes_moved(
      problem.specs, "model-parallel", len(problem.train_y), 32, 2)


def test_epoch_order_is_the_conventional_loops_order():
  key = jax.random.key(7)
  order = epoch_order(key, np.uint32(3), 100, 32)
  order_key, _ = jax.random.split(jax.random.fold_in(key, np.uint32(3)))
  expected = jax.random.permutation(order_key, 100)[:96].reshape(3, 32)
  np.testing.assert_array_equal(order, expected)
  assert whole_network(_problem(jax.devices()[:2]).specs).stop == 4
