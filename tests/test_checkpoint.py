"""Checkpoints: round trip, and damaged files give one-line errors, never silent garbage."""

import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthpart import checkpoint, rundir
from synthpart import config as config_lib
from synthpart.errors import CheckpointError
from synthpart.train.epoch import TrainState


def _state() -> TrainState:
  params = [{"kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
             "bias": np.linspace(0, 1, 4, dtype=np.float32)}]
  return TrainState(params, optax.adam(1e-3).init(params))


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip_onto_a_chosen_device(tmp_path):
  policy = checkpoint.Policy(tmp_path, every=1, keep=2)
  state = _state()
  for epoch in (1, 2, 3):
    checkpoint.save(policy, "m", "segment 0", epoch, state, {"epoch": epoch, "note": "x"})
  assert checkpoint.latest(policy, "m", "segment 0") == 3
  assert sorted(p.name for p in policy.loop_dir("m", "segment 0").iterdir()) == ["2", "3"]
  device = jax.devices()[1]
  restored, meta = checkpoint.restore(policy, "m", "segment 0", state, device)
  assert _equal(restored, state) and meta["note"] == "x" and meta["epoch"] == 3
  assert all(leaf.devices() == {device} for leaf in jax.tree.leaves(restored))
  assert checkpoint.restore(policy, "m", "segment 1", state, device) is None


def test_a_different_run_dir_is_refused_and_nothing_written(tmp_path):
  root = tmp_path / "run"
  rundir.prepare_run_dir(root, {"seed": 0, "model": {"cuts": [3]}}, resume=False,
                             overwrite=False)
  with pytest.raises(CheckpointError, match="holds another run"):
    rundir.prepare_run_dir(root, {"seed": 0}, resume=False, overwrite=False)
  with pytest.raises(CheckpointError, match="model.cuts, seed"):
    rundir.prepare_run_dir(root, {"seed": 1, "model": {"cuts": [2]}}, resume=True,
                               overwrite=False)
  with pytest.raises(CheckpointError, match="no run to resume"):
    rundir.prepare_run_dir(tmp_path / "empty", {}, resume=True, overwrite=False)
  assert not (tmp_path / "empty").exists()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_checkpoint_restores_exactly_or_fails_in_one_line(tmp_path, data):
  root = Path(tempfile.mkdtemp(dir=tmp_path))
  policy = checkpoint.Policy(root)
  state = _state()
  checkpoint.save(policy, "m", "loop", 1, state, {"epoch": 1})
  files = sorted(p for p in (policy.loop_dir("m", "loop") / "1").rglob("*")
                 if p.is_file() and p.stat().st_size > 0)
  # Positions are drawn as fractions: file names and sizes differ from save to save.
  victim: Path = files[data.draw(st.integers(0, 10**6)) % len(files)]
  raw = bytearray(victim.read_bytes())
  position = data.draw(st.integers(0, 10**9)) % len(raw)
  if data.draw(st.booleans()):
    raw = raw[:position]  # truncated
  else:
    raw[position] ^= data.draw(st.integers(1, 255))  # a flipped byte
  victim.write_bytes(bytes(raw))
  try:
    restored = checkpoint.restore(policy, "m", "loop", state, jax.devices()[0])
  except CheckpointError as e:
    assert "\n" not in str(e) and str(policy.loop_dir("m", "loop")) in str(e)
  else:
    # Damage the format does not depend on (metadata padding, say) may leave it readable:
    # then it must be the very state that was saved.
    assert restored is None or _equal(restored[0], state)


def test_settings_added_since_a_run_count_at_their_defaults(tmp_path):
  current = config_lib.Config().to_dict()
  older = json.loads(json.dumps(current))
  del older["pipeline"], older["seeds"]["order"]  # a run directory from before these existed
  assert rundir.config_differences(older, current) == []
  changed = {**current, "pipeline": {**current["pipeline"], "refresh_steps": 7}}
  assert rundir.config_differences(older, changed) == ["pipeline.refresh_steps"]
  root = tmp_path / "run"
  root.mkdir()
  (root / "config.json").write_text(json.dumps(older))
  rundir.prepare_run_dir(root, current, resume=True, overwrite=False)  # no refusal


def test_a_checkpoint_of_another_run_is_refused_and_an_older_one_restores(tmp_path):
  mine = checkpoint.Policy(tmp_path, run="a" * 64)
  theirs = checkpoint.Policy(tmp_path, run="b" * 64)
  state = _state()
  checkpoint.save(theirs, "m", "segment 0", 1, state, {"epoch": 1})  # copied in from "b"
  with pytest.raises(CheckpointError, match=r"checkpoint .*segment-0/1 was written by another "
                     r"run \(other settings or data\); --overwrite to start again"):
    checkpoint.restore(mine, "m", "segment 0", state, jax.devices()[0])
  restored, meta = checkpoint.restore(theirs, "m", "segment 0", state, jax.devices()[0])
  assert meta["run"] == "b" * 64 and _equal(restored, state)
  checkpoint.save(checkpoint.Policy(tmp_path), "m", "segment 1", 1, state, {"epoch": 1})
  _, meta = checkpoint.restore(mine, "m", "segment 1", state, jax.devices()[0])  # no "run"
  assert "run" not in meta


def test_the_run_fingerprint_is_the_same_from_config_json_and_results_json():
  config = config_lib.load(overrides={"train.epochs": 1})
  stored = json.loads(json.dumps(config.to_dict()))  # as either file holds it
  again = config_lib.from_dict(stored).to_dict()
  fingerprint = checkpoint.run_fingerprint(config.to_dict(), "d" * 64)
  assert checkpoint.run_fingerprint(stored, "d" * 64) == fingerprint
  assert checkpoint.run_fingerprint(again, "d" * 64) == fingerprint
  other = config_lib.load(overrides={"train.epochs": 2}).to_dict()
  assert checkpoint.run_fingerprint(other, "d" * 64) != fingerprint
  assert checkpoint.run_fingerprint(stored, "e" * 64) != fingerprint
  assert checkpoint.run_fingerprint(stored, None) != fingerprint
