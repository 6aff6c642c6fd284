"""Bars move within long epochs: the epoch runs in chunks, with the same bits as whole."""

from __future__ import annotations

import jax
import numpy as np

from synthpart.progress import Bar, Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.stops import MIN_CHUNK_STEPS, epoch_chunks

from tiny import tiny_config, tiny_dataset


class Watched(Progress):
  """Progress whose bars record how far they moved, and when."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.moves: list[tuple[str, float]] = []

  def bar(self, label, total, position=0, done=0):
    moves = self.moves

    class Recording(Bar):
      def advance(self, fraction):
        moves.append((label, fraction))
        super().advance(fraction)

      def update(self, **metrics):
        moves.append((label, 1.0))
        super().update(**metrics)

    return Recording(label, total, position, done, None, True)


def test_chunk_sizes():
  assert epoch_chunks(MIN_CHUNK_STEPS * 2 - 1) == (MIN_CHUNK_STEPS * 2 - 1,)
  assert epoch_chunks(MIN_CHUNK_STEPS * 2) == (MIN_CHUNK_STEPS, MIN_CHUNK_STEPS)
  assert epoch_chunks(468) == (59,) * 4 + (58,) * 4  # Fashion-MNIST at batch 128
  assert all(sum(epoch_chunks(n)) == n for n in range(1, 2000, 37))


def test_chunked_epochs_train_bit_for_bit_and_move_the_bar():
  config = tiny_config(**{"train.batch_size": 2, "train.epochs": 2})  # 128 steps an epoch
  problem = P.make_problem(config, tiny_dataset(), jax.devices()[:1])
  whole, quiet = S.train_conventional(problem, Progress(quiet=True))
  watched = Watched(quiet=False)
  chunked, shown = S.train_conventional(problem, watched)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
    np.testing.assert_array_equal(a, b)
  assert quiet.segments[0].loss_per_epoch == shown.segments[0].loss_per_epoch
  fractions = [f for _, f in watched.moves]
  assert fractions == [0.5, 1.0, 1.0] * 2  # two chunks, then the epoch's end, per epoch
  assert shown.compile_seconds > quiet.compile_seconds  # the chunks compiled before training
