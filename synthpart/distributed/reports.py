"""What a launch tells its user: the summary of a complete run, and for an incomplete one every
segment not done, why, and the command that reruns each segment alone."""

from __future__ import annotations

import argparse
import re
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthpart.distributed.liveness import HEARTBEAT_TIMEOUT
from synthpart.distributed.rundir import RunDir, Status, owner
from synthpart.results import format_table, method_from_dict
from synthpart.setup import setting_arguments

EXIT_INCOMPLETE = 1  # a segment of this process failed, or (process 0) the run is incomplete


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


def failure_report(run: RunDir, statuses: dict[int, Status], base: Sequence[str],
                   exit_codes: dict[int, int] | None = None) -> tuple[list[str], dict[str, Any]]:
  """Lines for the terminal and a document for failures.json: every segment not done, why, and
  the command that reruns it alone; and the segments that are done and kept."""
  lines, failed = [], []
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
  return lines, {"failed": failed, "kept": kept}


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
