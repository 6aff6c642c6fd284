"""`synthpart` as a user runs it: a fresh Python process, its own devices and global state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def synthpart(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m synthpart ARGS` in a new process; returns it with its output as text."""
  return subprocess.run([sys.executable, "-m", "synthpart", *args], cwd=cwd,
                        env={**os.environ, **(env or {})}, capture_output=True, text=True,
                        timeout=timeout)
