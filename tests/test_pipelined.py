"""The pipelined schedule: concurrent segments on the current activations of the earlier ones."""

import functools

import jax
import numpy as np
import pytest

from synthpart import checkpoint, curves
from synthpart import config as config_lib
from synthpart.cli import main
from synthpart.errors import ConfigError
from synthpart.model import apply_segment
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import refresh
from synthpart.train import schedules as S
from synthpart.train.epoch import epoch_order
from synthpart.transfers import hand_over

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)


def _problem(devices, **overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), devices)


def _same_params(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                   strict=True))


@pytest.mark.parametrize("epochs", [{}, {"segments.0.epochs": 2, "segments.1.epochs": 4}])
def test_started_after_each_segment_has_finished_it_is_the_sequential_schedule(epochs):
  # 3 steps a chunk do not divide the 8 steps of an epoch: chunks of 3, 3 and 2.
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2], "pipeline.delay_epochs": 99,
                                           "pipeline.refresh_steps": 3, **epochs})
  seq_params, seq = S.train_sequential(problem, QUIET, track_accuracy=False)
  pip_params, pip = S.train_pipelined(problem, QUIET, track_accuracy=False)
  assert _same_params(seq_params, pip_params)
  assert [s.loss_per_epoch for s in seq.segments] == [s.loss_per_epoch for s in pip.segments]
  assert pip.test_accuracy == seq.test_accuracy
  assert pip.transfers == seq.transfers  # each cut's activations over the training set, once
  epochs = [problem.config.segment_train(k).epochs for k in range(3)]
  assert S.start_rounds(epochs, 99) == [0, epochs[0], epochs[0] + epochs[1]]


def test_only_activations_cross_and_only_forward(monkeypatch):
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2], "pipeline.refresh_steps": 3,
                                           "pipeline.delay_epochs": 0})
  moved = []

  def recorded(tree, device, ledger, what, kind="training"):
    (leaf,) = jax.tree.leaves(tree)  # one array of activations, never a pytree of parameters
    moved.append((next(iter(leaf.devices())).id, device.id, leaf.shape, what))
    with jax.transfer_guard_device_to_device("allow"):
      return hand_over(tree, device, ledger, what, kind)

  monkeypatch.setattr(refresh, "hand_over", recorded)
  # Every other copy between devices is an error, and so is any implicit transfer.
  with jax.transfer_guard("disallow"), jax.transfer_guard_device_to_device("disallow_explicit"):
    _, result = S.train_pipelined(problem, QUIET, track_accuracy=False)
  train, widths = problem.config.train, problem.widths
  steps = len(problem.train_y) // train.batch_size
  assert {(src, dst) for src, dst, _, _ in moved} == {(0, 1), (1, 2)}  # forward only
  assert {(shape, what) for _, _, shape, what in moved} == {
      ((3 * train.batch_size, widths[1]), "cut 1 activations"),
      ((2 * train.batch_size, widths[1]), "cut 1 activations"),
      ((3 * train.batch_size, widths[2]), "cut 2 activations"),
      ((2 * train.batch_size, widths[2]), "cut 2 activations")}
  # Every row each later segment reads, every epoch: cut 1 for segment 1 and, on its way to
  # segment 2, for segment 2's rows too; cut 2 for segment 2.
  rows = train.epochs * steps * train.batch_size
  assert curves.ledger_bytes(result.transfers) == rows * (2 * widths[1] + widths[2]) * 4
  assert [t.what for t in result.transfers] == [
      f"cut 1 activations ({2 * train.epochs * 3} transfers)",
      f"cut 2 activations ({train.epochs * 3} transfers)"]


def test_it_learns_the_tiny_task():
  # The later segment learns from the earlier one's outputs as they form: slower at first.
  problem = _problem(jax.devices()[:2], **{"train.epochs": 10, "pipeline.refresh_steps": 2,
                                           "pipeline.delay_epochs": 0})
  _, pip = S.train_pipelined(problem, QUIET)
  assert pip.test_accuracy > 0.9
  assert [p.epoch for p in pip.curve] == list(range(1, 11))
  assert all(s.loss_per_epoch[-1] < s.loss_per_epoch[0] for s in pip.segments)


def test_a_delay_starts_later_segments_later():
  problem = _problem(jax.devices()[:2])  # by default one epoch later
  _, result = S.train_pipelined(problem, QUIET)
  first, second = result.segments
  assert len(first.loss_per_epoch) == len(second.loss_per_epoch) == 3
  assert [p.examples for p in result.curve] == [(256, 0), (512, 256), (768, 512), (768, 768)]


def test_settings_are_checked():
  with pytest.raises(ConfigError, match="pipeline.refresh_steps"):
    config_lib.load(overrides={"pipeline.refresh_steps": 0})
  with pytest.raises(ConfigError, match="pipeline.delay_epochs"):
    config_lib.load(overrides={"pipeline.delay_epochs": -1})
  assert config_lib.load(overrides={"schedule": "pipelined"}).schedule == "pipelined"


def test_a_multi_process_launch_refuses_it(capsys):
  assert main(["launch", "--schedule", "pipelined", "--local", "2", "-q"]) == 2
  assert "pipelined" in capsys.readouterr().err


