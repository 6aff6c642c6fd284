"""What a launch tells its user: the summary of a complete run, and for an incomplete one every
segment not done, why, the cause where one death explains the others, and the command that
reruns each segment alone."""

from __future__ import annotations

import argparse
import re
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthpart.distributed.launchdir import RunDir, Status, owner
from synthpart.distributed.liveness import HEARTBEAT_TIMEOUT
from synthpart.prepare import setting_arguments
from synthpart.results import format_table, method_from_dict

EXIT_INCOMPLETE = 1  # a segment of this process failed, or (process 0) the run is incomplete
# What a process's exit code is when jax's coordination service terminates it (SIGABRT).
ABORT_CODE = -int(signal.SIGABRT)


def child_arguments(args: argparse.Namespace, out: Path) -> list[str]:
  """The settings of this command line, as flags, for the processes it starts or reruns."""
  argv = setting_arguments(args) + ["--out", str(out)]
  if args.devices:
    argv += ["--devices", str(args.devices)]
  if args.heartbeat_timeout != HEARTBEAT_TIMEOUT:
    argv += ["--heartbeat-timeout", f"{args.heartbeat_timeout:g}"]
  return argv


def rerun_command(base: Sequence[str], segment: int, num_processes: int) -> str:
  """The command that trains `segment` alone into the same run directory."""
  return shlex.join(["synthpart", "launch", *base, "--num-processes", str(num_processes),
                     "--process-id", str(owner(segment, num_processes)),
                     "--only-segment", str(segment)])


def exit_text(code: int | None) -> str:
  """An exit code in words, with the signal that ended the process, if one did."""
  if code is None:
    return "exit code unknown"
  if code < 0:
    try:
      return f"exit code {code}, killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"exit code {code}"
  return f"exit code {code}"


def aborted_by_coordinator(exits: Sequence[tuple[int, int]]) -> list[int]:
  """The processes the coordination service aborted because process 0, which hosts it, failed
  before them. `exits` holds (process, exit code) in the order the processes ended; empty unless
  process 0 is the first to end with a nonzero code."""
  failed = [(p, code) for p, code in exits if code != 0]
  if not failed or failed[0][0] != 0:
    return []
  return [p for p, code in failed[1:] if code == ABORT_CODE]


def coordinator_loss(exits: Sequence[tuple[int, int]]) -> str | None:
  """One sentence naming the coordinator's death as the cause of the failures that followed it,
  or None where process 0 did not fail first (or a launch of one process has no coordinator)."""
  failed = [(p, code) for p, code in exits if code != 0]
  if len(exits) < 2 or not failed or failed[0][0] != 0:
    return None
  sentence = f"process 0 (the coordinator) died first: {exit_text(failed[0][1])}"
  aborted = aborted_by_coordinator(exits)
  if aborted:
    who = (f"process {aborted[0]} was" if len(aborted) == 1
           else f"processes {', '.join(map(str, aborted))} were")
    sentence += f"; {who} aborted by the coordination service (exit code {ABORT_CODE})"
  return sentence


def death_text(process: int, code: int, aborted: bool) -> str:
  """Why the segments of a dead process have no status of their own."""
  if aborted:
    return (f"process {process} was aborted by the coordination service ({exit_text(code)}) "
            "after process 0 (the coordinator) died")
  return f"process {process} died: {exit_text(code)}"


def failure_report(run: RunDir, statuses: dict[int, Status], base: Sequence[str],
                   exit_codes: dict[int, int] | None = None,
                   cause: str | None = None) -> tuple[list[str], dict[str, Any]]:
  """Lines for the terminal and a document for failures.json: the cause, where one is known;
  every segment not done, why, and the command that reruns it alone; and the segments that are
  done and kept."""
  lines = [cause] if cause else []
  failed = []
  for k, s in sorted(statuses.items()):
    if s["status"] == "done":
      continue
    p = owner(k, run.num_processes)
    code = (exit_codes or {}).get(p)
    command = rerun_command(base, k, run.num_processes)
    why = s.get("error") or "no reason recorded"
    # A status the launcher wrote for a dead process names its exit already.
    known = exit_codes is not None and s.get("written_by") != "launcher"
    exit_part = f"; process {p} {exit_text(code)}" if known else ""
    lines.append(f"segment {k} (process {p}) {s['status']}: {why}{exit_part}")
    last = last_error(run.process(p) / "log.txt") if not known else None
    if last:
      lines.append(f"  its last error: {last}")
    lines.append(f"  log: {run.process(p) / 'log.txt'}")
    lines.append(f"  rerun it alone: {command}")
    failed.append({"segment": k, "process": p, "status": s["status"], "error": why,
                   "exit_code": code, "rerun": command})
  kept = [k for k, s in sorted(statuses.items()) if s["status"] == "done"]
  if kept:
    lines.append("kept: " + ", ".join(f"segment {k} ({run.params(k)})" for k in kept))
  else:
    lines.append("no segment was trained: once the cause is fixed, launch again with --overwrite")
  return lines, {"cause": cause, "failed": failed, "kept": kept}


def last_error(log: Path) -> str | None:
  """The error line a process printed before it died, if any."""
  try:
    lines = log.read_text(errors="replace").splitlines()
  except FileNotFoundError:
    return None
  errors = [line for line in lines if line.startswith("synthpart: error:")
            or re.match(r"^\w+(Error|Exception): ", line)]
  return errors[-1].removeprefix("synthpart: error: ")[:300] if errors else None


def summary_lines(document: dict[str, Any]) -> list[str]:
  """The results table of a complete launch, and the bytes each process sent."""
  lines = format_table([method_from_dict(r) for r in document["runs"]]).splitlines()
  for p in document.get("processes", []):
    sent = p["bytes_sent"]
    lines.append(f"process {p['process']} (segments {', '.join(map(str, p['segments']))}) sent "
                 f"{sent['activations']} bytes of activations, {sent['parameters']} bytes of "
                 "parameters")
  return lines
