"""One exported model: a trained method's composed network as parameters plus a serialised function.

    synthpart export RUN_DIR --method pnn-sequential+recovery --out DIR [--overwrite]

writes DIR/params (orbax: the composed network's parameters), DIR/model.jax (`jax.export`
bytes of `logits(params, x)`, lowered for CPU, CUDA and TPU, any batch size; `x` is the dataset's
raw input, e.g. uint8 NHWC images, so the preprocessing travels with the model) and
DIR/model.json (input shape and dtype, classes, method, where it came from, the parameters'
sha256). `synthpart.load_model(DIR)` returns a callable x -> logits. Nothing is pickled.

Every checkpoint is restored onto one host device, whatever devices the run trained on, and
checked as `--resume` checks it: its arrays' names, shapes and dtypes against the network that
results.json describes, their sha256 against the one saved with them, and the run that wrote
them (the hash of results.json's settings and data fingerprint: `checkpoint.run_fingerprint`)
against this one. The model is written
into a temporary directory beside DIR and renamed into place once complete, so DIR holds one
whole export or none. DIR must be new or empty; `--overwrite` replaces an earlier export (a
directory holding model.json and nothing but the export's files), only once the new one is
complete.

It is over 400 lines because an export is one transaction: checks of the run, the restore,
the lowering and the atomic write read best together, in that order.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax import export as jax_export

from synthpart import checkpoint
from synthpart.config import Config, from_dict
from synthpart.data import check_fingerprint
from synthpart.data.dataset import check_num_classes
from synthpart.errors import CheckpointError, ConfigError, DiskFullError, SynthpartError
from synthpart.files import is_disk_full, umask, write_atomic, write_json_atomic
from synthpart.model import (
  Params,
  build_network,
  compose,
  init_segment,
  network_shapes,
  whole_network,
)
from synthpart.optim import LoopSettings, make_optimizer
from synthpart.partition import SegmentSpec, plan_segments
from synthpart.prepare import prepare_fingerprinted
from synthpart.rundir import claim, refuse_nesting
from synthpart.train.epoch import TrainState
from synthpart.train.objectives import Constants, Inputs, Task, segment_forward

PLATFORMS = ("cpu", "cuda", "tpu")
# What an export directory holds: `--overwrite` replaces a directory of these alone.
EXPORT_FILES = ("model.json", "model.jax", "params")
MARKER = "model.json"


def _loops(method: str, config: Config) -> list[tuple[str, LoopSettings]]:
  """The checkpointed loops whose parameters make up `method`'s network, in order, each with
  the settings it trained with (its optimizer state is part of its checkpoint)."""
  if method == "conventional":
    return [("network", config.train)]
  if method.endswith("+recovery"):
    return [("recovery", config.recovery)]
  if method.startswith("pnn-"):
    return [(f"segment {k}", config.segment_train(k)) for k in range(config.model.num_segments)]
  raise ConfigError(f"--method {method!r} cannot be exported: it keeps no checkpoints; choose "
                    "conventional or a pnn-* method of the run")


def _read_run(run_dir: Path) -> dict[str, Any]:
  path = run_dir / "results.json"
  try:
    document = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise CheckpointError(f"{run_dir} holds no results.json: not a finished run") from None
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None
  if not isinstance(document, dict):
    raise CheckpointError(f"{path} is not a run's results (a JSON object)")
  for key, kind in (("config", dict), ("dataset", dict), ("runs", list)):
    if not isinstance(document.get(key), kind):
      raise CheckpointError(f"{path} has no {key!r} {'table' if kind is dict else 'list'}: not "
                            "a run's results, or edited")
  return document


def _method_run(document: dict[str, Any], method: str, path: Path) -> dict[str, Any]:
  """The record of `method` in results.json; refuses one that has no network to export."""
  runs = [r for r in document["runs"] if isinstance(r, dict) and isinstance(r.get("method"), str)]
  record = next((r for r in runs if r["method"] == method), None)
  if record is None:
    raise ConfigError(f"--method {method!r} is not in {path}: it holds "
                      f"{', '.join(r['method'] for r in runs) or 'no method'}")
  if method.endswith("-nearest-sil"):
    base = method.removesuffix("-nearest-sil")
    raise ConfigError(f"--method {method} cannot be exported: it is a reference readout (the "
                      f"first segment of {base} read out by the nearest SIL vector), with no "
                      f"network of its own; export {base} instead")
  if record.get("status") == "diverged":
    reason = record.get("divergence") or "its loss or parameters stopped being finite"
    raise ConfigError(f"--method {method} cannot be exported: it diverged ({reason}), so it "
                      "has no trained network")
  return record


def _config(document: dict[str, Any], path: Path) -> Config:
  settings = dict(document["config"])
  settings["segments"] = list(settings.get("segments") or [])
  try:
    return from_dict(settings)
  except ConfigError as e:
    raise ConfigError(f"{path}: its config is invalid: {e}") from None
  except (TypeError, ValueError, AttributeError) as e:  # a value of a shape no TOML gives
    raise ConfigError(f"{path}: its config is invalid: {e}") from None


def _dataset(document: dict[str, Any], path: Path) -> dict[str, Any]:
  """results.json's "dataset" table, checked: what the exported function is built from."""
  data = document["dataset"]
  if "input_shape" not in data:
    raise CheckpointError(f"{path} does not record its input shape (written by an older "
                          "synthpart): train it again to export it")

  def bad(key: str, allowed: str) -> CheckpointError:
    return CheckpointError(f"{path}: dataset.{key} is {data.get(key)!r}; it must be {allowed} "
                           "(results.json edited?)")

  shape = data["input_shape"]
  if not (isinstance(shape, list) and shape and all(
      isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 2**31 for n in shape)):
    raise bad("input_shape", "a list of positive integers")
  check_num_classes(f"{path}: dataset", data.get("num_classes"))
  try:
    dtype = np.dtype(data["input_dtype"]) if isinstance(data.get("input_dtype"), str) else None
  except TypeError:
    dtype = None
  if dtype is None or dtype.kind not in "uif":
    raise bad("input_dtype", "an integer or float dtype's name, e.g. uint8 or float32")
  scale = data.get("input_scale")
  if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < 1e30:
    raise bad("input_scale", "a positive number")
  if not isinstance(data.get("name"), str):
    raise bad("name", "the dataset's name")
  return data


