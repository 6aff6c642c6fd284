"""Every example runs from a directory of its own, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script,args,expected", [
    ("train_library.py", ["--epochs", "1", "--quiet"], "pnn-parallel: test accuracy"),
    ("custom_segment.py", ["--epochs", "1"], "pnn-sequential: test accuracy"),
    ("custom_data.py", ["--epochs", "1"], "my-patterns: pnn-sequential test accuracy"),
    ("read_results.py", [], "pnn-parallel+recovery"),
])
def test_example_runs_from_anywhere(tmp_path, script, args, expected):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert expected in proc.stdout
  assert "share device" not in proc.stderr  # one device per segment
  assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_every_example_is_tested():
  tested = {"train_library.py", "custom_segment.py", "custom_data.py", "read_results.py"}
  assert {p.name for p in EXAMPLES.glob("*.py")} == tested
