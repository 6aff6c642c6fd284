"""The typed immutable records: results.json round trips, the keys that apply, status."""

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synthpart.records import (
  EVALUATION,
  TRAINING,
  CurvePoint,
  LoopRecord,
  MethodRecord,
  Tally,
  Transfer,
  divergence_reason,
  summarize,
)

counts = st.integers(min_value=0, max_value=2**40)
reals = st.floats(allow_nan=False, allow_infinity=False, width=64)
points = st.builds(
    CurvePoint, epoch=st.integers(1, 10_000), seconds=reals,
    examples=st.lists(counts, max_size=4).map(tuple),
    accuracy=st.none() | st.floats(0.0, 1.0),
    steps=st.none() | st.lists(counts, max_size=4).map(tuple), partial=st.booleans(),
    round=st.none() | st.integers(0, 10_000))
transfers = st.builds(Transfer, what=st.text(max_size=20), source=st.text(max_size=10),
                      destination=st.text(max_size=10), bytes=counts,
                      kind=st.sampled_from([TRAINING, EVALUATION]))


def loop_record(**changes) -> LoopRecord:
  values = dict(name="segment 0", layers=(0, 2), objective="inputs -> sil", device="cpu:0",
                optimizer="adam", learning_rate=0.01, batch_size=64, epochs=3, steps_per_epoch=4,
                loss_per_epoch=(1.5, 1.25), epoch_seconds=(0.5, 0.25), compile_seconds=2.0,
                memory={"peak": 1024, "data": 64}, flops_per_step=1000, forward_flops=10)
  return LoopRecord(**{**values, **changes})


@given(points)
def test_any_curve_point_survives_json(point):
  assert CurvePoint.from_dict(json.loads(json.dumps(point.to_dict()))) == point


@given(st.lists(points, max_size=3), reals, st.integers(0, 100), reals, reals,
       st.lists(transfers, max_size=3))
def test_any_tally_survives_its_meta_as_json(curve, wall, evaluations, eval_seconds, flops,
                                             moved):
  tally = Tally(tuple(curve), wall, evaluations, eval_seconds, flops, tuple(moved))
  assert Tally.from_meta(json.loads(json.dumps(tally.to_meta()))) == tally


def test_a_point_keeps_only_the_keys_that_apply():
  assert CurvePoint(epoch=2, seconds=1.5, examples=(64, 128)).to_dict() == {
      "epoch": 2, "seconds": 1.5, "examples": [64, 128]}
  full = CurvePoint(epoch=2, seconds=1.5, examples=(64,), accuracy=0.5, steps=(1,), partial=True,
                    round=1)
  assert list(full.to_dict()) == ["epoch", "round", "partial", "seconds", "examples", "steps",
                                  "accuracy"]
  # A zero accuracy and a round 0 apply: only None leaves a key out.
  zero = CurvePoint(epoch=1, seconds=0.0, examples=(), accuracy=0.0, round=0).to_dict()
  assert zero["accuracy"] == 0.0 and zero["round"] == 0


def test_a_loop_record_round_trips_and_counts_its_steps():
  record = loop_record()
  assert LoopRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
  assert record.steps == 8 and record.examples == 512
  assert loop_record(max_steps=6).steps == 6
  # Null losses come back as NaN; keys of other versions are ignored, missing ones default.
  d = {**record.to_dict(), "loss_per_epoch": [1.0, None], "unknown": 1}
  del d["backend"], d["max_steps"]
  back = LoopRecord.from_dict(d)
  assert math.isnan(back.loss_per_epoch[1]) and back.backend == "sharding"
  assert back.max_steps == 0


def test_a_method_record_round_trips_with_its_status():
  record = MethodRecord("pnn-parallel", test_accuracy=0.75, wall_seconds=3.0,
                        compile_seconds=4.0, evaluations=2, eval_seconds=0.5, eval_flops=8.0,
                        segments=(loop_record(), loop_record(name="segment 1", layers=(2, 3))),
                        curve=(CurvePoint(epoch=1, seconds=1.0, examples=(256, 256),
                                          accuracy=0.5),),
                        transfers=(Transfer("parameters", "cpu:1", "cpu:0", 100, EVALUATION),))
  d = json.loads(json.dumps(record.to_dict()))
  assert d["status"] == "ok" and d["test_accuracy"] == 0.75
  assert MethodRecord.from_dict(d) == record
  assert record.status == "ok" and not record.diverged
  assert divergence_reason(record) == "no loop diverged"


def test_a_diverged_method_has_no_accuracy_and_says_which_loop():
  bad = loop_record(name="segment 1", diverged=True, divergence="loss nan at epoch 2")
  record = MethodRecord("m", test_accuracy=0.5, segments=(loop_record(), bad))
  assert record.diverged and record.status == "diverged"
  d = record.to_dict()
  assert d["status"] == "diverged" and math.isnan(d["test_accuracy"])
  assert divergence_reason(record) == "segment 1: loss nan at epoch 2"
  unexplained = MethodRecord("m", segments=(loop_record(diverged=True),))
  assert divergence_reason(unexplained) == "segment 0: diverged"


def test_a_method_reads_an_older_entry_without_evaluation_costs():
  d = MethodRecord("m", test_accuracy=0.5).to_dict()
  for key in ("evaluations", "eval_seconds", "eval_flops", "transfers"):
    del d[key]
  assert MethodRecord.from_dict(d) == MethodRecord("m", test_accuracy=0.5)
  d["test_accuracy"] = None
  assert math.isnan(MethodRecord.from_dict(d).test_accuracy)


def test_records_are_frozen():
  point = CurvePoint(epoch=1, seconds=0.0, examples=(1,))
  for record, field in ((point, "accuracy"), (loop_record(), "loss_per_epoch"),
                        (MethodRecord("m"), "curve"), (Tally(), "wall_seconds"),
                        (Transfer("x", "a", "b", 1), "bytes")):
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(record, field, None)


def test_tally_and_with_tally_round_trip():
  record = MethodRecord("m", test_accuracy=0.5, compile_seconds=2.0, segments=(loop_record(),))
  tally = Tally(curve=(CurvePoint(epoch=1, seconds=1.0, examples=(256,)),), wall_seconds=1.0,
                evaluations=1, eval_seconds=0.1, eval_flops=5.0,
                transfers=(Transfer("x", "cpu:0", "cpu:1", 8),))
  updated = record.with_tally(tally)
  assert updated.tally() == tally
  assert updated.segments == record.segments and updated.test_accuracy == 0.5
  assert record.tally() == Tally()  # the original is unchanged


def test_summarize_folds_transfers_by_route_and_kind():
  moved = [Transfer("cut 2", "cpu:0", "cpu:1", 10), Transfer("params", "cpu:1", "cpu:0", 5,
                                                             EVALUATION),
           Transfer("cut 2", "cpu:0", "cpu:1", 20), Transfer("cut 2", "cpu:0", "cpu:1", 1,
                                                             EVALUATION)]
  assert summarize(moved) == [Transfer("cut 2 (2 transfers)", "cpu:0", "cpu:1", 30),
                              Transfer("params", "cpu:1", "cpu:0", 5, EVALUATION),
                              Transfer("cut 2", "cpu:0", "cpu:1", 1, EVALUATION)]
  assert summarize(moved[:1], "refresh")[0].what == "cut 2 (refresh)"
  assert summarize(moved[:3:2], "refresh")[0].what == "cut 2 (refresh, 2 transfers)"
  assert summarize([]) == []
