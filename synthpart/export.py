"""One exported model: a trained method's composed network as parameters plus a serialised function.

    synthpart export RUN_DIR --method pnn-sequential+recovery --out DIR

writes DIR/params (orbax: the composed network's parameters), DIR/model.jax (`jax.export`
bytes of `logits(params, x)`, lowered for CPU, CUDA and TPU, any batch size; `x` is the dataset's
raw input, e.g. uint8 NHWC images, so the preprocessing travels with the model) and
DIR/model.json (input shape and dtype, classes, method, where it came from).
`synthpart.load_model(DIR)` returns a callable x -> logits. Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import export as jax_export

from synthpart import checkpoint
from synthpart.config import Config, from_dict
from synthpart.errors import CheckpointError, ConfigError
from synthpart.files import write_atomic, write_json_atomic
from synthpart.model import (
  Params,
  apply_segment,
  build_network,
  compose,
  init_segment,
  network_shapes,
)
from synthpart.partition import plan_segments
from synthpart.setup import prepare_dataset
from synthpart.train.objectives import Constants, preprocess_pixels

PLATFORMS = ("cpu", "cuda", "tpu")


def _loops(method: str, num_segments: int) -> tuple[str, list[str]]:
  """The checkpointed loops whose parameters make up `method`'s network, in order."""
  if method == "conventional":
    return method, ["network"]
  if method.endswith("+recovery"):
    return method, ["recovery"]
  if method.startswith("pnn-"):
    return method, [f"segment {k}" for k in range(num_segments)]
  raise ConfigError(f"--method {method!r} cannot be exported: choose conventional or a pnn-* "
                    "method of the run")


def _read_run(run_dir: Path) -> dict[str, Any]:
  path = run_dir / "results.json"
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise CheckpointError(f"{run_dir} holds no results.json: not a finished run") from None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None


def _config(document: dict[str, Any]) -> Config:
  settings = dict(document["config"])
  settings["segments"] = list(settings.get("segments", []))
  return from_dict(settings)


def _restore_params(run_dir: Path, config: Config, method: str, like: Params) -> Params:
  """The trained parameters of `method`, composed, in the structure of `like`."""
  policy = checkpoint.Policy(run_dir, config.checkpoint.every, config.checkpoint.keep)
  method, loops = _loops(method, config.model.num_segments)
  parts = [checkpoint.load_params(policy, method, loop)["params"] for loop in loops]
  leaves = jax.tree.leaves(compose(parts) if len(parts) > 1 else parts[0])
  structure = jax.tree.structure(like)
  if len(leaves) != len(jax.tree.leaves(like)):
    raise CheckpointError(f"the checkpoints of {method} in {run_dir} do not match its network")
  return jax.tree.unflatten(structure, [jnp.asarray(x) for x in leaves])


def export_model(run_dir: str | Path, method: str, out: str | Path) -> Path:
  """Writes `method`'s trained network from `run_dir` to `out` (see the module docstring)."""
  run_dir, out = Path(run_dir), Path(out)
  document = _read_run(run_dir)
  if method not in [r["method"] for r in document["runs"]]:
    raise ConfigError(f"--method {method!r} is not in {run_dir}: it holds "
                      f"{', '.join(r['method'] for r in document['runs'])}")
  config = _config(document)
  data = document["dataset"]
  if "input_shape" not in data:
    raise CheckpointError(f"{run_dir}/results.json does not record its input shape (written by "
                          "an older synthpart): train it again to export it")
  input_shape = tuple(data["input_shape"])
  network = build_network(config.model, input_shape, data["num_classes"])
  (whole,) = plan_segments(network, network_shapes(network, input_shape), ())
  like = jax.eval_shape(lambda: init_segment(jax.random.key(0), whole))
  params = _restore_params(run_dir, config, method, like)
  consts = Constants()
  if config.data.standardize:  # the statistics of the run's own training split
    x = prepare_dataset(config, progress=False).train_images.astype(np.float32)
    x = x / data["input_scale"]
    consts = Constants(mean=jnp.asarray(x.mean(0)), std=jnp.asarray(x.std(0) + 1e-6))
  scale = float(data["input_scale"])

  def logits(params: Params, x: jax.Array) -> jax.Array:
    return apply_segment(params, preprocess_pixels(x, consts, scale), whole)

  (batch,) = jax_export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.dtype(data["input_dtype"]))
  exported = jax_export.export(jax.jit(logits), platforms=PLATFORMS)(like, spec)
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as saver:
    saver.save((out / "params").absolute(), params, force=True)
  blob = exported.serialize()

  def write(f: BinaryIO) -> None:
    f.write(blob)

  write_atomic(out / "model.jax", write)
  write_json_atomic(out / "model.json", {
      "method": method, "run": str(run_dir), "dataset": data["name"],
      "input_shape": list(input_shape), "input_dtype": data["input_dtype"],
      "num_classes": data["num_classes"], "platforms": list(PLATFORMS)})
  return out


def load_model(directory: str | Path) -> Callable[[Any], jax.Array]:
  """The exported model in `directory` as a function: raw inputs [batch, ...] -> logits."""
  directory = Path(directory)
  try:
    exported = jax_export.deserialize(bytearray((directory / "model.jax").read_bytes()))
    with ocp.StandardCheckpointer() as loader:
      params = loader.restore((directory / "params").absolute())
  except FileNotFoundError as e:
    raise CheckpointError(f"{directory} holds no exported model ({e.filename} missing)") from None
  (args, _) = jax.tree_util.treedef_children(exported.in_tree)  # ((params, x), kwargs)
  structure = jax.tree_util.treedef_children(args)[0]
  params = jax.tree.unflatten(structure, jax.tree.leaves(params))

  def model(x: Any) -> jax.Array:
    return exported.call(params, x)

  return model
