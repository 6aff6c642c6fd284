"""Whether the other processes of a launch are still at work, and waiting for what they write.

Liveness comes from heartbeat files, judged by the reader's own clock (no clock is compared
across hosts), and from exit markers (written by a process as it leaves, or by the launcher for
a process that died). A wait ends when the awaited file appears or its writer is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from synthpart.distributed.launchdir import RunDir, Status, owner, read_json, status_record
from synthpart.files import write_atomic

POLL_SECONDS = 0.05
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TIMEOUT = 120.0


def _write_beat(path: Path, count: int) -> None:
  data = str(count).encode()

  def write(f: BinaryIO) -> None:
    f.write(data)

  write_atomic(path, write)


class Heartbeat:
  """Bumps a counter in a file every `interval` seconds from a daemon thread, while entered."""

  def __init__(self, path: Path, interval: float = HEARTBEAT_SECONDS):
    self._path, self._interval = path, interval
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True, name="synthpart-heartbeat")

  def _beat(self) -> None:
    count = 0
    while not self._stop.is_set():
      count += 1
      try:
        _write_beat(self._path, count)
      except OSError:
        pass  # a full or flaky disk must not kill training; readers see a stale beat
      self._stop.wait(self._interval)

  def __enter__(self) -> Self:
    self._thread.start()
    return self

  def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
               traceback: TracebackType | None) -> None:
    self._stop.set()
    self._thread.join()


class Liveness:
  """Whether another process is still at work: not exited, and its heartbeat still changing.

  A heartbeat counts as stopped when its content has not changed for `timeout` seconds of this
  process's own clock, so hosts whose clocks disagree still judge each other rightly.
  """

  def __init__(self, run: RunDir, timeout: float):
    self._run, self._timeout = run, timeout
    self._seen: dict[int, tuple[str | None, float]] = {}

  def lost(self, process: int) -> str | None:
    """Why `process` will write nothing more, or None while it may."""
    marker = read_json(self._run.exit_marker(process))
    if marker is not None:
      return f"process {process} exited with code {marker.get('exit_code')}"
    try:
      beat: str | None = self._run.heartbeat(process).read_text()
    except FileNotFoundError:
      beat = None
    now = time.monotonic()
    last = self._seen.get(process)
    if last is None or last[0] != beat:
      self._seen[process] = (beat, now)
      return None
    if now - last[1] > self._timeout:
      return f"process {process} stopped: no heartbeat for {self._timeout:g} s"
    return None


class UpstreamMissing(Exception):
  """The input of a segment will never come: the segment before it failed or diverged."""


def wait_for_status(run: RunDir, segment: int, liveness: Liveness | None) -> Status:
  """The status of `segment`, waiting for it while its process lives (None: do not wait)."""
  producer = owner(segment, run.num_processes)
  while True:
    status = read_json(run.status(segment))
    if status is not None:
      return status
    reason = "not trained" if liveness is None else liveness.lost(producer)
    if reason:
      # Its process may have written the status just before exiting.
      return read_json(run.status(segment)) or status_record(segment, producer, "failed", reason)
    time.sleep(POLL_SECONDS)


def wait_for_activations(run: RunDir, cut: int, upstream: int, liveness: Liveness | None) -> Path:
  """The file of the activations at `cut`, once segment `upstream`'s process has written it.

  Raises UpstreamMissing when it never will (with `liveness` None: unless it is there now).
  """
  path = run.handoff(cut)
  while True:
    if path.exists():
      return path
    status = read_json(run.status(upstream))
    # The hand-off is written before the status, so a status without it means none will come.
    if status is not None and not path.exists():
      why = "diverged" if status["status"] == "done" else status["status"]
      raise UpstreamMissing(f"segment {upstream} {why}: no cut {cut} activations")
    producer = owner(upstream, run.num_processes)
    reason = (f"segment {upstream} is not trained (rerun it first)" if liveness is None
              else liveness.lost(producer))
    if reason and not path.exists():
      raise UpstreamMissing(f"{reason}: no cut {cut} activations")
    time.sleep(POLL_SECONDS)


def await_exits(liveness: Liveness, others: Iterable[int]) -> None:
  """Returns once every process of `others` has exited or stopped beating."""
  for p in others:
    while liveness.lost(p) is None:
      time.sleep(POLL_SECONDS)
