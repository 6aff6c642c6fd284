"""Per-loop checkpoints (orbax): save, restore, and crash points for resume tests.

Each loop (the conventional network, a segment, the recovery epochs) checkpoints its own
`TrainState` every `every` epochs and after its last one, keeping the last `keep`, under
DIR/checkpoints/<method>/<loop>/<epoch>/ (orbax: state = params + optimizer, and meta = JSON).
The JSON meta holds the epoch, the loop's PRNG key data, its losses and timings so far, and the
method's curve. The data order needs no storing: an epoch's order is a pure function of (key,
epoch). A sha256 of the arrays, kept in the meta, catches damage that orbax's own format would
not notice. The meta also holds the run's fingerprint (`run_fingerprint`: the sha256 of the
run's settings and its data's fingerprint, `Policy.run`), and `restore` refuses a checkpoint of
another run, copied in or trained before config.json was edited; a checkpoint without one (an
older one) restores unchecked. Orbax writes each step to a temporary directory and renames it
when complete, so a crash mid-write leaves the previous checkpoint as the latest (and `restore`
removes what it left). `restore` places a checkpoint on the device it is given, whatever devices
saved it, once the arrays' names, shapes and dtypes (from orbax's metadata) are those the caller
expects; a damaged one is one `CheckpointError`, and the reads orbax leaves behind it print
nothing. Checkpoints are arrays and JSON: never pickles. The run directory around them is
`synthpart.rundir`'s.

It is over 400 lines because orbax's failures need quieting in three places (a damaged read,
a full disk, the reads and writes they leave running), kept beside the saves and restores they
follow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from synthpart.errors import CheckpointError, DiskFullError
from synthpart.files import is_disk_full

CRASH_ENV = "SYNTHPART_CRASH_AT"
# Orbax writes each step into "<step>.orbax-checkpoint-tmp-<n>" and renames it when complete.
ORBAX_TMP = ".orbax-checkpoint-tmp"


def crash_point(name: str, directory: Path | None = None) -> None:
  """SIGKILLs this process where $SYNTHPART_CRASH_AT names this point: resume is tested against
  real deaths. With `directory`, death comes while orbax is writing into it."""
  if os.environ.get(CRASH_ENV) != name:
    return
  if directory is None:
    os.kill(os.getpid(), signal.SIGKILL)
    return
  watched = directory

  def kill_when_writing() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      if watched.exists() and any("tmp" in p.name for p in watched.iterdir()):
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(0.0005)

  threading.Thread(target=kill_when_writing, daemon=True).start()


def run_fingerprint(settings: dict[str, Any], data_fingerprint: str | None) -> str:
  """The fingerprint of the run a checkpoint belongs to: the sha256 of `settings` (a
  `Config.to_dict()`, as config.json and results.json's "config" store it) as canonical JSON
  (sorted keys, no spaces), a newline, and `data_fingerprint` (that of the data; "" where none).
  The caller passes the settings without the data's fingerprint: training and export hash the
  same dict whichever file they read it from."""
  text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=True)
  return hashlib.sha256(f"{text}\n{data_fingerprint or ''}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Policy:
  """Where and how often loops checkpoint; `run`, the run's fingerprint (`run_fingerprint`),
  written into every checkpoint's meta and checked by `restore` (None: neither)."""
  root: Path
  every: int = 1
  keep: int = 2
  run: str | None = None

  def loop_dir(self, method: str, loop: str) -> Path:
    return self.root / "checkpoints" / _slug(method) / _slug(loop)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")


def _reader(directory: Path) -> ocp.CheckpointManager:
  """A manager that reads a loop's steps: their metadata (shapes, dtypes) and their arrays."""
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False)
  return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def _manager(directory: Path, keep: int):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def save(policy: Policy, method: str, loop: str, epoch: int, state: Any,
         meta: dict[str, Any]) -> Path:
  """Writes `state` (a pytree of arrays) and `meta` (JSON) as step `epoch` of the loop."""
  directory = policy.loop_dir(method, loop)
  meta = {**meta, "digest": state_digest(state)}
  if policy.run is not None:
    meta["run"] = policy.run
  crash_point(f"checkpoint-write:{method}/{loop}:{epoch}", directory)
  with _leftovers_dropped():
    try:
      with _quiet_disk_full(), _manager(directory, policy.keep) as manager:
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()
      failure = None
    except Exception as e:  # orbax and tensorstore wrap the system's error in their own types
      if not is_disk_full(e):
        raise
      failure = DiskFullError(f"no space left on the device writing checkpoint "
                              f"{directory / str(epoch)}")
    if failure is not None:
      gc.collect()  # the failed write's coroutines, while their noise is dropped
  if failure is not None:
    logging.getLogger("absl").addFilter(_LeftoverWrites())
    raise failure
  crash_point(f"checkpoint-saved:{method}/{loop}:{epoch}")
  return directory / str(epoch)


