"""The `synthpart launch` command: its flags, their checks, and which of the three ways to run
(one process of a launch, a rerun of chosen segments alone, or --local processes) they ask for."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Protocol

from synthpart.distributed.coordinator import COORDINATOR_TIMEOUT
from synthpart.distributed.launcher import launch_local
from synthpart.distributed.liveness import HEARTBEAT_TIMEOUT
from synthpart.distributed.process import (
  ENV_COORDINATOR,
  ENV_NUM_PROCESSES,
  ENV_PROCESS_ID,
  resolve_identity,
  run_only,
  run_process,
)
from synthpart.errors import ConfigError
from synthpart.prepare import add_run_arguments, load_config
from synthpart.schedule import SCHEDULES


class SubParsers(Protocol):
  """What `ArgumentParser.add_subparsers` returns, as far as a command needs it."""

  def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def add_launch_command(sub: SubParsers) -> None:
  """Registers `synthpart launch` on the CLI's subparsers."""
  p = sub.add_parser("launch", help="train one configuration in several processes (one per "
                     "segment group, through jax.distributed), e.g. under Slurm or on a TPU slice")
  add_run_arguments(p)
  g = p.add_argument_group("processes")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help=f"process 0's address and a free port (or ${ENV_COORDINATOR})")
  g.add_argument("--num-processes", type=int, metavar="N",
                 help=f"number of processes (or ${ENV_NUM_PROCESSES}); segment k trains in "
                      "process k mod N")
  g.add_argument("--process-id", type=int, metavar="I",
                 help=f"this process's number, 0..N-1 (or ${ENV_PROCESS_ID})")
  g.add_argument("--local", type=int, metavar="N",
                 help="start N processes on this machine and wait for them (testing, one host)")
  g.add_argument("--only-segment", metavar="K[,K...]",
                 help="train only these segments, alone and without a coordinator, into the run "
                      "directory of an earlier launch (to rerun a failed one); the network is "
                      "assembled once every segment is done")
  g.add_argument("--heartbeat-timeout", type=float, default=HEARTBEAT_TIMEOUT, metavar="S",
                 help="seconds without a heartbeat after which a process counts as dead "
                      f"(default {HEARTBEAT_TIMEOUT:g})")
  g.add_argument("--coordinator-timeout", type=float, default=COORDINATOR_TIMEOUT, metavar="S",
                 help="seconds a process waits for the coordinator (process 0) to answer when it "
                      f"starts, before it gives up (default {COORDINATOR_TIMEOUT:g})")
  p.set_defaults(func=run_launch)


def parse_segments(text: str | None, num_segments: int) -> tuple[int, ...]:
  """The segments `--only-segment` lists, sorted (empty without the flag)."""
  if text is None:
    return ()
  try:
    segments = tuple(sorted({int(v) for v in text.replace(" ", "").split(",") if v}))
  except ValueError:
    raise ConfigError(f"--only-segment must list segment numbers, e.g. 1 or 1,2; got {text!r}") \
        from None
  if not segments or any(k < 0 or k >= num_segments for k in segments):
    raise ConfigError(f"--only-segment {text} is outside segments 0..{num_segments - 1}")
  return segments


def check_timeout(flag: str, seconds: float) -> None:
  """A timeout is a positive, finite number of seconds (nan and inf are refused)."""
  if not math.isfinite(seconds) or seconds <= 0:
    raise ConfigError(f"{flag} must be a positive, finite number of seconds, got {seconds}")


def run_launch(args: argparse.Namespace) -> int:
  """`synthpart launch`: returns the exit code."""
  config = load_config(args)
  if not SCHEDULES[config.schedule].launchable:
    runs = " and ".join(s.name for s in SCHEDULES.values() if s.launchable)
    raise ConfigError(f"launch runs the {runs} schedules; the {config.schedule} one "
                      "refreshes activations every few steps: run it in one process (train)")
  if getattr(args, "resume", False):
    raise ConfigError("launch does not --resume: rerun its failed segments with --only-segment K")
  check_timeout("--heartbeat-timeout", args.heartbeat_timeout)
  check_timeout("--coordinator-timeout", args.coordinator_timeout)
  if config.model.num_segments < 2:
    raise ConfigError("launch trains segments: give at least one cut (model.cuts)")
  if args.local is not None:
    if args.only_segment is not None:
      raise ConfigError("--only-segment runs one process alone: leave out --local")
    return launch_local(args, config)
  identity = resolve_identity(args)
  if not args.out:
    raise ConfigError("launch needs --out DIR, on storage every process sees")
  out = Path(args.out)
  only = parse_segments(args.only_segment, config.model.num_segments)
  if only:
    return run_only(args, config, out, identity, only)
  return run_process(args, config, out, identity)
