import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart import curves
from synthpart.experiment import run_schedules
from synthpart.memory import tree_bytes
from synthpart.model import apply_segment
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.loop import start_loop
from synthpart.train.objectives import Inputs

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)


def _problem(devices=None, **overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), devices)


def test_segments_live_on_their_devices():
  devices = jax.devices()[:2]
  problem = _problem(devices, **{"model.cuts": [1, 2]})  # 3 segments on 2 devices
  assert [problem.device_of(i) for i in range(3)] == [devices[0], devices[1], devices[0]]
  spec = problem.specs[1]
  lspec = segments.loop_spec(problem, "pnn-parallel", "segment 1", spec, Inputs.SIL)
  assert lspec.device == devices[1]
  run = start_loop(lspec, segments.init_params(problem, spec, devices[1]), {"y": problem.train_y},
                   segments.segment_constants(problem, spec, Inputs.SIL, devices[1]),
                   problem.key(0))
  for leaf in jax.tree.leaves((run.state, run.data, run.consts)):
    assert leaf.devices() == {devices[1]}


def test_parallel_moves_nothing_between_devices():
  problem = _problem(jax.devices()[:2])
  # Explicit device-to-device copies are errors too: the only traffic is host <-> device.
  with jax.transfer_guard_device_to_device("disallow_explicit"):
    _, result = S.train_parallel(problem, QUIET, track_accuracy=False)
  assert result.transfers == ()
  assert all(len(s.loss_per_epoch) == 3 for s in result.segments)
  assert {s.device for s in result.segments} == {"cpu:0", "cpu:1"}


def test_evaluation_transfers_are_counted_apart_from_training():
  problem = _problem(jax.devices()[:2])
  params, result = S.train_parallel(problem, QUIET)  # the composed network tested every epoch
  assert [t.kind for t in result.transfers] == ["evaluation"] * problem.config.train.epochs
  # Only the right segment's parameters cross: the left segment's are on device 0 already.
  assert {(t.source, t.destination, t.bytes) for t in result.transfers} == {
      ("cpu:1", "cpu:0", tree_bytes(params[1]))}
  assert curves.ledger_bytes(result.transfers) == 0 < curves.ledger_bytes(result.transfers, None)


def test_sequential_hands_over_cut_activations_once():
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2]})
  with jax.transfer_guard("disallow"):  # no implicit transfer anywhere
    _, result = S.train_sequential(problem, QUIET, track_accuracy=False)
  n, widths = len(problem.train_y), problem.widths
  assert [(t.what, t.source, t.destination, t.bytes) for t in result.transfers] == [
      ("cut 1 activations", "cpu:0", "cpu:1", n * widths[1] * 4),
      ("cut 2 activations", "cpu:1", "cpu:2", n * widths[2] * 4)]
  # And that hand-over is a real device-to-device copy: forbidding them stops the schedule.
  with jax.transfer_guard_device_to_device("disallow_explicit"):
    with pytest.raises(Exception, match="[Dd]isallowed"):
      S.train_sequential(problem, QUIET, track_accuracy=False)


@pytest.mark.parametrize("train", [S.train_sequential, S.train_parallel, S.train_pipelined])
def test_same_seed_same_result_bit_for_bit(train):
  a_params, a = train(_problem(jax.devices()[:2]), QUIET)
  b_params, b = train(_problem(jax.devices()[:2]), QUIET)
  for x, y in zip(jax.tree.leaves(a_params), jax.tree.leaves(b_params)):
    assert np.array_equal(x, y)
  assert [s.loss_per_epoch for s in a.segments] == [s.loss_per_epoch for s in b.segments]
  assert a.test_accuracy == b.test_accuracy
  c_params, _ = train(_problem(jax.devices()[:2], seed=1), QUIET)
  assert not np.array_equal(jax.tree.leaves(a_params)[0], jax.tree.leaves(c_params)[0])


def test_every_method_learns_the_tiny_task():
  problem = _problem(jax.devices()[:2], **{"train.epochs": 6})
  _, conv = S.train_conventional(problem, QUIET)
  seq_params, seq = S.train_sequential(problem, QUIET)
  par_params, par = S.train_parallel(problem, QUIET)
  _, rec = S.train_recovery(problem, seq_params, seq, QUIET)
  for r in (conv, seq, rec):
    assert r.test_accuracy > 0.9, (r.method, r.test_accuracy)
  # Chance is 0.25; the right segment only ever saw noisy SIL vectors, not real activations.
  assert par.test_accuracy > 0.7
  assert len(conv.curve) == 6 and all(p.accuracy is not None for p in conv.curve)
  assert rec.method == "pnn-sequential+recovery" and len(rec.segments) == 3
  assert rec.wall_seconds > seq.wall_seconds
  # segment losses fall
  for s in seq.segments + par.segments:
    assert s.loss_per_epoch[-1] < s.loss_per_epoch[0]


