"""TensorBoard event files from a results document (tensorboardX; no TensorFlow needed).

Each method gets its own run directory under `log_dir`, so TensorBoard overlays methods on the
same tags:

  loss/<loop name>     mean training loss per epoch of each optax loop (segments, recovery)
  accuracy/test        test accuracy after each epoch round (step: round, wall time: seconds)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthpart.errors import ConfigError


def _writer(path: Path) -> Any:
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ConfigError("--tensorboard needs the tensorboardX package: pip install tensorboardX") \
        from None
  return SummaryWriter(logdir=str(path), flush_secs=1)


def _tag(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def write_tensorboard(document: Mapping[str, Any], log_dir: str | Path) -> list[Path]:
  """Writes every run's per-epoch scalars; returns the per-method directories written."""
  log_dir = Path(log_dir)
  written = []
  for run in document.get("runs", []):
    path = log_dir / _tag(run["method"])
    writer = _writer(path)
    try:
      for segment in run.get("segments", []):
        tag = f"loss/{_tag(segment['name'])}"
        for epoch, loss in enumerate(segment.get("loss_per_epoch", []), start=1):
          writer.add_scalar(tag, loss, global_step=epoch)
      # One step per epoch round, so a method's loops line up one after another.
      for step, point in enumerate(run.get("curve", []), start=1):
        if "accuracy" in point:
          writer.add_scalar("accuracy/test", point["accuracy"], global_step=step)
          writer.add_scalar("accuracy/test_vs_seconds", point["accuracy"],
                            global_step=int(round(1000 * point["seconds"])))
      writer.add_scalar("accuracy/final_test", run["test_accuracy"], global_step=0)
    finally:
      writer.close()
    written.append(path)
  return written