def _restore_params(run_dir: Path, config: Config, method: str, specs: tuple[SegmentSpec, ...],
                    expected: str, data_fingerprint: str | None = None) -> Params:
  """The trained parameters of `method`, composed, as arrays on this host's first CPU device:
  each loop's checkpoint is checked against the network and the run (`checkpoint.restore`;
  the run's fingerprint from `config`, results.json's settings, and `data_fingerprint`, its
  data's: the hash training wrote into the checkpoints), once every loop's arrays are those of
  the network (an edited network is named as such)."""
  policy = checkpoint.Policy(run_dir, config.checkpoint.every, config.checkpoint.keep)
  run = checkpoint.run_fingerprint(config.to_dict(), data_fingerprint)
  loops = _loops(method, config)
  device = jax.local_devices(backend="cpu")[0]
  parts, metas = [], []
  for (loop, train), spec in zip(loops, specs if len(loops) > 1 else [whole_network(specs)]):
    like = jax.eval_shape(functools.partial(_initial_state, spec, make_optimizer(train)))
    restored = checkpoint.restore(policy, method, loop, like, device, tidy=False,
                                  expected=expected)
    if restored is None:
      raise CheckpointError(f"no checkpoint of {method}/{loop} under {run_dir}/checkpoints: "
                            "its files were moved or deleted")
    parts.append(restored[0].params)
    metas.append((policy.loop_dir(method, loop) / str(restored[1]["epoch"]), restored[1]))
  for path, meta in metas:
    checkpoint.check_run(run, path, meta)
  return compose(parts)


def _initial_state(spec: SegmentSpec, optimizer: optax.GradientTransformation) -> TrainState:
  """A loop's state as training starts it: the shapes and dtypes its checkpoints hold."""
  params = init_segment(jax.random.key(0), spec)
  return TrainState(params, optimizer.init(params))


