"""`synthpart report DIR`: writes report.md and its figures for a run or a sweep directory."""

from __future__ import annotations

import argparse

from synthpart.report.figures import require_matplotlib
from synthpart.report.markdown import write_report


def add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
  """Registers `synthpart report` on the command line's subparsers."""
  p = sub.add_parser("report", help="Markdown report with figures of a run or sweep directory")
  p.add_argument("directory", help="a run directory (results.json) or sweep directory")
  p.add_argument("--out", default=None, metavar="DIR",
                 help="where report.md and figures/ go (default: the directory itself)")
  p.add_argument("--no-memory", action="store_true",
                 help="skip the memory figure (drawn from the memory the runs recorded)")
  p.set_defaults(func=_report_command)


def _report_command(args: argparse.Namespace) -> int:
  require_matplotlib()
  path = write_report(args.directory, args.out, memory=not args.no_memory)
  print(f"report: {path}")
  return 0
