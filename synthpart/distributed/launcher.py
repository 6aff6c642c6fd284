"""`launch --local N`: N processes of a launch on this machine, watched until they end.

A process that dies gets its unfinished segments marked failed at once, so that the others stop
waiting for them. The order of deaths tells a lost coordinator apart: process 0 hosts jax's
coordination service, which aborts every process still connected when it dies (SIGABRT), so
when process 0 fails first, the report names its death as the cause of theirs. At the end the
launcher reports every failed segment with its rerun command, and writes failures.json.

The launcher holds the run directory's lock from before it writes anything until its processes
have ended, so a second launch into the directory is refused meanwhile, in one line. SIGTERM,
SIGHUP and SIGINT stop the launch: the launcher sends SIGTERM to its processes, SIGKILL to any
still alive after `GRACE_SECONDS`, waits for every one, records their segments as stopped (in
their statuses and failures.json; the segments done are kept) and exits with 128 + the signal's
number, saying so in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from synthpart.config import Config
from synthpart.distributed.coordinator import COORDINATOR_TIMEOUT
from synthpart.distributed.launchdir import (
  ENV_LAUNCHER,
  RunDir,
  Status,
  check_fresh,
  owner,
  read_json,
  segments_of,
  status_record,
  write_status_once,
)
from synthpart.distributed.liveness import POLL_SECONDS
from synthpart.distributed.reports import (
  EXIT_INCOMPLETE,
  aborted_by_coordinator,
  child_arguments,
  coordinator_loss,
  death_text,
  failure_report,
  summary_lines,
)
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.rundir import claim

Exits = list[tuple[int, int]]  # (process, exit code), in the order the processes ended
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
GRACE_SECONDS = 10.0  # after SIGTERM, before SIGKILL


class StopSignal:
  """The first of `STOP_SIGNALS` received while `stop_signals` is entered (None: none yet)."""

  def __init__(self) -> None:
    self.number: int | None = None

  def __call__(self, number: int, frame: FrameType | None) -> None:
    if self.number is None:
      self.number = number

  @property
  def name(self) -> str:
    return signal.Signals(self.number).name if self.number is not None else ""


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignal]:
  """Records the stop signals instead of dying of them, while entered (main thread only:
  elsewhere the signals keep their handlers)."""
  stop = StopSignal()
  previous = {}
  with contextlib.suppress(ValueError):  # not the main thread
    for number in STOP_SIGNALS:
      previous[number] = signal.signal(number, stop)
  try:
    yield stop
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def mark_dead(run: RunDir, exits: Exits, num_segments: int) -> None:
  """Records, for the process that ended last in `exits` with a nonzero code, its exit and the
  segments it left without a status, saying whether the coordinator's death aborted it."""
  process, code = exits[-1]
  why = death_text(process, code, process in aborted_by_coordinator(exits))
  for k in segments_of(process, run.num_processes, num_segments):
    write_status_once(run, status_record(k, process, "failed", why, written_by="launcher"))
  if not run.exit_marker(process).exists():
    write_json_atomic(run.exit_marker(process), {"exit_code": code, "written_by": "launcher"})


def check_local(args: argparse.Namespace, num_segments: int) -> None:
  """`--local N` starts the processes itself: N in 1..segments, and no process flags."""
  n = args.local
  if n < 1 or n > num_segments:
    raise ConfigError(f"--local {n}: give 1 to {num_segments} processes (one per segment at most; "
                      "segment k trains in process k mod N)")
  if args.coordinator or args.num_processes is not None or args.process_id is not None:
    raise ConfigError("--local starts its own processes: leave out --coordinator, "
                      "--num-processes and --process-id")


