"""Read a run's results.json: each method's accuracy, losses, curve, compute and traffic.

  python3 examples/read_results.py [RUN_DIR]

Without RUN_DIR, a small `synthpart compare` on the bundled digits is trained first, into a
temporary directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from synthpart.cli import main as synthpart
from synthpart.curves import accuracy_curves, ledger_bytes
from synthpart.results import method_from_dict


def summary(run_dir: Path) -> list[str]:
  """One line per method of a run directory's results.json."""
  document = json.loads((run_dir / "results.json").read_text())
  curves = accuracy_curves(document)
  lines = [f"{document['dataset']['name']} from {document['dataset']['source']}; PRNG "
           f"{document.get('prng_impl', '?')}; devices {', '.join(document['devices'])}"]
  for entry in document["runs"]:
    run = method_from_dict(entry)  # back to a synthpart.records.MethodRecord
    flops = curves[run.method][-1]["flops"] if curves[run.method] else 0.0
    losses = " / ".join(f"{s.loss_per_epoch[-1]:.3f}" for s in run.segments)
    lines.append(f"{run.method:<25} {100 * run.test_accuracy:6.2f}%  final losses {losses}  "
                 f"{flops / 1e9:,.2f} GFLOP  {ledger_bytes(entry['transfers']) / 2**20:,.2f} "
                 f"MiB moved")
  return lines


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run", nargs="?", type=Path, help="a run directory (results.json)")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as scratch:
    run = args.run
    if run is None:
      run = Path(scratch) / "run"
      synthpart(["compare", "--hidden", "32,32,32", "--cuts", "2", "--epochs", "2",
                 "--recovery-epochs", "1", "--lr", "0.01", "-q", "--out", str(run)])
    print("\n".join(summary(run)))


if __name__ == "__main__":
  main()