def _check_out(out: Path, overwrite: bool) -> Path:
  """The directory to export into, refused unless it is new, empty, or (with `overwrite`) an
  earlier export and nothing else. A symbolic link stands for the directory it names."""
  out = Path(os.path.abspath(out))  # "." and "..": a name to rename onto, in a parent
  try:
    if out.is_symlink():
      target = out.resolve()
      if not target.exists():
        raise ConfigError(f"--out {out} is a symbolic link to {target}, which does not exist")
      out = target
    if not out.exists():
      return out
    if not out.is_dir():
      raise ConfigError(f"--out {out} exists and is not a directory; give a new or empty "
                        "directory")
    entries = sorted(p.name for p in out.iterdir())
  except OSError as e:
    raise ConfigError(f"--out {out} cannot be used: {e.strerror or e}") from None
  if not entries:
    return out
  if not overwrite:
    raise ConfigError(f"--out {out} is not empty; give a new or empty directory, or pass "
                      "--overwrite to replace the model exported there")
  if MARKER not in entries:
    raise ConfigError(f"--out {out} holds no exported model ({MARKER}), so --overwrite would "
                      "replace other files; give a new or empty directory")
  foreign = [name for name in entries if name not in EXPORT_FILES]
  if foreign:
    raise ConfigError(f"--out {out} holds files that are not the export's "
                      f"({', '.join(foreign[:5])}); move them away to --overwrite it")
  return out


def _write(out: Path, params: Params, blob: bytes | bytearray, meta: dict[str, Any],
           overwrite: bool) -> None:
  """Writes the export into a new temporary directory beside `out`, then renames it into place
  (where `out` is an earlier export, that is set aside first and deleted last)."""
  parent = out.parent
  try:
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.export-", suffix=".tmp"))
  except OSError as e:
    raise ConfigError(f"--out {out} cannot be written: {e.strerror or e}") from None
  try:
    os.chmod(staging, 0o777 & ~umask())  # as mkdir would make it (mkdtemp: 0o700)
    try:
      with ocp.StandardCheckpointer() as saver:
        saver.save((staging / "params").absolute(), params)
    except Exception as e:  # orbax and tensorstore wrap the system's error in their own types
      if is_disk_full(e):
        raise DiskFullError(f"no space left on the device writing {staging / 'params'}; "
                            f"{out} is as it was") from None
      raise

    def write(f: BinaryIO) -> None:
      f.write(blob)

    write_atomic(staging / "model.jax", write)
    write_json_atomic(staging / MARKER, meta)  # last: a directory with it is a whole export
    checkpoint.crash_point("export-written")
    _check_out(out, overwrite)  # again: another process may have written there meanwhile
    _move_into_place(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
  """Renames the complete `staging` to `out`: over an empty directory at once; an earlier
  export is renamed aside first (and put back should the rename fail), then deleted."""
  try:
    if not out.exists() or not any(out.iterdir()):
      os.replace(staging, out)
      return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.replaced-",
                                  suffix=".tmp"))
    os.replace(out, aside)
    try:
      os.replace(staging, out)
    except BaseException:
      os.replace(aside, out)
      raise
    shutil.rmtree(aside, ignore_errors=True)
  except OSError as e:
    raise ConfigError(f"--out {out} cannot be written: {e.strerror or e}") from None


@contextlib.contextmanager
def _exporting_into(out: Path) -> Iterator[None]:
  """Holds `out`'s parent directory (created where missing) for one export at a time: an flock
  on the directory itself, so that nothing is written beside `out` for it, and two exports into
  one parent never cross their renames."""
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  except OSError as e:
    raise ConfigError(f"--out {out} cannot be written: {e.strerror or e}") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise CheckpointError(f"--out {out}: another synthpart export is writing into "
                            f"{out.parent}; wait for it to end") from None
    yield
  finally:
    os.close(fd)


def export_model(run_dir: str | Path, method: str, out: str | Path,
                 overwrite: bool = False) -> Path:
  """Writes `method`'s trained network from `run_dir` to `out` (see the module docstring).

  Holds the run directory (`synthpart.rundir.claim`: no training may write into it meanwhile;
  a run of a sweep or budget too) unless it is not writable (a read-only file system, another
  user's run: nothing can write into it then), and `out`'s parent (one export at a time) until
  the export is in place. `out` inside another command's directory, or holding one, is refused
  (`synthpart.rundir.refuse_nesting`).
  """
  run_dir, out = Path(run_dir), _check_out(Path(out), overwrite)
  if not (run_dir / "results.json").is_file():
    _read_run(run_dir)  # its one line: no run, or not a file
  refuse_nesting(out, "export")
  held = (claim(run_dir, "run", inside="sweep") if os.access(run_dir, os.W_OK | os.X_OK)
          else contextlib.nullcontext())
  with held, _exporting_into(out):
    refuse_nesting(out, "export")  # again, now that no other export writes beside it
    return _export_locked(run_dir, method, _check_out(out, overwrite), overwrite)


