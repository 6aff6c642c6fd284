"""Bars show training and never change it: what is compiled, run and recorded is the same with
bars and with --quiet."""

from __future__ import annotations

import json
import re

import jax
import numpy as np

from synthpart.progress import Bar, Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S

from commands import synthpart
from tiny import tiny_config, tiny_dataset

# Fields that are timings (they differ between any two runs); everything else must be equal.
TIMINGS = {"wall_seconds", "compile_seconds", "eval_seconds", "epoch_seconds", "seconds"}


class Watched(Progress):
  """Progress whose bars record how far they moved."""

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


def test_bars_move_by_epochs_and_where_the_driver_waits():
  config = tiny_config(**{"train.batch_size": 32, "train.epochs": 2, "eval.every_steps": 4})
  problem = P.make_problem(config, tiny_dataset(), jax.devices()[:1])  # 8 steps an epoch
  quiet_params, quiet = S.train_conventional(problem, Progress(quiet=True))
  watched = Watched(quiet=False)
  shown_params, shown = S.train_conventional(problem, watched)
  for a, b in zip(jax.tree.leaves(quiet_params), jax.tree.leaves(shown_params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert quiet.segments[0].loss_per_epoch == shown.segments[0].loss_per_epoch
  assert [p.accuracy for p in quiet.curve] == [p.accuracy for p in shown.curve]
  # The driver waits at the evaluation after step 4 and at each epoch's end.
  assert [f for _, f in watched.moves] == [0.5, 1.0, 1.0] * 2


def _without_timings(value):
  if isinstance(value, dict):
    return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
  if isinstance(value, list):
    return [_without_timings(v) for v in value]
  return value


def _compiled(stderr: str) -> list[str]:
  """The programs jax compiled (its compile log), in order."""
  return [m.group(1) for m in re.finditer(r"Compiling (\S+)", stderr)]


def test_quiet_and_bars_compile_run_and_record_the_same(tmp_path):
  flags = ["train", "--hidden", "16,16", "--cuts", "1", "--epochs", "1", "--schedule",
           "pipelined", "--set", "pipeline.refresh_steps=7", "--set", "train.batch_size=50",
           "--set", "eval.every_steps=5", "--recovery-epochs", "0"]
  env = {"JAX_LOG_COMPILES": "1", "JAX_PLATFORMS": "cpu"}
  quiet = synthpart(*flags, "-q", "--out", str(tmp_path / "quiet"), env=env)
  shown = synthpart(*flags, "--out", str(tmp_path / "shown"), env=env)
  assert quiet.returncode == 0, quiet.stderr[-2000:]
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "it/s" in shown.stderr or "epoch" in shown.stderr  # bars were drawn
  assert _compiled(quiet.stderr) and _compiled(quiet.stderr) == _compiled(shown.stderr)
  documents = [json.loads((tmp_path / name / "results.json").read_text())
               for name in ("quiet", "shown")]
  for document in documents:
    del document["versions"]
  assert _without_timings(documents[0]) == _without_timings(documents[1])
