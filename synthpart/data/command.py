"""The `synthpart data` commands: list, verify and download datasets.

`add_data_commands(subparsers)` adds them to the main parser; each handler takes the parsed
`argparse.Namespace`, prints to stdout and returns an exit code. User errors raise `DataError`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from synthpart.data import sources
from synthpart.data import verify as verify_lib
from synthpart.data.catalog import DEFAULT_DATASET, REGISTRY, SKLEARN, DatasetSpec, get_spec
from synthpart.errors import DataError


def add_data_commands(subparsers) -> argparse.ArgumentParser:
  """Adds `data list`, `data verify NAME` and `data download NAME` to an argparse subparsers."""
  data = subparsers.add_parser("data", help="list, verify and download datasets",
                               description="List, verify and download datasets.")
  commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

  listing = commands.add_parser("list", help="known datasets and where each one was found")
  _add_data_dir(listing)
  listing.set_defaults(func=run_list)

  check = commands.add_parser("verify", help="check a dataset's counts, shapes, labels and "
                              "checksums")
  check.add_argument("name", metavar="NAME", help="dataset name, e.g. fashion-mnist")
  _add_data_dir(check)
  check.set_defaults(func=run_verify)

  fetch = commands.add_parser("download", help="download a dataset's published files")
  fetch.add_argument("name", metavar="NAME", help="dataset name, e.g. emnist-letters")
  _add_data_dir(fetch)
  fetch.add_argument("--no-progress", dest="progress", action="store_false",
                     help="do not show a progress bar")
  fetch.set_defaults(func=run_download)
  return data


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data-dir", metavar="DIR", default=None,
                      help="directory holding the files (the only local place searched)")


def _size(num_bytes: int) -> str:
  return f"{num_bytes / 1e6:.0f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.0f} kB"


def availability(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> str:
  """Where `spec` would be loaded from, or how to get it: one line for `data list`."""
  if spec.layout == SKLEARN:
    try:
      import sklearn  # noqa: F401  (only whether it is installed matters)
    except ImportError:
      return "needs scikit-learn: pip install 'synthpart[demo]'"
    return "bundled with scikit-learn"
  try:
    result = sources.search(spec, data_dir)
  except DataError as e:
    return f"error: {e}"
  if result.found is not None:
    return result.found.describe()
  if result.incomplete:
    directory, what = result.incomplete[0]
    return f"incomplete in {directory} ({what})"
  size = sum(r.size or 0 for r in spec.remotes)
  return f"not found; synthpart data download {spec.name} ({_size(size)})"


def format_table(rows: Sequence[Sequence[str]]) -> str:
  """Left-aligned columns separated by two spaces; the last column is not padded."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
  lines = []
  for row in rows:
    cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
    lines.append("  ".join([*cells, row[-1]]).rstrip())
  return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
  """`synthpart data list`: one row per dataset."""
  data_dir = getattr(args, "data_dir", None)
  rows = [("NAME", "CLASSES", "SHAPE", "SOURCE")]
  for spec in REGISTRY.values():
    name = spec.name + (" (default)" if spec.name == DEFAULT_DATASET else "")
    shape = "x".join(map(str, spec.image_shape))
    rows.append((name, str(spec.num_classes), shape, availability(spec, data_dir)))
  print(format_table(rows))
  return 0


def run_verify(args: argparse.Namespace) -> int:
  """`synthpart data verify NAME`: 0 if every check passes, 1 otherwise."""
  spec = get_spec(args.name)
  where, checks = verify_lib.verify(spec, getattr(args, "data_dir", None))
  print(f"{spec.name}: {where}")
  rows = [(c.status, c.what, c.detail) for c in checks]
  print("\n".join("  " + line for line in format_table(rows).splitlines()))
  failed = [c for c in checks if c.status == verify_lib.FAIL]
  warned = [c for c in checks if c.status == verify_lib.WARN]
  if failed:
    print(f"{spec.name}: {len(failed)} of {len(checks)} checks failed")
    return 1
  note = f", {len(warned)} warnings" if warned else ""
  print(f"{spec.name}: ok ({len(checks)} checks{note})")
  return 0


def run_download(args: argparse.Namespace) -> int:
  """`synthpart data download NAME`: fetches the files unless a complete copy exists."""
  spec = get_spec(args.name)
  if spec.layout == SKLEARN:
    print(f"{spec.name}: bundled with scikit-learn; nothing to download")
    return 0
  location = sources.locate(spec, getattr(args, "data_dir", None), download=True,
                            progress=getattr(args, "progress", True) and sys.stderr.isatty())
  print(f"{spec.name}: {location.describe()}")
  return 0
