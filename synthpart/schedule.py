"""The schedules a run may train its segments by: one registry, read by everything that names one.

A `Schedule` says what a schedule is and what it needs; `synthpart.train.schedules.TRAINERS`
holds the function that trains each one, keyed by these names. Config validation (`schedule`,
and which backends a schedule can run on), `compare` (every schedule, in this order), `train`,
`launch` (the schedules it can split over processes), sweeps and `--help` all read `SCHEDULES`.

    SCHEDULES["pipelined"].runs_in_chunks   # True: its rounds run in spans of steps
"""

from __future__ import annotations

import dataclasses

from synthpart.registry import Registry


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One schedule: its name (the `schedule` setting), the method it trains (results.json's
  "method"), whether its rounds run in chunks of steps (then the pmap backend, whose epochs run
  whole, cannot train its loops over device groups), and whether `synthpart launch` can split
  its segments over processes."""
  name: str
  method: str
  runs_in_chunks: bool
  launchable: bool


SCHEDULES: Registry[Schedule] = Registry("schedule")
for _schedule, _doc in (
    (Schedule("sequential", "pnn-sequential", runs_in_chunks=False, launchable=True),
     "the paper's: segment k trains on the trained segment k-1's outputs, handed over once"),
    (Schedule("parallel", "pnn-parallel", runs_in_chunks=False, launchable=True),
     "every segment at once from the SIL tables alone"),
    (Schedule("pipelined", "pnn-pipelined", runs_in_chunks=True, launchable=False),
     "every segment at once, segment k on the current outputs of segments 0..k-1, refreshed "
     "every pipeline.refresh_steps steps")):
  SCHEDULES.add(_schedule.name, _schedule, _doc)

# The methods a run can produce, in the order summaries list them: conventional training, each
# schedule with and without recovery epochs, model-parallel backprop (compiled, and its
# step-by-step benchmark reference) and the parallel schedule's nearest-SIL reference.
METHODS: tuple[str, ...] = (
    "conventional", "pnn-sequential", "pnn-parallel", "pnn-sequential+recovery",
    "pnn-parallel+recovery", "model-parallel", "pnn-parallel-nearest-sil", "pnn-pipelined",
    "pnn-pipelined+recovery", "model-parallel-stepwise")
assert all(s.method in METHODS and f"{s.method}+recovery" in METHODS for s in SCHEDULES.values())
