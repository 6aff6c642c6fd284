"""Multi-process runs: one process per segment group, coordinated through `jax.distributed`.

  synthpart launch CONFIG --out DIR --coordinator HOST:PORT --num-processes N --process-id I
  synthpart launch CONFIG --out DIR            # Slurm, Open MPI, TPU VMs: jax finds the rest
  synthpart launch CONFIG --out DIR --local N  # N processes on this machine, for testing

Segment k trains in process k mod N, on that process's local devices (its segments' groups laid
out over them, see `synthpart.groups`), through the schedules' own loops: `train_parallel` over
the process's segments, or `train_sequential_segment` for each, so that a launch trains exactly
as `synthpart train` does. The processes share nothing but the run directory, which
must be on storage that every process sees (NFS, Lustre, a bucket mounted with FUSE...)::

  DIR/launch.json                  the plan: settings, processes, segment -> process (process 0)
  DIR/process-<i>/process.json     host, pid and devices of process i
  DIR/process-<i>/heartbeat        a counter process i bumps every second
  DIR/process-<i>/segment-<k>.npz  the trained parameters of segment k, for i = k mod N
  DIR/process-<i>/segment-<k>.json its status (done | failed | skipped), result, bytes sent
  DIR/process-<i>/progress.txt     one line per epoch
  DIR/process-<i>/exit.json        its exit code, written last
  DIR/process-<i>/log.txt          its output (--local)
  DIR/handoff/cut-<c>.npy          sequential schedule: the activations at cut c, float32 [N, w]
  DIR/results.json                 process 0, once every segment is done: the schema of
                                   `synthpart train` plus "processes", the bytes each one sent
  DIR/failures.json                process 0, when a segment failed: which, why, how to rerun

Why files and not collectives: the parallel schedule exchanges nothing until the end, and the
sequential one hands over one array per cut, once. A file written atomically (temporary name,
fsync, rename) and polled for by the next process is the simplest transport that survives the
failure of either side; it works across hosts without cross-process device collectives (which
need every process to take part, and gloo on CPU), and it leaves the cut activations on disk, so a
failed segment can be rerun alone from them. jax.distributed does what it is good at: it finds the
processes (cluster auto-detection), and its key-value store carries one start signal (process 0
checks the run directory, then tells the others to go, or why not).

A failure stays in its process: every segment's status is written whatever happens, the other
processes finish their segments and keep them, and process 0 reports which segment failed and
how to rerun it alone (`--only-segment K`, which needs no coordinator). Liveness comes from the
heartbeat files, judged by the reader's own clock (no clock is compared across hosts), and from
the launcher, which marks the segments of a process that died. jax.distributed runs with
recoverability on, so one process's death does not take the others down; its coordinator lives in
process 0, which must outlive the others, so process 0 waits for their exit before its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
# Its global state holds the process id jax detected, and the client of the key-value store
# (no public accessor in jax 0.10-0.12; jax's own array serialization uses it the same way).
from jax._src import distributed as jax_distributed

from synthpart.errors import ConfigError, SynthpartError
from synthpart.files import write_atomic, write_json_atomic
from synthpart.groups import layout_groups
from synthpart.placement import Transfer, device_name, hand_over
from synthpart.progress import Progress
from synthpart.results import MethodResult, SegmentResult, format_table, method_from_dict
from synthpart.results import results_document
from synthpart.setup import add_run_arguments, load_config, prepare_dataset, setting_arguments
from synthpart.tblog import write_tensorboard
from synthpart.train import schedules as S
from synthpart.train.driver import Loop, drive
from synthpart.train.problem import Problem, make_problem

ENV_COORDINATOR = "SYNTHPART_COORDINATOR"
ENV_NUM_PROCESSES = "SYNTHPART_NUM_PROCESSES"
ENV_PROCESS_ID = "SYNTHPART_PROCESS_ID"
READY_KEY = "synthpart/ready"
POLL_SECONDS = 0.05
HEARTBEAT_SECONDS = 1.0
READY_TIMEOUT_MS = 60 * 60 * 1000  # process 0 may be downloading the dataset meanwhile
HEARTBEAT_TIMEOUT = 120.0
EXIT_INCOMPLETE = 1  # a segment of this process failed, or (process 0) the run is incomplete


# --- the plan ------------------------------------------------------------------------------

def owner(segment: int, num_processes: int) -> int:
  """The process that trains `segment`."""
  return segment % num_processes


def segments_of(process_id: int, num_processes: int, num_segments: int) -> tuple[int, ...]:
  return tuple(k for k in range(num_segments) if owner(k, num_processes) == process_id)


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The paths of a multi-process run directory (see the module docstring)."""
  root: Path
  num_processes: int

  def process(self, i: int) -> Path:
    return self.root / f"process-{i}"

  def home(self, segment: int) -> Path:
    return self.process(owner(segment, self.num_processes))

  def status(self, segment: int) -> Path:
    return self.home(segment) / f"segment-{segment}.json"

  def params(self, segment: int) -> Path:
    return self.home(segment) / f"segment-{segment}.npz"

  def handoff(self, cut: int) -> Path:
    return self.root / "handoff" / f"cut-{cut}.npy"

  def heartbeat(self, i: int) -> Path:
    return self.process(i) / "heartbeat"

  def exit_marker(self, i: int) -> Path:
    return self.process(i) / "exit.json"

  @property
  def plan(self) -> Path:
    return self.root / "launch.json"

  @property
  def results(self) -> Path:
    return self.root / "results.json"

  @property
  def failures(self) -> Path:
    return self.root / "failures.json"