def start_processes(args: argparse.Namespace, run: RunDir, base: Sequence[str],
                    coordinator: str) -> list[subprocess.Popen[bytes]]:
  """Starts process i of the launch for every i, each writing its output to its log.txt; they
  find this launcher's pid (the holder of the run directory's lock) in $SYNTHPART_LAUNCHER."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1", ENV_LAUNCHER: str(os.getpid())}
  timeout = ([] if args.coordinator_timeout == COORDINATOR_TIMEOUT
             else ["--coordinator-timeout", f"{args.coordinator_timeout:g}"])
  children = []
  for i in range(run.num_processes):
    run.process(i).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "synthpart", "launch", *base, "-q", *timeout,
               *(["--overwrite"] if args.overwrite else []),
               "--coordinator", coordinator, "--num-processes", str(run.num_processes),
               "--process-id", str(i)]
    with open(run.process(i) / "log.txt", "wb") as log:
      children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
  return children


def _collect(children: Sequence[subprocess.Popen[bytes]], exits: Exits) -> None:
  """Adds the processes that have ended since last seen to `exits`."""
  for i, child in enumerate(children):
    code = child.poll()
    if code is not None and i not in {p for p, _ in exits}:
      exits.append((i, code))


def watch(children: Sequence[subprocess.Popen[bytes]], run: RunDir, num_segments: int,
          stop: StopSignal | None = None) -> Exits:
  """Waits for every process to end, marking each one that dies as it does; returns the exits
  in the order seen (processes found ended in one round are taken in order of number). Where a
  stop signal comes, stops them all (`stop_processes`) and returns their exits."""
  exits: Exits = []
  while len(exits) < len(children):
    for i, child in enumerate(children):
      code = child.poll()
      if code is not None and i not in {p for p, _ in exits}:
        exits.append((i, code))
        if code != 0:
          mark_dead(run, exits, num_segments)
    if stop is not None and stop.number is not None:
      stop_processes(children, exits)
      break
    time.sleep(POLL_SECONDS)
  return exits


def stop_processes(children: Sequence[subprocess.Popen[bytes]], exits: Exits,
                   grace: float = GRACE_SECONDS) -> None:
  """Sends SIGTERM to every process still running, SIGKILL to those still running `grace`
  seconds later, and waits for every one; adds their exits to `exits`."""
  for child in children:
    if child.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        child.terminate()
  deadline, killed = time.monotonic() + grace, False
  while True:
    _collect(children, exits)
    if len(exits) == len(children):
      return
    if not killed and time.monotonic() > deadline:
      for child in children:
        if child.poll() is None:
          with contextlib.suppress(ProcessLookupError):
            child.kill()
      killed = True
    time.sleep(POLL_SECONDS)


def record_stop(run: RunDir, num_segments: int, exits: Exits, base: Sequence[str],
                stop: StopSignal) -> int:
  """Records a launch stopped by a signal: every segment without a status as stopped, every
  process's exit, and failures.json; says so in one line; returns 128 + the signal's number."""
  why = f"stopped: the launcher received {stop.name}"
  for process, code in exits:
    for k in segments_of(process, run.num_processes, num_segments):
      write_status_once(run, status_record(k, process, "failed", why, written_by="launcher"))
    if not run.exit_marker(process).exists():
      write_json_atomic(run.exit_marker(process), {"exit_code": code, "written_by": "launcher"})
  statuses: dict[int, Status] = {
      k: read_json(run.status(k)) or status_record(k, owner(k, run.num_processes), "failed", why)
      for k in range(num_segments)}
  cause = f"the launch was stopped by {stop.name}"
  _, failures = failure_report(run, statuses, base, dict(exits), cause)
  write_json_atomic(run.failures, {**failures, "signal": stop.name,
                                   "exit_codes": {str(p): c for p, c in exits}})
  kept = ", ".join(map(str, failures["kept"])) or "none"
  print(f"synthpart: {cause}: its {len(exits)} processes ended; segments kept: {kept}; "
        f"{run.failures} lists how to rerun the others", file=sys.stderr)
  return 128 + int(stop.number or 0)


def launch_local(args: argparse.Namespace, config: Config) -> int:
  """Starts `args.local` processes on this machine (a free port on 127.0.0.1) and waits for them,
  holding the run directory's lock throughout; returns the launch's exit code."""
  num_segments = config.model.num_segments
  check_local(args, num_segments)
  out = Path(args.out or f"runs/launch-{time.strftime('%Y%m%d-%H%M%S')}")
  with claim(out, "launch"), stop_signals() as stop:
    run = RunDir(out, args.local)
    check_fresh(run, args.overwrite)
    base = child_arguments(args, out)
    coordinator = f"127.0.0.1:{free_port()}"
    if stop.number is not None:
      print(f"synthpart: the launch was stopped by {stop.name} before it started",
            file=sys.stderr)
      return 128 + stop.number
    children = start_processes(args, run, base, coordinator)
    if not args.quiet:
      print(f"launched {args.local} processes (coordinator {coordinator}); logs in "
            f"{out}/process-*/log.txt", file=sys.stderr)
    try:
      exits = watch(children, run, num_segments, stop)
    except BaseException:
      stop_processes(children, [])  # none outlives the launcher, whatever went wrong here
      raise
    if stop.number is not None:
      return record_stop(run, num_segments, exits, base, stop)
    return report_launch(run, num_segments, exits, base)


def report_launch(run: RunDir, num_segments: int, exits: Exits, base: Sequence[str]) -> int:
  """Prints the results of a complete launch, or what failed and why (and writes it to
  failures.json); returns the launch's exit code."""
  statuses: dict[int, Status] = {
      k: read_json(run.status(k)) or status_record(k, owner(k, run.num_processes), "failed",
                                                   "no status written")
      for k in range(num_segments)}
  codes = dict(exits)
  document = read_json(run.results)
  if document is not None and all(s["status"] == "done" for s in statuses.values()):
    print("\n".join(summary_lines(document)))
    print(f"results: {run.results}")
    return 0 if all(code == 0 for code in codes.values()) else EXIT_INCOMPLETE
  lines, failures = failure_report(run, statuses, base, codes, coordinator_loss(exits))
  write_json_atomic(run.failures, {**failures, "exit_codes": {str(p): c for p, c in exits}})
  print("synthpart: the launch did not complete:", file=sys.stderr)
  print("\n".join(f"  {line}" for line in lines), file=sys.stderr)
  return EXIT_INCOMPLETE