def test_per_segment_settings_are_honoured():
  problem = _problem(jax.devices()[:2], **{"segments.0.epochs": 2, "segments.1.epochs": 4,
                                           "segments.1.batch_size": 16,
                                           "segments.1.optimizer": "momentum"})
  _, result = S.train_parallel(problem, QUIET)
  first, last = result.segments
  assert (len(first.loss_per_epoch), len(last.loss_per_epoch)) == (2, 4)
  assert last.batch_size == 16 and last.steps_per_epoch == 256 // 16
  assert last.optimizer == "momentum" and first.optimizer == "adam"


def test_divergence_stops_only_that_segment():
  problem = _problem(jax.devices()[:2], **{"segments.0.learning_rate": 1e30,
                                           "segments.0.optimizer": "sgd"})
  _, result = S.train_parallel(problem, QUIET)
  first, last = result.segments
  assert first.diverged and not np.isfinite(first.loss_per_epoch[-1])
  assert len(first.loss_per_epoch) < 3 or not np.isfinite(first.loss_per_epoch[0])
  assert not last.diverged and len(last.loss_per_epoch) == 3


@settings(max_examples=3, deadline=None)
@given(st.lists(st.integers(2, 3), unique=True, max_size=2).map(sorted))
def test_a_segment_trains_the_same_whatever_the_other_segments(extra_cuts):
  """Segment 0 (layers 1-1) and its table at cut 1 are the same with any cuts after it."""
  devices = jax.devices()[:2]
  alone = _problem(devices, **{"model.cuts": [1]})
  crowded = _problem(devices, **{"model.cuts": [1, *extra_cuts]})
  (a0, *_), _ = S.train_parallel(alone, QUIET, track_accuracy=False)
  (b0, *_), _ = S.train_parallel(crowded, QUIET, track_accuracy=False)
  for x, y in zip(jax.tree.leaves(a0), jax.tree.leaves(b0)):
    assert np.array_equal(x, y)


def test_standardisation_uses_training_statistics_only():
  problem = _problem(jax.devices()[:2], **{"data.standardize": True})
  x = problem.train_x.astype(np.float32) / 255.0
  np.testing.assert_allclose(problem.pixel_mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(problem.pixel_std, x.std(0) + 1e-6, rtol=1e-6)
  consts = P.input_constants(problem, jax.devices()[1])
  assert consts.mean.devices() == {jax.devices()[1]}
  assert _problem(jax.devices()[:2]).pixel_mean is None
  _, result = S.train_sequential(problem, QUIET)
  assert result.test_accuracy > 0.9


def test_an_epoch_in_chunks_trains_exactly_as_the_whole_epoch():
  problem = P.make_problem(tiny_config(), tiny_dataset())
  whole, chunked = S.parallel_loop(problem, 0), S.parallel_loop(problem, 0)
  steps = whole.steps_per_epoch
  losses = [whole.dispatch(e) for e in range(2)]
  pieces = []
  for e in range(2):
    first = 0
    for count in (1, 2, steps - 3):
      pieces.append(chunked.dispatch_steps(e, first, count))
      first += count
  np.testing.assert_array_equal(np.concatenate(losses), np.concatenate(pieces))
  for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(chunked.state)):
    np.testing.assert_array_equal(a, b)


def test_a_stepwise_epoch_trains_as_the_scanned_epoch():
  scanned = S.parallel_loop(P.make_problem(tiny_config(), tiny_dataset()), 0)
  stepwise = S.parallel_loop(P.make_problem(tiny_config(**{"train.scan": False}),
                                            tiny_dataset()), 0)
  for e in range(2):
    np.testing.assert_allclose(scanned.dispatch(e), stepwise.dispatch(e), rtol=1e-5, atol=1e-6)
  half = stepwise.steps_per_epoch // 2
  np.testing.assert_allclose(
      np.concatenate([stepwise.dispatch_steps(2, 0, half),
                      stepwise.dispatch_steps(2, half, stepwise.steps_per_epoch - half)]),
      scanned.dispatch(2), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(scanned.state), jax.tree.leaves(stepwise.state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
def test_the_nearest_sil_row_reads_out_the_first_segment_alone():
  problem = _problem(jax.devices()[:2])
  runs = run_schedules(problem, QUIET, ("parallel",))
  assert [r.method for r in runs] == ["pnn-parallel", "pnn-parallel-nearest-sil",
                                      "pnn-parallel+recovery"]
  params, _ = S.train_parallel(problem, QUIET, track_accuracy=False)
  spec, table = problem.specs[0], problem.sil[problem.specs[0].output_cut]
  out = np.asarray(apply_segment(params[0], problem.test_x.astype(np.float32) / 255, spec))
  nearest = np.argmin(((out[:, None] - table[None]) ** 2).mean(-1), axis=1)
  reference = runs[1]
  assert reference.test_accuracy == np.mean(nearest == problem.test_y) > 0.25  # chance: 4 classes
  assert [s.name for s in reference.segments] == ["segment 0"] and reference.transfers == ()
  assert reference.curve[-1].accuracy == reference.test_accuracy
  # Drawn at the round its segment finished, not at the first round.
  rounds = len(reference.segments[0].loss_per_epoch)
  assert curves.accuracy_points(reference.to_dict()) == [(rounds, reference.test_accuracy)]
