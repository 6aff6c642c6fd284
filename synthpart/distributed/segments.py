"""One process's segments, trained through the schedules' own loops, so that a launch trains
exactly as `synthpart train` does: the parallel schedule's loops driven together, or the
sequential schedule's segments in order, each fed from the previous one's hand-off.

A failure stays in its segment: every segment's status is written whatever happens (parameters
first, the status last), and the other segments go on and are kept.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from synthpart.distributed.launchdir import (
  RunDir,
  Status,
  error_text,
  owner,
  save_array,
  save_params,
  status_record,
)
from synthpart.distributed.liveness import (
  Liveness,
  UpstreamMissing,
  wait_for_activations,
)
from synthpart.files import write_json_atomic
from synthpart.model import Params
from synthpart.placement import layout_groups
from synthpart.progress import Progress
from synthpart.records import LoopRecord, MethodRecord, Transfer
from synthpart.train import schedules as S
from synthpart.train.driver import drive
from synthpart.train.loop import Loop
from synthpart.train.problem import Problem
from synthpart.transfers import Ledger, device_name, hand_over


@dataclasses.dataclass
class Context:
  """What one process's training needs besides the problem."""
  run: RunDir
  process_id: int
  liveness: Liveness | None  # None: others are not running (--only-segment); never wait
  progress: Progress
  host: str = dataclasses.field(default_factory=socket.gethostname)

  def log(self, text: str) -> None:
    print(f"[process {self.process_id}] {text}", file=sys.stderr, flush=True)


def own_groups(devices: Sequence[jax.Device], sizes: Sequence[int],
               own: Sequence[int]) -> tuple[tuple[jax.Device, ...], ...]:
  """Every segment's device group for a process that trains only `own`: those laid out in
  order over its local devices, the others (never trained here) on its first device."""
  groups = [(devices[0],)] * len(sizes)
  for k, group in zip(own, layout_groups(devices, [sizes[k] for k in own])):
    groups[k] = group
  return tuple(groups)


def finish_segment(ctx: Context, problem: Problem, segment: int, params: Params,
                   result: LoopRecord, activation_bytes: int = 0, **extra: Any) -> Status:
  """Saves a trained segment's parameters, then its status (the status comes last)."""
  param_bytes = save_params(ctx.run.params(segment), jax.device_get(params))
  status = status_record(segment, ctx.process_id, "done", host=ctx.host, pid=os.getpid(),
                         devices=device_name(problem.device_of(segment)),
                         process_devices=[device_name(d) for d in problem.devices],
                         result=result.to_dict(),
                         bytes_sent={"activations": activation_bytes, "parameters": param_bytes},
                         **extra)
  write_json_atomic(ctx.run.status(segment), status)
  return status


def fail_segment(ctx: Context, segment: int, e: BaseException, status: str = "failed") -> Status:
  """Records why `segment` failed (or was skipped), in its status and this process's log."""
  if status == "failed":
    ctx.log(f"segment {segment} failed:\n{''.join(traceback.format_exception(e))}")
  else:
    ctx.log(f"segment {segment} {status}: {e}")
  record = status_record(segment, ctx.process_id, status, error_text(e), host=ctx.host,
                         pid=os.getpid())
  write_json_atomic(ctx.run.status(segment), record)
  return record