def test_segment_groups_match_one_device_each_and_get_a_copy_per_device():
  one, _ = S.train_pipelined(_problem(jax.devices()[:2], **{"pipeline.delay_epochs": 0}), QUIET,
                             track_accuracy=False)
  problem = _problem(jax.devices(), **{"placement.groups": [2, 2], "pipeline.delay_epochs": 0})
  many, result = S.train_pipelined(problem, QUIET, track_accuracy=False)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # up to the order of the sums
  rows = problem.config.train.epochs * len(problem.train_y)  # 8 steps x 32 = every example
  assert [(t.source, t.destination, t.bytes) for t in result.transfers] == [
      ("cpu:0,cpu:1", "cpu:2,cpu:3", 2 * rows * problem.widths[2] * 4)]


@pytest.mark.parametrize("delay", [0, 1])
def test_each_chunk_reads_the_current_outputs_of_the_segments_before_it(monkeypatch, delay):
  problem = _problem(jax.devices()[:3], **{"model.cuts": [1, 2], "pipeline.refresh_steps": 3,
                                           "pipeline.delay_epochs": delay})
  real = refresh.Feeds.before_span
  checked = []

  def checking(feeds, chunks):
    real(feeds, chunks)
    params = [jax.device_get(loop.state.params) for loop in feeds.loops]
    for c in chunks:
      if c.loop == 0:
        continue
      loop = feeds.loops[c.loop]
      order = epoch_order(jax.device_get(loop.key), np.uint32(c.epoch), len(problem.train_y),
                          loop.batch_size)  # drawn here, apart from the schedule's
      rows = np.asarray(refresh.chunk_rows(order, np.int32(c.first), c.count))
      x = problem.train_x[rows].astype(np.float32) / 255
      for spec in problem.specs[:c.loop]:  # the earlier segments as they are now
        x = apply_segment(params[spec.index], x, spec)
      np.testing.assert_allclose(jax.device_get(loop.data["x"])[rows], x, rtol=1e-5, atol=1e-6)
      checked.append(c)

  monkeypatch.setattr(refresh.Feeds, "before_span", checking)
  S.train_pipelined(problem, QUIET, track_accuracy=False)
  steps = len(problem.train_y) // problem.config.train.batch_size
  # Segments 1 and 2 train every epoch in chunks of 3 steps.
  assert len(checked) == 2 * problem.config.train.epochs * -(-steps // 3)


def test_evaluations_and_moving_bars_inside_epochs_change_no_result():
  # Evaluation stops after steps 2, 4, 6 split the refresh spans of 3 steps; the refreshes
  # still come every 3 steps, so the training is the same, bit for bit, with bars shown.
  overrides = {"model.cuts": [1, 2], "pipeline.refresh_steps": 3, "pipeline.delay_epochs": 0}
  plain_params, plain = S.train_pipelined(_problem(jax.devices()[:3], **overrides), QUIET)
  problem = _problem(jax.devices()[:3], **overrides, **{"eval.every_steps": 2})
  params, result = S.train_pipelined(problem, Progress(quiet=False))
  assert _same_params(plain_params, params)
  assert [s.loss_per_epoch for s in plain.segments] == [s.loss_per_epoch for s in result.segments]
  assert any(p.partial for p in result.curve)


class _Killed(Exception):
  pass


def test_a_finished_segment_does_not_hold_a_resume_back(tmp_path, monkeypatch):
  # Segment 1 trains in round 1 only and is then done; the run stops after segment 0 saved its
  # 4th epoch and before segment 2 saved its 2nd. Resuming takes segment 0 back one epoch, to
  # its 3rd (its last two checkpoints hold it), not back to where the finished segment 1 stands.
  overrides = {"model.cuts": [1, 2], "pipeline.refresh_steps": 4, "segments.0.epochs": 5,
               "segments.1.epochs": 1, "segments.2.epochs": 4}
  problem = _problem(jax.devices()[:3], **overrides)
  want_params, want = S.train_pipelined(problem, QUIET, checkpoints=checkpoint.Policy(
      tmp_path / "whole"))
  policy = checkpoint.Policy(tmp_path / "run")
  real = checkpoint.crash_point

  def dying(name, directory=None):
    if name == "checkpoint-saved:pnn-pipelined/segment 0:4":
      raise _Killed(name)
    real(name, directory)

  monkeypatch.setattr(checkpoint, "crash_point", dying)
  with pytest.raises(_Killed):
    S.train_pipelined(problem, QUIET, checkpoints=policy)
  monkeypatch.setattr(checkpoint, "crash_point", real)
  restored = []
  monkeypatch.setattr(checkpoint, "restore", functools.partial(_recording, checkpoint.restore,
                                                               restored))
  params, got = S.train_pipelined(problem, QUIET, checkpoints=policy)
  assert ("segment 0", 3) in restored  # taken back one round, not to the start
  assert _same_params(want_params, params)
  assert [s.loss_per_epoch for s in got.segments] == [s.loss_per_epoch for s in want.segments]
  assert got.test_accuracy == want.test_accuracy


def _recording(restore, log, policy, method, loop, like, device, at_most=None, **kwargs):
  out = restore(policy, method, loop, like, device, at_most, **kwargs)
  if out is not None:
    log.append((loop, out[1]["epoch"]))
  return out


def test_a_step_budget_shortens_the_delay(tmp_path):
  # Segment 0's budget of 16 steps is 2 epochs of 8, though train.epochs says 3: segment 1
  # starts after those 2 (the delay of 3 is capped there) and trains every epoch of its own.
  problem = _problem(jax.devices()[:2], **{"segments.0.steps": 16, "pipeline.delay_epochs": 3})
  _, result = S.train_pipelined(problem, QUIET)
  first, second = result.segments
  assert len(first.loss_per_epoch) == 2
  assert len(second.loss_per_epoch) == second.epochs == problem.config.segment_train(1).epochs
