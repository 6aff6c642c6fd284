"""TensorBoard event files from a finished results document (a launch writes these when process
0 assembles the network). Runs in one process write live instead: `synthpart.metrics`.

Each method gets its own run directory under `log_dir`, so TensorBoard overlays methods on the
same tags:

  loss/<loop name>     mean training loss per epoch of each optax loop (segments, recovery)
  accuracy/test        test accuracy after each epoch round
  seconds              cumulative training seconds after each epoch round
  accuracy/final       the method's final test accuracy
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthpart.metrics import TensorBoardWriter, safe_name, write_document


def write_tensorboard(document: Mapping[str, Any], log_dir: str | Path) -> list[Path]:
  """Writes every run's scalars; returns the per-method directories written."""
  writer = TensorBoardWriter(log_dir)
  try:
    write_document(writer, document)
  finally:
    writer.close()
  return [Path(log_dir) / safe_name(run["method"]) for run in document.get("runs", [])]
