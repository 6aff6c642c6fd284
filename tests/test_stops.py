"""Where a round pauses: the plan of chunks, evaluation stops and refresh spans."""

from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart.train.stops import EvalSchedule, round_plan


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3), st.integers(0, 12),
       st.integers(0, 9), st.booleans(), st.integers(0, 3))
def test_a_round_plan_covers_every_step_once(per_epoch, chunk_steps, every, log_spaced, epoch):
  loops = dict(enumerate(per_epoch))
  schedule = EvalSchedule(every, log_spaced)
  plan = round_plan(loops, loops, dict.fromkeys(loops, epoch), schedule, chunk_steps)
  stops = len(plan.evaluated)
  assert not plan.evaluated[-1]  # the round's end is evaluated by the driver, not inside
  for i, steps in loops.items():
    chunks = plan.chunks[i]
    assert len(chunks) == stops
    assert [first for first, _ in chunks] == [sum(c for _, c in chunks[:k]) for k in range(stops)]
    assert sum(c for _, c in chunks) == steps
  # Refresh spans open at the round's start and every chunk_steps steps of the longest loop,
  # and each covers the chunks up to the next one.
  assert plan.spans[0] is not None
  opened = [k for k, span in enumerate(plan.spans) if span is not None]
  for a, b in zip(opened, [*opened[1:], stops]):
    for i in loops:
      first, count = plan.spans[a][i]
      assert first == plan.chunks[i][a][0]
      assert count == sum(c for _, c in plan.chunks[i][a:b])
  longest = max(per_epoch)
  want = -(-longest // chunk_steps) if chunk_steps else 1
  assert len(opened) == want
