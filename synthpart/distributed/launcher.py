"""`launch --local N`: N processes of a launch on this machine, watched until they end.

A process that dies gets its unfinished segments marked failed at once, so that the others stop
waiting for them. The order of deaths tells a lost coordinator apart: process 0 hosts jax's
coordination service, which aborts every process still connected when it dies (SIGABRT), so
when process 0 fails first, the report names its death as the cause of theirs. At the end the
launcher reports every failed segment with its rerun command, and writes failures.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from synthpart.config import Config
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
from synthpart.distributed.rundir import (
  RunDir,
  Status,
  check_fresh,
  owner,
  read_json,
  segments_of,
  status_record,
  write_status_once,
)
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic

Exits = list[tuple[int, int]]  # (process, exit code), in the order the processes ended


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
  """Starts process i of the launch for every i, each writing its output to its log.txt."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  children = []
  for i in range(run.num_processes):
    run.process(i).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "synthpart", "launch", *base, "-q",
               *(["--overwrite"] if args.overwrite else []),
               "--coordinator", coordinator, "--num-processes", str(run.num_processes),
               "--process-id", str(i)]
    with open(run.process(i) / "log.txt", "wb") as log:
      children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
  return children


def watch(children: Sequence[subprocess.Popen[bytes]], run: RunDir, num_segments: int) -> Exits:
  """Waits for every process to end, marking each one that dies as it does; returns the exits
  in the order seen (processes found ended in one round are taken in order of number)."""
  exits: Exits = []
  try:
    while len(exits) < len(children):
      for i, child in enumerate(children):
        code = child.poll()
        if code is not None and i not in {p for p, _ in exits}:
          exits.append((i, code))
          if code != 0:
            mark_dead(run, exits, num_segments)
      time.sleep(POLL_SECONDS)
  except KeyboardInterrupt:
    for child in children:
      if child.poll() is None:
        child.terminate()
    for child in children:
      child.wait()
    raise
  return exits


def launch_local(args: argparse.Namespace, config: Config) -> int:
  """Starts `args.local` processes on this machine (a free port on 127.0.0.1) and waits for them;
  returns the launch's exit code."""
  num_segments = config.model.num_segments
  check_local(args, num_segments)
  out = Path(args.out or f"runs/launch-{time.strftime('%Y%m%d-%H%M%S')}")
  run = RunDir(out, args.local)
  check_fresh(run, args.overwrite)
  base = child_arguments(args, out)
  coordinator = f"127.0.0.1:{free_port()}"
  children = start_processes(args, run, base, coordinator)
  if not args.quiet:
    print(f"launched {args.local} processes (coordinator {coordinator}); logs in "
          f"{out}/process-*/log.txt", file=sys.stderr)
  return report_launch(run, num_segments, watch(children, run, num_segments), base)


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