write_json = write_json_atomic


def read_json(path: Path) -> Any | None:
  """The document at `path`, or None where there is none yet."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None


def save_array(path: Path, array: np.ndarray) -> None:
  write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def save_params(path: Path, params: Sequence[dict[str, Any]]) -> int:
  """Saves a segment's parameters (one dict of arrays per layer) as .npz; returns their bytes.

  Dtypes numpy cannot name (bfloat16) are stored as float32, which holds them exactly, and
  restored from the recorded names.
  """
  arrays, dtypes = {}, {}
  for i, layer in enumerate(params):
    for name, value in layer.items():
      a = np.asarray(value)
      dtypes[f"{i}/{name}"] = a.dtype.name
      arrays[f"{i}/{name}"] = a if a.dtype.kind == "f" and a.dtype.isnative and a.dtype.name in (
          "float16", "float32", "float64") else a.astype(np.float32)
  arrays["dtypes"] = np.array(json.dumps(dtypes))
  write_atomic(path, lambda f: np.savez(f, **arrays))
  return sum(np.asarray(v).nbytes for layer in params for v in layer.values())


def load_params(path: Path) -> list[dict[str, Any]]:
  with np.load(path, allow_pickle=False) as z:
    dtypes = json.loads(str(z["dtypes"]))
    layers: dict[int, dict[str, Any]] = {}
    for key, dtype in dtypes.items():
      i, name = key.split("/")
      layers.setdefault(int(i), {})[name] = np.asarray(z[key]).astype(jnp.dtype(dtype))
  return [layers[i] for i in sorted(layers)]


# --- liveness ------------------------------------------------------------------------------

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
        write_atomic(self._path, lambda f: f.write(str(count).encode()))
      except OSError:
        pass  # a full or flaky disk must not kill training; readers see a stale beat
      self._stop.wait(self._interval)

  def __enter__(self) -> Heartbeat:
    self._thread.start()
    return self

  def __exit__(self, *exc: Any) -> None:
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


def wait_for_status(run: RunDir, segment: int, liveness: Liveness | None) -> dict[str, Any]:
  """The status of `segment`, waiting for it while its process lives (None: do not wait)."""
  producer = owner(segment, run.num_processes)
  while True:
    status = read_json(run.status(segment))
    if status is not None:
      return status
    reason = "not trained" if liveness is None else liveness.lost(producer)
    if reason:
      # Its process may have written the status just before exiting.
      return read_json(run.status(segment)) or _status(segment, producer, "failed", reason)
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


# --- statuses ------------------------------------------------------------------------------

def _status(segment: int, process: int, status: str, error: str = "", **extra: Any) -> dict:
  return {"segment": segment, "process": process, "status": status, "error": error, **extra}


def _error_text(e: BaseException) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {text}"[:500] if not isinstance(e, SynthpartError) else text


def _write_status_once(run: RunDir, status: dict[str, Any]) -> None:
  """Writes a status unless the segment already has one (its own process's word wins)."""
  if not run.status(status["segment"]).exists():
    write_json(run.status(status["segment"]), status)


# --- one process's segments ------------------------------------------------------------------

@dataclasses.dataclass
class Context:
  """What one process's training needs besides the problem."""
  run: RunDir
  process_id: int
  liveness: Liveness | None  # None: others are not running (--only-segment); never wait
  progress: Any
  host: str = dataclasses.field(default_factory=socket.gethostname)

  def log(self, text: str) -> None:
    print(f"[process {self.process_id}] {text}", file=sys.stderr, flush=True)


def own_groups(devices: Sequence[Any], sizes: Sequence[int],
               own: Sequence[int]) -> tuple[tuple[Any, ...], ...]:
  """Every segment's device group for a process that trains only `own`: those laid out in
  order over its local devices, the others (never trained here) on its first device."""
  groups = [(devices[0],)] * len(sizes)
  for k, group in zip(own, layout_groups(devices, [sizes[k] for k in own])):
    groups[k] = group
  return tuple(groups)


def _finish(ctx: Context, problem: Any, segment: int, params: Any, result: SegmentResult,
            **extra: Any) -> dict[str, Any]:
  """Saves a trained segment's parameters, then its status (the status comes last)."""
  param_bytes = save_params(ctx.run.params(segment), jax.device_get(params))
  sent = extra.pop("activation_bytes", 0)
  status = _status(segment, ctx.process_id, "done", host=ctx.host, pid=os.getpid(),
                   devices=device_name(problem.device_of(segment)),
                   process_devices=[device_name(d) for d in problem.devices],
                   result=dataclasses.asdict(result),
                   bytes_sent={"activations": sent, "parameters": param_bytes}, **extra)
  write_json(ctx.run.status(segment), status)
  return status


def _fail(ctx: Context, segment: int, e: BaseException, status: str = "failed") -> dict:
  if status == "failed":
    ctx.log(f"segment {segment} failed:\n{''.join(traceback.format_exception(e))}")
  else:
    ctx.log(f"segment {segment} {status}: {e}")
  record = _status(segment, ctx.process_id, status, _error_text(e), host=ctx.host, pid=os.getpid())
  write_json(ctx.run.status(segment), record)
  return record


def train_parallel_segments(ctx: Context, problem: Problem, own: Sequence[int]) -> dict[int, dict]:
  """The parallel schedule's loops of this process's segments, driven together as
  `train_parallel` drives them: nothing to wait for, nothing to send. A segment that raises
  (compiling or training) fails alone; the others go on and are kept."""
  outcomes: dict[int, dict] = {}
  loops: dict[int, Loop] = {}
  for k in own:
    try:
      loops[k] = S.parallel_loop(problem, k)
    except Exception as e:
      outcomes[k] = _fail(ctx, k, e)
  segment_of = {id(loop): k for k, loop in loops.items()}

  def on_error(loop: Loop, e: Exception) -> None:
    outcomes[segment_of[id(loop)]] = _fail(ctx, segment_of[id(loop)], e)

  result = MethodResult("pnn-parallel", segments=[loop.result for loop in loops.values()])
  drive(list(loops.values()), result, ctx.progress, label=result.method, on_error=on_error)
  for k, loop in loops.items():
    if k in outcomes:
      continue
    try:
      outcomes[k] = _finish(ctx, problem, k, jax.device_get(loop.state.params), loop.result)
    except Exception as e:
      outcomes[k] = _fail(ctx, k, e)
  return outcomes


def train_sequential_segments(ctx: Context, problem: Any, own: Sequence[int]) -> dict[int, dict]:
  """The sequential schedule for this process's segments, in order, each through
  `train_sequential_segment`.

  A segment's input is the previous segment's output: in memory when that segment trained here,
  else read from the hand-off file its process writes (waiting for it). Every segment but the
  last writes its output to the hand-off file, so that a later rerun can start from it.
  """
  outcomes: dict[int, dict] = {}
  features: dict[int, Any] = {}
  for k in own:
    spec = problem.specs[k]
    # One result per segment: its loop, and the hand-over into it, go into its status.
    result = MethodResult("pnn-sequential")
    try:
      # Hand-over time counts as training time, as in `train_sequential`; waiting for the
      # previous segment to finish does not.
      handoff_seconds = 0.0
      if spec.is_first:
        x: Any = problem.train_x
      elif k - 1 in features:
        start = time.perf_counter()
        x = jax.block_until_ready(hand_over(features.pop(k - 1), problem.device_of(k),
                                            result.transfers, f"cut {spec.input_cut} activations"))
        handoff_seconds = time.perf_counter() - start
      else:
        path = wait_for_activations(ctx.run, spec.input_cut, k - 1, ctx.liveness)
        start = time.perf_counter()
        x = np.load(path, allow_pickle=False)
        handoff_seconds = time.perf_counter() - start
        result.transfers.append(Transfer(f"cut {spec.input_cut} activations",
                                         f"process {owner(k - 1, ctx.run.num_processes)}",
                                         device_name(problem.device_of(k)), int(x.nbytes)))
      params, out = S.sequential_segment(problem, spec, x, ctx.progress, result)
      sent = 0
      if out is not None:
        if k + 1 in own:
          features[k] = out
        host = np.asarray(jax.device_get(out))
        save_array(ctx.run.handoff(spec.output_cut), host)
        if owner(k + 1, ctx.run.num_processes) != ctx.process_id:
          sent = int(host.nbytes)
      outcomes[k] = _finish(ctx, problem, k, params, result.segments[-1], activation_bytes=sent,
                            transfers=[dataclasses.asdict(t) for t in result.transfers],
                            handoff_seconds=handoff_seconds)
    except UpstreamMissing as e:
      outcomes[k] = _fail(ctx, k, e, status="skipped")
    except Exception as e:
      outcomes[k] = _fail(ctx, k, e)
  return outcomes


# --- assembling the network ------------------------------------------------------------------

def _segment_result(document: dict[str, Any]) -> SegmentResult:
  return SegmentResult(**{**document, "layers": tuple(document["layers"])})


def curve(schedule: str, segments: Sequence[Any],
          handoff_seconds: Sequence[float]) -> list[dict[str, Any]]:
  """The method's curve, rebuilt from the segments' epoch timings (no accuracy: the segments
  trained in different processes, and the network exists only once all are done).

  Parallel: segments run at once, so a round ends when its slowest segment does. Sequential:
  one after the other, each after its hand-over.
  """
  def examples(s: Any, epochs: int) -> int:
    return epochs * s.steps_per_epoch * s.batch_size

  points: list[dict[str, Any]] = []
  if schedule == "parallel":
    for e in range(1, max(len(s.loss_per_epoch) for s in segments) + 1):
      points.append({"epoch": e,
                     "seconds": max(sum(s.epoch_seconds[:e]) for s in segments),
                     "examples": [examples(s, min(e, len(s.loss_per_epoch))) for s in segments]})
    return points
  elapsed = 0.0
  for i, s in enumerate(segments):
    elapsed += handoff_seconds[i]
    before = [examples(t, len(t.loss_per_epoch)) for t in segments[:i]]
    for e in range(1, len(s.loss_per_epoch) + 1):
      points.append({"epoch": e, "seconds": elapsed + sum(s.epoch_seconds[:e]),
                     "examples": before + [examples(s, e)]})
    elapsed += sum(s.epoch_seconds)
  return points


def process_summaries(statuses: dict[int, dict], num_processes: int) -> list[dict[str, Any]]:
  """Per process: its segments, hosts and the bytes it sent (activations handed to another
  process, and trained parameters saved for the assembly)."""
  out = []
  for i in range(num_processes):
    mine = [s for k, s in sorted(statuses.items()) if owner(k, num_processes) == i]
    activations = sum(s.get("bytes_sent", {}).get("activations", 0) for s in mine)
    parameters = sum(s.get("bytes_sent", {}).get("parameters", 0) for s in mine)
    out.append({"process": i, "segments": [s["segment"] for s in mine],
                "hosts": sorted({s["host"] for s in mine if s.get("host")}),
                "devices": sorted({d for s in mine for d in s.get("process_devices", [])}),
                "bytes_sent": {"activations": activations, "parameters": parameters,
                               "total": activations + parameters}})
  return out


def assemble(problem: Any, run: RunDir, statuses: dict[int, dict], source: str,
             progress: Any) -> tuple[list[Any], dict[str, Any]]:
  """Composes the trained segments, evaluates them (and trains the recovery epochs, if any) on
  this process's devices; returns the methods and the results document."""
  order = range(len(problem.specs))
  params = [load_params(run.params(k)) for k in order]
  segments = [_segment_result(statuses[k]["result"]) for k in order]
  method = MethodResult(
      f"pnn-{problem.config.schedule}", segments=segments,
      transfers=[Transfer(**t) for k in order for t in statuses[k].get("transfers", [])],
      compile_seconds=sum(s.compile_seconds for s in segments),
      curve=curve(problem.config.schedule, segments,
                  [statuses[k].get("handoff_seconds", 0.0) for k in order]))
  method.wall_seconds = method.curve[-1]["seconds"] if method.curve else 0.0
  method.test_accuracy = S.make_evaluator(problem, problem.device_of(0))(params)
  runs = [method]
  if problem.config.recovery.epochs > 0:
    runs.append(S.train_recovery(problem, params, method, progress)[1])
  document = results_document("launch", problem, source, runs)
  summaries = process_summaries(statuses, run.num_processes)
  document["devices"] = sorted({d for p in summaries for d in p["devices"]},
                               key=lambda d: (d.split(":")[0], int(d.split(":")[-1])))
  document["processes"] = summaries
  return runs, document


# --- reports -------------------------------------------------------------------------------

def rerun_command(base: Sequence[str], segment: int, num_processes: int) -> str:
  """The command that trains `segment` alone into the same run directory."""
  return shlex.join(["synthpart", "launch", *base, "--num-processes", str(num_processes),
                     "--process-id", str(owner(segment, num_processes)),
                     "--only-segment", str(segment)])


def _exit_text(code: int | None) -> str:
  if code is None:
    return "exit code unknown"
  if code < 0:
    try:
      return f"exit code {code}, killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"exit code {code}"
  return f"exit code {code}"


def failure_report(run: RunDir, statuses: dict[int, dict], base: Sequence[str],
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
    exit_part = f"; process {p} {_exit_text(code)}" if known else ""
    lines.append(f"segment {k} (process {p}) {s['status']}: {why}{exit_part}")
    last = _last_error(run.process(p) / "log.txt") if not known else None
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


def _last_error(log: Path) -> str | None:
  """The error line a process printed before it died, if any."""
  try:
    lines = log.read_text(errors="replace").splitlines()
  except FileNotFoundError:
    return None
  errors = [line for line in lines if line.startswith("synthpart: error:")
            or re.match(r"^\w+(Error|Exception): ", line)]
  return errors[-1].removeprefix("synthpart: error: ")[:300] if errors else None


def summary_lines(document: dict[str, Any]) -> list[str]:
  lines = format_table([method_from_dict(r) for r in document["runs"]]).splitlines()
  for p in document.get("processes", []):
    sent = p["bytes_sent"]
    lines.append(f"process {p['process']} (segments {', '.join(map(str, p['segments']))}) sent "
                 f"{sent['activations']} bytes of activations, {sent['parameters']} bytes of "
                 "parameters")
  return lines


# --- one process, from the command line ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Identity:
  """Who this process is, from flags, then SYNTHPART_* variables; None: left to jax."""
  coordinator: str | None
  num_processes: int | None
  process_id: int | None


def _env_int(name: str, environ: dict[str, str]) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${name} must be an integer, got {value!r}") from None


def resolve_identity(args: argparse.Namespace,
                     environ: dict[str, str] | None = None) -> Identity:
  environ = dict(os.environ if environ is None else environ)
  identity = Identity(
      args.coordinator or environ.get(ENV_COORDINATOR) or None,
      args.num_processes if args.num_processes is not None
      else _env_int(ENV_NUM_PROCESSES, environ),
      args.process_id if args.process_id is not None else _env_int(ENV_PROCESS_ID, environ))
  if identity.num_processes is not None and identity.num_processes < 1:
    raise ConfigError(f"--num-processes must be at least 1, got {identity.num_processes}")
  pid, n = identity.process_id, identity.num_processes
  if pid is not None and (pid < 0 or (n is not None and pid >= n)):
    raise ConfigError(f"--process-id {pid} is outside 0..{'N' if n is None else n} - 1")
  if identity.coordinator is not None and ":" not in identity.coordinator:
    raise ConfigError(f"--coordinator must look like HOST:PORT, got {identity.coordinator!r}")
  return identity


def init_distributed(identity: Identity) -> tuple[int, int]:
  """jax.distributed.initialize with what is known (jax detects the rest on Slurm, Open MPI and
  TPU VMs); returns (process id, number of processes)."""
  try:
    # Without it, the death of one process makes every other abort at its next contact.
    jax.config.update("jax_enable_recoverability", True)
  except (AttributeError, KeyError, ValueError):
    pass  # a jax without the option: a death then ends the others too
  try:
    jax.distributed.initialize(identity.coordinator, identity.num_processes, identity.process_id)
  except RuntimeError as e:
    if "before any JAX calls" not in str(e):
      raise
    raise ConfigError("a multi-process launch must start in a fresh process, before anything "
                      "uses jax; run `synthpart launch` from the command line") from None
  except (ValueError, TypeError) as e:
    raise ConfigError(
        f"launch cannot tell which process this is ({e}); pass --coordinator HOST:PORT "
        f"--num-processes N --process-id I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, "
        f"${ENV_PROCESS_ID}), run under Slurm, Open MPI or on a TPU VM, or use --local N") from None
  state = jax_distributed.global_state
  return state.process_id, state.num_processes


def _client() -> Any:
  return jax_distributed.global_state.client


def local_devices(wanted: int) -> list[Any]:
  """Up to `wanted` of this process's devices; on CPU, that many are simulated."""
  try:
    jax.config.update("jax_num_cpu_devices", max(wanted, 1))
  except RuntimeError:
    pass  # the backend is already up (an embedding program chose): use the devices it has
  devices = jax.local_devices()
  return devices[:wanted] if 0 < wanted <= len(devices) else devices


def check_fresh(run: RunDir, overwrite: bool) -> None:
  """A launch never mixes with an earlier one in the same directory, unless told to replace it."""
  if run.root.exists() and not run.root.is_dir():
    raise ConfigError(f"--out {run.root} exists and is not a directory")
  if (run.plan.exists() or run.results.exists()) and not overwrite:
    raise ConfigError(f"--out {run.root} holds an earlier launch; pass --overwrite to replace "
                      "it, rerun its failed segments with --only-segment K, or choose another "
                      "directory")


def clear_run(run: RunDir) -> None:
  """Removes an earlier launch's outcome (statuses, parameters, hand-offs, results); logs stay."""
  for path in (run.plan, run.results, run.failures):
    path.unlink(missing_ok=True)
  shutil.rmtree(run.root / "handoff", ignore_errors=True)
  for directory in run.root.glob("process-*"):
    for path in [*directory.glob("segment-*"), directory / "exit.json"]:
      path.unlink(missing_ok=True)


def _same_settings(config: Any, plan: dict[str, Any]) -> bool:
  def canonical(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=list)
  return canonical(json.loads(canonical(config.to_dict()))) == canonical(plan.get("config"))


def child_arguments(args: argparse.Namespace, out: Path) -> list[str]:
  """The settings of this command line, as flags, for the processes it starts or reruns."""
  argv = setting_arguments(args) + ["--out", str(out)]
  if args.devices:
    argv += ["--devices", str(args.devices)]
  if args.heartbeat_timeout != HEARTBEAT_TIMEOUT:
    argv += ["--heartbeat-timeout", f"{args.heartbeat_timeout:g}"]
  return argv


def _parse_segments(text: str | None, num_segments: int) -> tuple[int, ...]:
  if text is None:
    return ()
  try:
    segments = tuple(sorted({int(v) for v in text.replace(" ", "").split(",") if v}))
  except ValueError:
    raise ConfigError(f"--only-segment must list segment numbers, e.g. 1 or 1,2; got {text!r}")
  if not segments or any(k < 0 or k >= num_segments for k in segments):
    raise ConfigError(f"--only-segment {text} is outside segments 0..{num_segments - 1}")
  return segments


def run_segments(ctx: Context, problem: Any, own: Sequence[int]) -> dict[int, dict]:
  if problem.config.schedule == "parallel":
    return train_parallel_segments(ctx, problem, own)
  return train_sequential_segments(ctx, problem, own)


def _publish(error: str | None) -> None:
  _client().key_value_set(READY_KEY, "error " + error if error else "go")


def _await_go() -> None:
  answer = _client().blocking_key_value_get(READY_KEY, READY_TIMEOUT_MS)
  if answer != "go":
    raise ConfigError(f"process 0 stopped the launch: {answer.removeprefix('error ')}")


def _finish_run(ctx: Context, problem: Any, statuses: dict[int, dict], source: str,
                base: Sequence[str], args: argparse.Namespace) -> bool:
  """Assembles and writes results.json if every segment is done; else writes failures.json.

  Returns whether the run is complete.
  """
  run = ctx.run
  if all(s["status"] == "done" for s in statuses.values()):
    runs, document = assemble(problem, run, statuses, source, ctx.progress)
    write_json_atomic(run.results, document)
    run.failures.unlink(missing_ok=True)
    if args.tensorboard:
      write_tensorboard(document, run.root / "tensorboard")
    print("\n".join(summary_lines(document)))
    print(f"results: {run.results}")
    return True
  lines, document = failure_report(run, statuses, base)
  write_json(run.failures, document)
  ctx.log("the network is incomplete:\n" + "\n".join(lines))
  return False


def _await_exits(run: RunDir, liveness: Liveness, others: Sequence[int]) -> None:
  """Process 0 hosts jax's coordinator: a peer still connected when it leaves would abort."""
  for p in others:
    while liveness.lost(p) is None:
      time.sleep(POLL_SECONDS)


def run_process(args: argparse.Namespace, config: Any, out: Path, identity: Identity) -> int:
  """One process of a launch: its segments, then (process 0) the network."""
  num_segments = config.model.num_segments
  sizes = config.placement.sizes(num_segments)
  coordinated = identity.num_processes != 1
  pid, n = init_distributed(identity) if coordinated else (0, 1)
  if n > num_segments:
    raise ConfigError(f"{n} processes for {num_segments} segments: a process would have "
                      "nothing to train (segment k trains in process k mod N)")
  run = RunDir(out, n)
  own = segments_of(pid, n, num_segments)
  devices = local_devices(args.devices or sum(sizes[k] for k in own))
  write_json(run.process(pid) / "process.json",
             {"process": pid, "host": socket.gethostname(), "pid": os.getpid(),
              "devices": [f"{d.platform}:{d.id}" for d in devices]})
  liveness = Liveness(run, args.heartbeat_timeout)
  ctx = Context(run, pid, liveness, Progress(quiet=args.quiet,
                                             log_path=run.process(pid) / "progress.txt"))
  base = child_arguments(args, out)
  complete, own_ok = False, False
  try:
    with Heartbeat(run.heartbeat(pid)):
      dataset, problem = None, None
      if pid == 0:
        # The others wait for word from here before they touch the run directory: whatever
        # goes wrong, they must hear it, or they would wait for a go that never comes.
        try:
          check_fresh(run, args.overwrite)
          if args.overwrite:
            clear_run(run)
          write_json(run.plan, {"num_processes": n, "schedule": config.schedule,
                                "segments": {str(k): owner(k, n) for k in range(num_segments)},
                                "config": config.to_dict()})
          dataset = prepare_dataset(config, progress=False)
        except Exception as e:
          if coordinated:
            _publish(_error_text(e))
          raise
        if coordinated:
          _publish(None)
      else:
        _await_go()
      outcomes: dict[int, dict] = {}
      try:
        dataset = dataset or prepare_dataset(config, progress=False)
        problem = make_problem(config, dataset, devices)
        problem = dataclasses.replace(problem, groups=own_groups(devices, sizes, own))
        outcomes = run_segments(ctx, problem, own)
      except Exception as e:  # before any segment could start: all of them fail alike
        for k in own:
          if k not in outcomes:
            outcomes[k] = _fail(ctx, k, e)
      own_ok = all(s["status"] == "done" for s in outcomes.values())
      if pid == 0:
        statuses = {k: outcomes.get(k) or wait_for_status(run, k, liveness)
                    for k in range(num_segments)}
        complete = _finish_run(ctx, problem, statuses, getattr(dataset, "source", ""), base,
                               args)
  finally:
    if coordinated and pid == 0:
      _await_exits(run, liveness, range(1, n))
    if coordinated:
      try:
        jax.distributed.shutdown()
      except Exception:  # leaving is best effort: the work is on disk already
        pass
    code = 0 if own_ok and (pid != 0 or complete) else EXIT_INCOMPLETE
    write_json(run.exit_marker(pid), {"exit_code": code, "written_by": "process"})
  return code


def run_only(args: argparse.Namespace, config: Any, out: Path, identity: Identity,
             only: tuple[int, ...]) -> int:
  """Trains the segments `only` alone, into an earlier launch's directory; then assembles the
  network if every segment is now done. Needs no coordinator and no other process."""
  plan = read_json(out / "launch.json")
  n = identity.num_processes or (plan or {}).get("num_processes")
  if not n:
    raise ConfigError(f"--only-segment needs --num-processes N (that of the launch in {out}), "
                      f"or {out / 'launch.json'}")
  if plan is not None and plan.get("num_processes") not in (None, n):
    raise ConfigError(f"the launch in {out} ran {plan['num_processes']} processes, not {n}")
  if plan is not None and not _same_settings(config, plan):
    raise ConfigError(f"these settings differ from those of the launch in {out} "
                      f"({out / 'launch.json'}); rerun with the launch's own settings")
  run = RunDir(out, n)
  if run.results.exists() and not args.overwrite:
    raise ConfigError(f"--out {out} already holds results.json; pass --overwrite to replace it")
  pid = identity.process_id if identity.process_id is not None else owner(only[0], n)
  sizes = config.placement.sizes(config.model.num_segments)
  devices = local_devices(args.devices or sum(sizes[k] for k in only))
  ctx = Context(run, pid, None, Progress(quiet=args.quiet,
                                         log_path=run.process(pid) / "progress.txt"))
  for k in only:
    run.status(k).unlink(missing_ok=True)
  dataset = prepare_dataset(config, progress=False)
  problem = make_problem(config, dataset, devices)
  problem = dataclasses.replace(problem, groups=own_groups(devices, sizes, only))
  outcomes = run_segments(ctx, problem, only)
  statuses = {k: outcomes.get(k) or read_json(run.status(k)) for k in range(len(problem.specs))}
  missing = [k for k, s in statuses.items() if s is None or s["status"] != "done"]
  if not missing:
    _finish_run(ctx, problem, statuses, dataset.source, child_arguments(args, out), args)
  else:
    ctx.log(f"segments {', '.join(map(str, missing))} are not done yet: the network is "
            "assembled once every segment is")
  return 0 if all(outcomes[k]["status"] == "done" for k in only) else EXIT_INCOMPLETE


# --- the local launcher --------------------------------------------------------------------

def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _mark_dead(run: RunDir, process: int, code: int, num_segments: int) -> None:
  """Records, for a process that died, its exit and the segments it left without a status."""
  for k in segments_of(process, run.num_processes, num_segments):
    _write_status_once(run, _status(k, process, "failed",
                                    f"process {process} died: {_exit_text(code)}",
                                    written_by="launcher"))
  if not run.exit_marker(process).exists():
    write_json(run.exit_marker(process), {"exit_code": code, "written_by": "launcher"})


def launch_local(args: argparse.Namespace, config: Any) -> int:
  """Starts `args.local` processes on this machine (a free port on 127.0.0.1) and waits for them.

  A process that dies gets its unfinished segments marked failed at once, so the others stop
  waiting for them; at the end, every failed segment is reported with its rerun command.
  """
  n = args.local
  num_segments = config.model.num_segments
  if n < 1 or n > num_segments:
    raise ConfigError(f"--local {n}: give 1 to {num_segments} processes (one per segment at most; "
                      "segment k trains in process k mod N)")
  if args.coordinator or args.num_processes is not None or args.process_id is not None:
    raise ConfigError("--local starts its own processes: leave out --coordinator, "
                      "--num-processes and --process-id")
  out = Path(args.out or f"runs/launch-{time.strftime('%Y%m%d-%H%M%S')}")
  run = RunDir(out, n)
  check_fresh(run, args.overwrite)
  base = child_arguments(args, out)
  coordinator = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  children = []
  for i in range(n):
    run.process(i).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "synthpart", "launch", *base, "-q",
               *(["--overwrite"] if args.overwrite else []),
               "--coordinator", coordinator, "--num-processes", str(n), "--process-id", str(i)]
    with open(run.process(i) / "log.txt", "wb") as log:
      children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
  if not args.quiet:
    print(f"launched {n} processes (coordinator {coordinator}); logs in "
          f"{out}/process-*/log.txt", file=sys.stderr)
  codes: dict[int, int] = {}
  try:
    while len(codes) < n:
      for i, child in enumerate(children):
        code = child.poll()
        if code is not None and i not in codes:
          codes[i] = code
          if code != 0:
            _mark_dead(run, i, code, num_segments)
      time.sleep(POLL_SECONDS)
  except KeyboardInterrupt:
    for child in children:
      if child.poll() is None:
        child.terminate()
    for child in children:
      child.wait()
    raise
  return report_launch(run, num_segments, codes, base)


def report_launch(run: RunDir, num_segments: int, codes: dict[int, int],
                  base: Sequence[str]) -> int:
  statuses = {k: read_json(run.status(k)) or _status(k, owner(k, run.num_processes), "failed",
                                                     "no status written")
              for k in range(num_segments)}
  document = read_json(run.results)
  if document is not None and all(s["status"] == "done" for s in statuses.values()):
    print("\n".join(summary_lines(document)))
    print(f"results: {run.results}")
    return 0 if all(code == 0 for code in codes.values()) else EXIT_INCOMPLETE
  lines, _ = failure_report(run, statuses, base, codes)
  print("synthpart: the launch did not complete:", file=sys.stderr)
  print("\n".join(f"  {line}" for line in lines), file=sys.stderr)
  return EXIT_INCOMPLETE


# --- the command ---------------------------------------------------------------------------

def add_launch_command(sub: Any) -> None:
  """Registers `synthpart launch` on the CLI's subparsers."""
  p = sub.add_parser("launch", help="train one configuration in several processes (one per "
                     "segment group, through jax.distributed), e.g. under Slurm or on a TPU slice")
  add_run_arguments(p)
  g = p.add_argument_group("processes")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help=f"process 0's address and a free port (or ${ENV_COORDINATOR})")
  g.add_argument("--num-processes", type=int, metavar="N",
                 help=f"number of processes (or ${ENV_NUM_PROCESSES}); segment k trains in "
                      "process k mod N")
  g.add_argument("--process-id", type=int, metavar="I",
                 help=f"this process's number, 0..N-1 (or ${ENV_PROCESS_ID})")
  g.add_argument("--local", type=int, metavar="N",
                 help="start N processes on this machine and wait for them (testing, one host)")
  g.add_argument("--only-segment", metavar="K[,K...]",
                 help="train only these segments, alone and without a coordinator, into the run "
                      "directory of an earlier launch (to rerun a failed one); the network is "
                      "assembled once every segment is done")
  g.add_argument("--heartbeat-timeout", type=float, default=HEARTBEAT_TIMEOUT, metavar="S",
                 help="seconds without a heartbeat after which a process counts as dead "
                      "(default 120)")
  p.set_defaults(func=run_launch)


def run_launch(args: argparse.Namespace) -> int:
  config = load_config(args)
  if getattr(args, "resume", False):
    raise ConfigError("launch does not --resume: rerun its failed segments with --only-segment K")
  if args.heartbeat_timeout <= 0:
    raise ConfigError(f"--heartbeat-timeout must be positive, got {args.heartbeat_timeout}")
  if config.model.num_segments < 2:
    raise ConfigError("launch trains segments: give at least one cut (model.cuts)")
  if args.local is not None:
    if args.only_segment is not None:
      raise ConfigError("--only-segment runs one process alone: leave out --local")
    return launch_local(args, config)
  identity = resolve_identity(args)
  if not args.out:
    raise ConfigError("launch needs --out DIR, on storage every process sees")
  out = Path(args.out)
  only = _parse_segments(args.only_segment, config.model.num_segments)
  if only:
    return run_only(args, config, out, identity, only)
  return run_process(args, config, out, identity)