def train_parallel_segments(ctx: Context, problem: Problem,
                            own: Sequence[int]) -> dict[int, Status]:
  """The parallel schedule's loops of this process's segments, driven together as
  `train_parallel` drives them: nothing to wait for, nothing to send. A segment that raises
  (compiling or training) fails alone; the others go on and are kept."""
  outcomes: dict[int, Status] = {}
  loops: dict[int, Loop] = {}
  for k in own:
    try:
      loops[k] = S.parallel_loop(problem, k)
    except Exception as e:  # noqa: BLE001  (this segment fails alone)
      outcomes[k] = fail_segment(ctx, k, e)
  segment_of = {id(loop): k for k, loop in loops.items()}

  def on_error(loop: Loop, e: Exception) -> None:
    outcomes[segment_of[id(loop)]] = fail_segment(ctx, segment_of[id(loop)], e)

  drive(list(loops.values()), MethodRecord("pnn-parallel"),
        S.RunHooks(ctx.progress).of("pnn-parallel"), on_error=on_error)
  for k, loop in loops.items():
    if k in outcomes:
      continue
    try:
      outcomes[k] = finish_segment(ctx, problem, k, loop.state.params, loop.record())
    except Exception as e:  # noqa: BLE001  (this segment fails alone)
      outcomes[k] = fail_segment(ctx, k, e)
  return outcomes


def _input_of(ctx: Context, problem: Problem, k: int, features: dict[int, jax.Array],
              ledger: Ledger) -> tuple[Any, float]:
  """Segment k's training input and the seconds its hand-over took: the pixels for the first
  segment; the previous segment's output, in memory where it trained here, else read from the
  hand-off file its process writes (waiting for it, which does not count as hand-over time)."""
  spec = problem.specs[k]
  if spec.input_cut is None:
    return problem.train_x, 0.0
  what = f"cut {spec.input_cut} activations"
  if k - 1 in features:
    start = time.perf_counter()
    x = jax.block_until_ready(hand_over(features.pop(k - 1), problem.device_of(k), ledger,
                                        what))
    return x, time.perf_counter() - start
  path = wait_for_activations(ctx.run, spec.input_cut, k - 1, ctx.liveness)
  start = time.perf_counter()
  x = np.load(path, allow_pickle=False)
  seconds = time.perf_counter() - start
  ledger.add(Transfer(what, f"process {owner(k - 1, ctx.run.num_processes)}",
                      device_name(problem.device_of(k)), int(x.nbytes)))
  return x, seconds


def train_sequential_segments(ctx: Context, problem: Problem,
                              own: Sequence[int]) -> dict[int, Status]:
  """The sequential schedule for this process's segments, in order, each through
  `sequential_segment`.

  Every segment but the last writes its output to the hand-off file, so that the next segment's
  process, or a later rerun, can start from it. Hand-over time counts as training time, as in
  `train_sequential`.
  """
  outcomes: dict[int, Status] = {}
  features: dict[int, jax.Array] = {}
  for k in own:
    spec = problem.specs[k]
    # One result per segment: its loop, and the hand-over into it, go into its status.
    record, ledger = MethodRecord("pnn-sequential"), Ledger()
    try:
      x, handoff_seconds = _input_of(ctx, problem, k, features, ledger)
      params, out, record = S.sequential_segment(problem, spec, x, S.RunHooks(ctx.progress),
                                                 record, ledger=ledger)
      sent = 0
      if out is not None and spec.output_cut is not None:
        if k + 1 in own:
          features[k] = out
        host = np.asarray(jax.device_get(out))
        save_array(ctx.run.handoff(spec.output_cut), host)
        if owner(k + 1, ctx.run.num_processes) != ctx.process_id:
          sent = int(host.nbytes)
      outcomes[k] = finish_segment(ctx, problem, k, params, record.segments[-1],
                                   activation_bytes=sent,
                                   transfers=[t.to_dict() for t in ledger.transfers],
                                   handoff_seconds=handoff_seconds)
    except UpstreamMissing as e:
      outcomes[k] = fail_segment(ctx, k, e, status="skipped")
    except Exception as e:  # noqa: BLE001  (this segment fails alone)
      outcomes[k] = fail_segment(ctx, k, e)
  return outcomes


def run_segments(ctx: Context, problem: Problem, own: Sequence[int]) -> dict[int, Status]:
  """This process's segments `own`, trained by the schedule of the problem's settings."""
  trainers = {"parallel": train_parallel_segments, "sequential": train_sequential_segments}
  return trainers[problem.config.schedule](ctx, problem, own)