class _DiskFullRecords(logging.Filter):
  """Drops log records that report a full disk: orbax logs its writer threads' errors with
  their tracebacks, and `save` reports a full disk itself, in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(os.strerror(code) in record.getMessage()
                   for code in (errno.ENOSPC, errno.EDQUOT))


class _LeftoverWrites(logging.Filter):
  """Drops what orbax's writer threads log as they end after a save failed on a full disk
  ("_SignalingThread.run() raised an exception: RESOURCE_EXHAUSTED ...", "cannot schedule new
  futures after shutdown"): `save` reported the full disk itself, in one line. Installed once a
  save failed; those threads end at any time after."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "_SignalingThread.run() raised an exception" not in record.getMessage()


@contextlib.contextmanager
def _quiet_disk_full() -> Iterator[None]:
  logger, drops = logging.getLogger("absl"), (_DiskFullRecords(), _LeftoverWrites())
  for drop in drops:
    logger.addFilter(drop)
  try:
    yield
  finally:
    for drop in drops:
      logger.removeFilter(drop)


def state_digest(state: Any) -> str:
  """sha256 over every array's dtype, shape and bytes: orbax stores raw chunks without checksums,
  so a flipped bit would otherwise restore silently."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def remove_incomplete(policy: Policy, method: str, loop: str) -> list[Path]:
  """Deletes the step directories orbax left half-written (a crash or a full disk mid-save);
  returns them. Complete steps are never touched."""
  directory = policy.loop_dir(method, loop)
  if not directory.is_dir():
    return []
  partial = [p for p in directory.iterdir() if ORBAX_TMP in p.name]
  for path in partial:
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
  return partial


def latest(policy: Policy, method: str, loop: str, at_most: int | None = None) -> int | None:
  """The newest complete step of a loop (no later than `at_most`, where given), or None."""
  directory = policy.loop_dir(method, loop)
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir()
           if p.name.isdigit() and (p / "meta").exists()
           and (at_most is None or int(p.name) <= at_most)]
  return max(steps) if steps else None


def discard_after(policy: Policy, method: str, loop: str, step: int) -> None:
  """Deletes a loop's checkpoints of epochs after `step`: a loop taken back to an earlier
  epoch trains those epochs again and saves them anew."""
  directory = policy.loop_dir(method, loop)
  if directory.is_dir():
    for path in directory.iterdir():
      if path.name.isdigit() and int(path.name) > step:
        # Renamed first: a kill while deleting leaves what `remove_incomplete` clears.
        doomed = path.with_name(f"{path.name}{ORBAX_TMP}-discarded")
        path.rename(doomed)
        shutil.rmtree(doomed)


def _name(path: tuple[Any, ...]) -> str:
  """A leaf's key path as orbax names it: "params.0.kernel" (dict keys, indices, fields)."""
  parts = []
  for entry in path:
    for attribute in ("key", "idx", "name"):
      if hasattr(entry, attribute):
        parts.append(str(getattr(entry, attribute)))
        break
    else:
      parts.append(str(entry))
  return ".".join(parts)


def _described(shape: Any, dtype: Any) -> str:
  return f"{np.dtype(dtype).name}{list(shape)}"


def check_stored(stored: Any, like: Any, where: str, expected: str) -> None:
  """Raises `CheckpointError` unless the arrays a checkpoint's metadata describes (`stored`, a
  tree of orbax metadata) are those of `like`: the same names, shapes and dtypes. `where` names
  the checkpoint, `expected` what `like` is (e.g. "the network results.json describes")."""
  have = {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
  want = {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]}
  problems = []
  for name in sorted(want.keys() - have.keys())[:3]:
    problems.append(f"{name} missing")
  for name in sorted(have.keys() - want.keys())[:3]:
    problems.append(f"{name} not in it")
  for name in sorted(want.keys() & have.keys(), key=lambda n: (not n.startswith("params"), n)):
    a, b = have[name], want[name]
    shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
    if shape is None or dtype is None:
      problems.append(f"{name} is no array")
    elif tuple(shape) != tuple(b.shape) or np.dtype(dtype) != np.dtype(b.dtype):
      problems.append(f"{name} is {_described(shape, dtype)}, the network's "
                      f"{_described(b.shape, b.dtype)}")
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise CheckpointError(f"checkpoint {where} does not hold {expected}: "
                          f"{'; '.join(problems[:3])}{more}")


def _placed(like: Any, device: jax.Device | jax.sharding.Sharding) -> Any:
  """`like`'s shapes and dtypes as abstract arrays on `device` (a sharding for a group)."""
  sharding = (device if isinstance(device, jax.sharding.Sharding)
              else jax.sharding.SingleDeviceSharding(device))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), like)


