"""Per-loop checkpoints (orbax) and the run directory that holds them.

A run directory::

  DIR/config.json        the run's settings; --resume refuses a different one
  DIR/results.json       rewritten atomically after every method
  DIR/log.txt            one line per epoch of every loop, and every note
  DIR/checkpoints/<method>/<loop>/<epoch>/   orbax: state (params + optimizer) and meta (JSON)

Each loop (the conventional network, a segment, the recovery epochs) checkpoints its own
`TrainState` every `every` epochs and after its last one, keeping the last `keep`. The JSON meta
holds the epoch, the loop's PRNG key data, its losses and timings so far, and the method's curve.
The data order needs no storing: an epoch's order is a pure function of (key, epoch). A sha256
of the arrays, kept in the meta, catches damage that orbax's own format would not notice.
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-write
leaves the previous checkpoint as the latest. Checkpoints are arrays and JSON: never pickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from synthpart.errors import CheckpointError
from synthpart.files import write_json_atomic

CRASH_ENV = "SYNTHPART_CRASH_AT"


def crash_point(name: str, directory: Path | None = None) -> None:
  """SIGKILLs this process where $SYNTHPART_CRASH_AT names this point: resume is tested against
  real deaths. With `directory`, death comes while orbax is writing into it."""
  if os.environ.get(CRASH_ENV) != name:
    return
  if directory is None:
    os.kill(os.getpid(), signal.SIGKILL)

  def kill_when_writing() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      if directory.exists() and any("tmp" in p.name for p in directory.iterdir()):
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(0.0005)

  threading.Thread(target=kill_when_writing, daemon=True).start()


@dataclasses.dataclass(frozen=True)
class Policy:
  """Where and how often loops checkpoint."""
  root: Path
  every: int = 1
  keep: int = 2

  def loop_dir(self, method: str, loop: str) -> Path:
    return self.root / "checkpoints" / _slug(method) / _slug(loop)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")


def _manager(directory: Path, keep: int):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def save(policy: Policy, method: str, loop: str, epoch: int, state: Any,
         meta: dict[str, Any]) -> Path:
  """Writes `state` (a pytree of arrays) and `meta` (JSON) as step `epoch` of the loop."""
  directory = policy.loop_dir(method, loop)
  meta = {**meta, "digest": state_digest(state)}
  crash_point(f"checkpoint-write:{method}/{loop}:{epoch}", directory)
  with _manager(directory, policy.keep) as manager:
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
  crash_point(f"checkpoint-saved:{method}/{loop}:{epoch}")
  return directory / str(epoch)


def state_digest(state: Any) -> str:
  """sha256 over every array's dtype, shape and bytes: orbax stores raw chunks without checksums,
  so a flipped bit would otherwise restore silently."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def latest(policy: Policy, method: str, loop: str) -> int | None:
  """The newest complete step of a loop, or None."""
  directory = policy.loop_dir(method, loop)
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir()
           if p.name.isdigit() and (p / "meta").exists()]
  return max(steps) if steps else None


def restore(policy: Policy, method: str, loop: str, like: Any,
            device: jax.Device | jax.sharding.Sharding) -> tuple[Any, dict[str, Any]] | None:
  """The loop's newest checkpoint, restored onto `device` in the structure of `like`.

  Returns None where the loop has none. A corrupt or truncated one raises `CheckpointError`.
  """
  step = latest(policy, method, loop)
  if step is None:
    return None
  path = policy.loop_dir(method, loop) / str(step)
  # A segment group's "device" is already a sharding (replicated over the group's devices).
  sharding = (device if isinstance(device, jax.sharding.Sharding)
              else jax.sharding.SingleDeviceSharding(device))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          like)
  try:
    with _manager(policy.loop_dir(method, loop), policy.keep) as manager:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    if jax.tree.structure(state) != jax.tree.structure(like):
      raise ValueError("its arrays do not match the loop's parameters")
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] != step:
      raise ValueError("its meta has no matching epoch")
    if meta.get("digest") != state_digest(state):
      raise ValueError("its arrays do not match the digest written with them")
  except CheckpointError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first[:200]}") from None
  return state, meta


def write_run_config(root: Path, config: dict[str, Any]) -> None:
  """Stores the run's settings, atomically."""
  write_json_atomic(root / "config.json", config)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  if isinstance(tree, (list, tuple)) and any(isinstance(v, dict) for v in tree):
    out = {}
    for i, value in enumerate(tree):
      out.update(_flatten(value, f"{prefix}{i}."))
    return out
  return {prefix.rstrip("."): list(tree) if isinstance(tree, tuple) else tree}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """The dotted settings whose values differ between two config documents."""
  a, b = _flatten(stored), _flatten(json.loads(json.dumps(current)))
  return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def holds_run(root: Path, markers: Sequence[str]) -> bool:
  """Whether the run directory `root` already holds a run: one of the files `markers` is in it.

  Raises `CheckpointError` where `root` exists and is not a directory. Every command that claims
  a run directory (a run, a launch) checks it here, and words its refusal itself.
  """
  if root.exists() and not root.is_dir():
    raise CheckpointError(f"--out {root} exists and is not a directory")
  return any((root / name).exists() for name in markers)


def prepare_run_dir(root: Path, config: dict[str, Any], *, resume: bool, overwrite: bool,
                    dry_run: bool = False) -> None:
  """Claims `root` for a run: a fresh directory, or the same run when resuming.

  Refuses a directory holding another run unless `resume` (same settings only) or `overwrite`.
  Nothing is written before the checks pass, and nothing at all with `dry_run`.
  """
  holds_another = holds_run(root, ("config.json", "results.json"))
  stored_path = root / "config.json"
  if resume:
    if not stored_path.exists():
      raise CheckpointError(f"--resume: {root} holds no run to resume (no config.json)")
    try:
      stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{stored_path} cannot be read: {e}") from None
    differing = config_differences(stored, config)
    if differing:
      raise CheckpointError(f"--resume: the settings differ from the run in {root}: "
                            f"{', '.join(differing)}")
    return
  if holds_another and not overwrite:
    raise CheckpointError(f"--out {root} holds another run; pass --resume to continue it or "
                          "--overwrite to replace it")
  if dry_run:
    return
  if overwrite and (root / "checkpoints").exists():
    shutil.rmtree(root / "checkpoints")
  root.mkdir(parents=True, exist_ok=True)
  write_run_config(root, config)


def load_params(policy: Policy, method: str, loop: str) -> Any:
  """The parameters of a loop's newest checkpoint, as host arrays (for inspection and tests)."""
  step = latest(policy, method, loop)
  if step is None:
    raise CheckpointError(f"no checkpoint of {method}/{loop} under {policy.root}")
  with _manager(policy.loop_dir(method, loop), policy.keep) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, restored["state"])
