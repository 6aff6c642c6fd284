import jax
import numpy as np
import pytest
from tiny import tiny_config, tiny_dataset

from synthpart import curves, flops
from synthpart.errors import ConfigError
from synthpart.model import compose
from synthpart.progress import Progress
from synthpart.train import model_parallel as MP
from synthpart.train import problem as P
from synthpart.train import schedules as S

QUIET = Progress(quiet=True)


def _problem(devices, **overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), devices)


@pytest.fixture(scope="module")
def three_segments():
  """Conventional and model-parallel runs of one 3-segment problem on 3 devices."""
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2]})
  conventional = S.train_conventional(problem, QUIET)
  # Only explicit, ledgered hand-overs may cross: implicit transfers of any kind are errors.
  with jax.transfer_guard("disallow"):
    model_parallel = MP.train_model_parallel(problem, QUIET)
  return problem, conventional, model_parallel


def test_reaches_the_conventional_network(three_segments):
  _, (conv_params, conv), (mp_params, mp) = three_segments
  assert mp.method == "model-parallel"
  for a, b in zip(jax.tree.leaves(conv_params), jax.tree.leaves(compose(mp_params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(mp.segments[0].loss_per_epoch, conv.segments[0].loss_per_epoch,
                             rtol=1e-5)
  assert mp.test_accuracy == pytest.approx(conv.test_accuracy, abs=1 / 64)
  assert mp.test_accuracy > 0.5  # it learned: 4 classes
  assert [p["epoch"] for p in mp.curve] == [1, 2, 3]
  assert mp.curve[-1]["accuracy"] == mp.test_accuracy
  assert mp.curve[-1]["examples"] == [3 * 8 * 32] * 3  # 256 examples, batch 32, 3 epochs


def test_segments_live_on_their_devices(three_segments):
  _, _, (_, mp) = three_segments
  assert [s.device for s in mp.segments] == ["cpu:0", "cpu:1", "cpu:2"]
  assert [tuple(s.layers) for s in mp.segments] == [(0, 1), (1, 2), (2, 4)]


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


def test_transfers_are_real_device_to_device_copies():
  problem = _problem(jax.devices()[:2], **{"train.epochs": 1})
  with jax.transfer_guard_device_to_device("disallow_explicit"):
    with pytest.raises(Exception, match="[Dd]isallowed"):
      MP.train_model_parallel(problem, QUIET, track_accuracy=False)


def test_needs_a_cut():
  problem = _problem(jax.devices()[:1], **{"model.cuts": []})
  with pytest.raises(ConfigError, match="at least one cut"):
    MP.train_model_parallel(problem, QUIET)


def test_epoch_order_is_the_conventional_loops_order():
  key = jax.random.key(7)
  order = MP.epoch_order(key, np.uint32(3), 100, 32)
  order_key, _ = jax.random.split(jax.random.fold_in(key, np.uint32(3)))
  expected = jax.random.permutation(order_key, 100)[:96].reshape(3, 32)
  np.testing.assert_array_equal(order, expected)