def _export_locked(run_dir: Path, method: str, out: Path, overwrite: bool) -> Path:
  results = run_dir / "results.json"
  document = _read_run(run_dir)
  _method_run(document, method, results)
  config = _config(document, results)
  data = _dataset(document, results)
  input_shape = tuple(data["input_shape"])
  try:
    network = build_network(config.model, input_shape, data["num_classes"])
    specs = plan_segments(network, network_shapes(network, input_shape), config.model.cuts)
  except SynthpartError:
    raise
  except Exception as e:  # an edited results.json: a network of no possible shape
    raise CheckpointError(f"{results} describes no network that can be built "
                          f"({type(e).__name__}: {e}); results.json edited?") from None
  whole = whole_network(specs)
  params = _restore_params(run_dir, config, method, specs, f"the network {results} describes",
                           data.get("fingerprint"))
  like = jax.eval_shape(lambda: init_segment(jax.random.key(0), whole))
  consts = Constants()
  if config.data.standardize:  # the statistics of the run's own training split
    dataset, current = prepare_fingerprinted(config, progress=False)
    check_fingerprint(data["name"], data.get("fingerprint"), current, "export",
                      str(results), "restore the data the run was trained on: the model "
                      "standardises its inputs with their statistics")
    x = dataset.train_images.astype(np.float32)
    x = x / data["input_scale"]
    consts = Constants(mean=jnp.asarray(x.mean(0)), std=jnp.asarray(x.std(0) + 1e-6))
  task = Task(spec=whole, inputs=Inputs.PIXELS, input_scale=float(data["input_scale"]))

  def logits(params: Params, x: jax.Array) -> jax.Array:
    return segment_forward(params, x, task, consts)

  (batch,) = jax_export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.dtype(data["input_dtype"]))
  exported = jax_export.export(jax.jit(logits), platforms=PLATFORMS)(like, spec)
  _write(out, params, exported.serialize(), {
      "method": method, "run": str(run_dir), "dataset": data["name"],
      "input_shape": list(input_shape), "input_dtype": data["input_dtype"],
      "num_classes": data["num_classes"], "platforms": list(PLATFORMS),
      "params_digest": checkpoint.state_digest(params)}, overwrite)
  return out


def load_model(directory: str | Path) -> Callable[[Any], jax.Array]:
  """The exported model in `directory` as a function: raw inputs [batch, *input_shape] (any
  batch size, 0 included) -> logits [batch, classes] float32.

  Raises `CheckpointError` where the directory holds no export, or one that is damaged: a
  truncated or corrupt model.jax, parameters missing, corrupt or not those exported.
  """
  directory = Path(directory)
  try:
    meta = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    blob = (directory / "model.jax").read_bytes()
  except FileNotFoundError as e:
    raise CheckpointError(f"{directory} holds no exported model "
                          f"({Path(e.filename or '').name} missing)") from None
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    raise CheckpointError(f"{directory}/{MARKER} cannot be read: {e}") from None
  try:
    exported = jax_export.deserialize(bytearray(blob))
    (args, _) = jax.tree_util.treedef_children(exported.in_tree)  # ((params, x), kwargs)
    structure = jax.tree_util.treedef_children(args)[0]
    avals = exported.in_avals[:-1]  # the parameters, then x
    like = jax.tree.unflatten(structure, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])
    (out_aval,) = exported.out_avals
    classes = int(out_aval.shape[-1])
  except Exception as e:  # flatbuffers and struct raise their own types for damaged bytes
    raise CheckpointError(f"{directory}/model.jax is corrupt or truncated "
                          f"({type(e).__name__}: {e})") from None
  params = checkpoint.read_tree(directory / "params", like, jax.local_devices()[0],
                                "the parameters model.jax takes")
  digest = meta.get("params_digest") if isinstance(meta, dict) else None
  if digest is not None and digest != checkpoint.state_digest(params):
    raise CheckpointError(f"{directory}/params is corrupt: its arrays do not match the digest "
                          f"in {MARKER}")

  def model(x: Any) -> jax.Array:
    if np.shape(x)[:1] == (0,):  # the exported function's batch dimension is at least 1
      return jnp.zeros((0, classes), out_aval.dtype)
    return exported.call(params, x)

  return model