def restore(policy: Policy, method: str, loop: str, like: Any,
            device: jax.Device | jax.sharding.Sharding,
            at_most: int | None = None, tidy: bool = True,
            expected: str = "the loop's parameters") -> tuple[Any, dict[str, Any]] | None:
  """The loop's newest checkpoint (of an epoch no later than `at_most`, where given), restored
  onto `device` in the structure of `like` (arrays or `jax.ShapeDtypeStruct`s), whatever the
  devices it was saved from.

  Returns None where the loop has none. Arrays of other names, shapes or dtypes than `like`'s
  (`expected` says what that is), a corrupt or truncated checkpoint, or arrays whose digest
  differs from the one saved with them raise `CheckpointError`, and so does a checkpoint whose
  meta records a run other than `policy.run` (where both are known). With `tidy`, half-written steps
  left by an interrupted save are deleted first (a reader of another process's run passes
  False).
  """
  if tidy:
    remove_incomplete(policy, method, loop)
  step = latest(policy, method, loop, at_most)
  if step is None:
    return None
  path = policy.loop_dir(method, loop) / str(step)

  def read() -> tuple[Any, dict[str, Any]]:
    with _reader(policy.loop_dir(method, loop)) as manager:
      check_stored(manager.item_metadata(step)["state"], like, str(path), expected)
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_placed(like, device)), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    if str(jax.tree.structure(state)) != str(jax.tree.structure(like)):
      raise ValueError("its arrays do not match the loop's parameters")
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] != step:
      raise ValueError("its meta has no matching epoch")
    if meta.get("digest") != state_digest(state):
      raise ValueError("its arrays do not match the digest written with them")
    return state, meta

  state, meta = _guarded(path, read)
  check_run(policy.run, path, meta)
  return state, meta


def check_run(run: str | None, path: Path, meta: dict[str, Any]) -> None:
  """Raises `CheckpointError` where the checkpoint at `path`, of meta `meta`, records a run other
  than `run` (`run_fingerprint`); None, or a checkpoint that records none, passes."""
  written_by = meta.get("run")
  if run is not None and written_by is not None and written_by != run:
    raise CheckpointError(f"checkpoint {path} was written by another run (other settings or "
                          "data); --overwrite to start again")


def read_tree(directory: Path, like: Any, device: jax.Device, expected: str) -> Any:
  """The pytree an `ocp.StandardCheckpointer` saved in `directory`, restored onto `device` in the
  structure of `like` after its names, shapes and dtypes are checked (`check_stored`).
  `CheckpointError` where it is missing, of another network, corrupt or truncated."""
  directory = directory.absolute()
  if not directory.is_dir():
    raise CheckpointError(f"{directory} is missing")

  def read() -> Any:
    with ocp.StandardCheckpointer() as reader:
      check_stored(reader.metadata(directory).item_metadata, like, str(directory), expected)
      return reader.restore(directory, _placed(like, device))

  return _guarded(directory, read)


