"""What every command does before training: its settings, its devices and its dataset.

`synthpart train`, `compare`, `sweep`, `bench` and `launch` all read their settings through
`add_run_arguments` and `load_config`, choose devices through `select_devices`, and prepare the
data through `prepare_dataset`, so that a setting means the same thing in every command. Those
that record or resume a run take the data's fingerprint with it (`prepare_fingerprinted`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from synthpart import config as config_lib
from synthpart.blocks import ACTIVATIONS
from synthpart.data import Dataset, fingerprint, load_dataset, split_validation
from synthpart.errors import ConfigError, ResourceError
from synthpart.labels import SIL_KINDS, SIL_LOSSES
from synthpart.optim import LR_SCHEDULES, OPTIMIZERS

_DEFAULTS = config_lib.Config()

# flag -> (dotted setting, help); the choices come from their registries.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--dataset": ("data.name", "dataset name (see `synthpart data list`)"),
    "--data-dir": ("data.data_dir", "directory holding the dataset's files"),
    "--validation-size": ("data.validation_size", "examples held out of training and "
                          "evaluated on instead of the test set"),
    "--hidden": ("model.hidden", "hidden widths, comma separated"),
    "--activation": ("model.activation", ACTIVATIONS.choices()),
    "--cuts": ("model.cuts", "cut after these dense layers, comma separated"),
    "--dtype": ("model.dtype", f"compute dtype: {config_lib.DTYPES.choices()}"),
    "--param-dtype": ("model.param_dtype", "parameter dtype"),
    "--sil-kind": ("sil.kind", SIL_KINDS.choices()),
    "--kappa": ("sil.scale", "SIL scale kappa (> 0)"),
    "--noise": ("sil.noise", "std of the noise on SIL inputs in the parallel schedule"),
    "--sil-loss": ("sil.loss", SIL_LOSSES.choices()),
    "--schedule": ("schedule", config_lib.SCHEDULES.choices()),
    "--optimizer": ("train.optimizer", OPTIMIZERS.choices()),
    "--lr": ("train.learning_rate", "learning rate of every loop"),
    "--lr-schedule": ("train.lr_schedule", LR_SCHEDULES.choices()),
    "--warmup-epochs": ("train.warmup_epochs", "linear warmup of the learning rate, in epochs"),
    "--clip-norm": ("train.clip_norm", "clip the gradients' global norm (0: no clipping)"),
    "--weight-decay": ("train.weight_decay", "weight decay (adamw, lamb: decoupled)"),
    "--batch-size": ("train.batch_size", "batch size of every loop"),
    "--epochs": ("train.epochs", "epochs of every segment and of the baseline"),
    "--recovery-epochs": ("recovery.epochs", "end-to-end epochs after composing (0: none)"),
    "--recovery-lr": ("recovery.learning_rate", "learning rate of the recovery epochs"),
    "--seed": ("seed", "seed of the run's PRNG key"),
    "--sil-seed": ("seeds.sil", "seed of the SIL tables alone (unset: from --seed)"),
    "--init-seed": ("seeds.init", "seed of the initial parameters alone (unset: from --seed)"),
    "--order-seed": ("seeds.order", "seed of the data order alone (unset: from --seed)"),
    "--prng-impl": ("seeds.prng_impl", config_lib.PRNG_IMPLS.choices()),
    "--group-sizes": ("placement.groups", "devices of each segment, comma separated; a segment "
                      "trains data-parallel on its group (default one device each)"),
}


def default_of(dotted: str) -> Any:
  """The default value of a dotted setting, as `--help` shows it."""
  node: Any = _DEFAULTS
  for part in dotted.split("."):
    node = getattr(node, part)
  if isinstance(node, tuple):
    return ",".join(map(str, node)) or "none"
  return "unset" if node is None else node


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
  """The config file, every setting flag, and the run-directory options of a training command."""
  parser.add_argument("config", nargs="?", help="TOML config file (optional)")
  group = parser.add_argument_group("settings (override the config file)")
  for flag, (dotted, text) in SETTING_FLAGS.items():
    group.add_argument(flag, dest=flag[2:].replace("-", "_"), metavar="V",
                       help=f"{text} (default: {default_of(dotted)})")
  group.add_argument("--download", action="store_true", help="download the dataset if missing")
  group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any setting by its dotted name, e.g. segments.1.epochs=5 (repeatable)")
  parser.add_argument("--out", default=None, metavar="DIR",
                      help="run directory for results.json (default runs/<command>-<time>)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the earlier run in --out: its files are set aside before "
                           "anything new is written, and deleted once the new run has begun")
  parser.add_argument("--resume", action="store_true",
                      help="continue the interrupted run in --out from its checkpoints")
  parser.add_argument("--devices", type=int, default=0, metavar="N",
                      help="devices to spread segments over (default: one per segment, "
                           "simulated on CPU)")
  parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
  parser.add_argument("--tensorboard", action="store_true",
                      help="also write TensorBoard event files under DIR/tensorboard, as the "
                           "run goes (pip install tensorboardX) (default: off)")


def load_config(args: argparse.Namespace) -> config_lib.Config:
  """The TOML file, then the flags, then --set, as one validated `Config`."""
  overrides: dict[str, Any] = {}
  for flag, (dotted, _) in SETTING_FLAGS.items():
    value = getattr(args, flag[2:].replace("-", "_"))
    if value is not None:
      overrides[dotted] = value
  if args.download:
    overrides["data.download"] = True
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. train.epochs=5")
    overrides[key.strip()] = value.strip()
  return config_lib.load(args.config, overrides)


def setting_arguments(args: argparse.Namespace) -> list[str]:
  """The settings of a parsed command line, as flags again (for processes it starts)."""
  argv = [args.config] if args.config else []
  for flag in SETTING_FLAGS:
    value = getattr(args, flag[2:].replace("-", "_"))
    if value is not None:
      argv += [flag, str(value)]
  if args.download:
    argv.append("--download")
  for item in args.set:
    argv += ["--set", item]
  return argv


def select_devices(count: int, num_segments: int, local: bool = False) -> list[jax.Device]:
  """Up to `count` devices (0: one per segment). On CPU, that many devices are simulated.

  With `local`, this process's devices only (a multi-process run).
  """
  if count < 0:
    raise ConfigError(f"--devices must be >= 0, got {count}")
  wanted = count or num_segments
  try:
    jax.config.update("jax_num_cpu_devices", max(wanted, 1))
  except RuntimeError:
    pass  # the backend is already up (an embedding program chose): use the devices it has
  devices = jax.local_devices() if local else jax.devices()
  return devices[:wanted] if 0 < wanted <= len(devices) else devices


Loader = Callable[[config_lib.DataConfig], Dataset]


def read_dataset(data: config_lib.DataConfig, progress: bool = True) -> Dataset:
  """The dataset `data` names, from wherever `synthpart.data` finds it.

  Raises:
    DataError: see `synthpart.data.load_dataset`.
    ResourceError: the process ran out of memory reading it (the data, not the network).
  """
  try:
    return load_dataset(data.name, data.data_dir, download=data.download, progress=progress)
  except MemoryError:
    raise ResourceError(f"out of memory reading dataset {data.name}: its arrays do not fit in "
                        "this process's memory (see its limit: ulimit -v)") from None


def with_validation(dataset: Dataset, config: config_lib.Config) -> Dataset:
  """The dataset to train on: with `data.validation_size`, its test split is the held-out part
  of the training set (seeded by the run's seed) and training uses the rest."""
  if not config.data.validation_size:
    return dataset
  fit, held_out = split_validation(dataset, config.data.validation_size, config.seed)
  return dataclasses.replace(fit, test_images=held_out.test_images,
                             test_labels=held_out.test_labels)


def prepare_dataset(config: config_lib.Config, progress: bool = True) -> Dataset:
  """The dataset a run trains and evaluates on, validation split applied (a `Dataset` has no
  empty split: it refuses one when it is made)."""
  return with_validation(read_dataset(config.data, progress), config)


def prepare_fingerprinted(config: config_lib.Config,
                          progress: bool = True) -> tuple[Dataset, str]:
  """`prepare_dataset`'s dataset, and the fingerprint of the data as loaded (before any
  validation split, which the settings determine): what a run records, and checks on resume."""
  loaded = read_dataset(config.data, progress)
  return with_validation(loaded, config), fingerprint(loaded)