_T = TypeVar("_T")


def _guarded(path: Path, read: Callable[[], _T]) -> _T:
  """`read()`, an orbax read of the checkpoint at `path`; any error of a damaged file becomes
  one `CheckpointError`, and nothing else is printed.

  Where one array fails, the reads orbax started alongside it are left unfinished: their
  coroutines are collected here, their "never awaited" warnings dropped, and what tensorstore's
  threads print when they end after orbax's event loop has closed is dropped by
  `_LeftoverReads`, from the first read on.
  """
  with _leftovers_dropped():
    try:
      return read()
    except CheckpointError as e:
      failure = CheckpointError(str(e))
    except Exception as e:  # orbax and tensorstore raise many types for damaged files
      failure = CheckpointError(f"checkpoint {path} is corrupt or truncated: {_innermost(e)}")
    gc.collect()  # the failed read's frames and coroutines, while their noise is dropped
  raise failure  # outside the handler: it holds no reference to the failed read


@contextlib.contextmanager
def _leftovers_dropped() -> Iterator[None]:
  """Around an orbax read or write that may fail: drops the "never awaited" warnings of the
  coroutines a failure leaves (collect them inside), and from the first use on, what its
  leftover operations print as they end (`_LeftoverReads`)."""
  _LeftoverReads.install()
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
    yield


def _innermost(e: BaseException) -> str:
  """The first line of the innermost error `e` was raised from (tensorstore's own says what is
  damaged: "ZSTD_decompressStream() failed", "Error reading ...")."""
  lines = []
  seen: set[int] = set()
  cause: BaseException | None = e
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    text = str(cause).strip()
    if text:
      lines.append(text.splitlines()[0])
    cause = cause.__cause__ or cause.__context__
  return lines[-1][:300] if lines else type(e).__name__


class _LeftoverReads:
  """An `sys.unraisablehook` that drops exactly the noise of reads orbax left running when a
  restore failed: tensorstore's callbacks that find orbax's event loop closed ("Event loop is
  closed" in asyncio's `call_soon_threadsafe`), and orbax's or tensorstore's coroutines that are
  collected unfinished. Everything else goes to the hook it replaced. Installed once, it stays:
  those callbacks come at any time after the failed read."""

  def __init__(self, previous: Any) -> None:
    self.previous = previous

  @classmethod
  def install(cls) -> _LeftoverReads:
    if not isinstance(sys.unraisablehook, cls):
      sys.unraisablehook = cls(sys.unraisablehook)
      logging.getLogger("asyncio").addFilter(_UnretrievedReads())
    return sys.unraisablehook

  def __call__(self, unraisable: Any) -> None:
    if not _is_leftover(unraisable):
      self.previous(unraisable)


class _UnretrievedReads(logging.Filter):
  """Drops asyncio's "Task (or Future) exception was never retrieved" records of the tensorstore
  reads a failed restore left behind (their errors are tensorstore's statuses, "DATA_LOSS:
  ..."): the restore reported the damage itself, in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (re.match(r"(Task|Future) exception was never retrieved", record.getMessage())
                and isinstance(error, ValueError)
                and re.match(r"[A-Z_]+: ", str(error)) is not None)


def _is_leftover(unraisable: Any) -> bool:
  error, obj = unraisable.exc_value, unraisable.object
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(f.name == "call_soon_threadsafe" for f in frames)
  code = getattr(obj, "cr_code", None) or getattr(getattr(obj, "get_coro", None) and
                                                  obj.get_coro(), "cr_code", None)
  filename = getattr(code, "co_filename", "")
  return any(f"{os.sep}{package}{os.sep}" in filename for package in ("orbax", "tensorstore"))


def load_params(policy: Policy, method: str, loop: str) -> Any:
  """The parameters of a loop's newest checkpoint, as host arrays (for inspection and tests)."""
  step = latest(policy, method, loop)
  if step is None:
    raise CheckpointError(f"no checkpoint of {method}/{loop} under {policy.root}")
  with _manager(policy.loop_dir(method, loop), policy.keep) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, restored["state"])
