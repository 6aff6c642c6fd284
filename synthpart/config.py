"""Every setting of a run, as frozen dataclasses, loaded from TOML plus overrides.

A config file mirrors the dataclasses::

  seed = 0
  schedule = "sequential"          # or "parallel", "pipelined"

  [data]
  name = "fashion-mnist"

  [model]
  hidden = [512, 512, 512, 512, 512]  # 6 dense layers: input -> 5 hidden -> classes
  cuts = [3]                          # segment boundaries, after dense layer 3

  [sil]
  kind = "uniform"                    # uniform | gaussian | orthogonal
  scale = 1.0                         # kappa
  noise = 0.5                         # parallel schedule's input noise std
  noise_relative = false              # true: std = noise * kappa

  [train]                             # every segment and the conventional baseline
  optimizer = "adam"
  learning_rate = 1e-3
  batch_size = 128
  epochs = 10
  chance_epochs = 5                   # stop a loop at chance level this long (0: never)

  [[segments]]                        # optional per-segment overrides, in order
  epochs = 5

  [recovery]
  epochs = 2

  [eval]                              # the composed network's accuracy inside epochs too
  every_steps = 25                    # after every 25 steps of a loop (0: at epoch ends only)
  log_spaced = true                   # and after steps 1, 2, 4, 8, ... before that

  [placement]                         # devices per segment, data-parallel inside each group
  groups = [2, 2]                     # or devices_per_segment = 2; default one device each

  [pipeline]                          # the pipelined schedule
  refresh_steps = 50                  # steps between refreshes of a segment's inputs
  delay_epochs = 1                    # epochs segment k-1 trains before segment k starts
  [seeds]                             # optional seeds per purpose; unset: from `seed`
  sil = 7                             # the SIL tables alone (also init, order, prng_impl)

Overrides use dotted keys (``train.learning_rate=3e-4``, ``segments.1.epochs=4``), so every
setting is reachable from the command line without a flag of its own.

This module is longer than most (over 400 lines) on purpose: every setting, its parsing and its
validation are one source that the command line, sweeps, reports and launches all read.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthpart.blocks import ACTIVATIONS, BUILT_IN, OPTION_CHOICES
from synthpart.errors import ConfigError
from synthpart.labels import SIL_KINDS, SIL_LOSSES
from synthpart.optim import DECAY_MASKS, LR_SCHEDULES, OPTIMIZERS
from synthpart.placement import BACKENDS
from synthpart.registry import Registry
from synthpart.schedule import SCHEDULES

DTYPES: Registry[str] = Registry("model.dtype")
for _name in ("float32", "bfloat16", "float16"):
  DTYPES.add(_name, _name)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which dataset, where to find it, and how to prepare it."""
  name: str = "digits"
  data_dir: str | None = None
  download: bool = False
  validation_size: int = 0  # examples held out of the training set (seeded), 0 for none
  standardize: bool = False  # per-feature mean/std of the training set, after the input scale


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network and where it is cut (`synthpart.model.build_network`).

  By default a dense stack of `hidden` widths then a classifier. `layers` lists built-in blocks
  instead (`synthpart.blocks.BUILT_IN`: {type = "conv", features = 32, kernel = 3}, ...),
  followed by the classifier; `factory` names a user's function "package.module:function" that
  returns every block, classifier included. Cuts fall after blocks (1-based).
  """
  hidden: tuple[int, ...] = (512, 512, 512, 512, 512)
  activation: str = "relu"
  cuts: tuple[int, ...] = (3,)  # cut after these blocks (1-based), strictly increasing
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # master-weight dtype
  layers: tuple[Mapping[str, Any], ...] = ()
  factory: str | None = None

  @property
  def num_layers(self) -> int:
    """Blocks in the network where the config alone says (None for a factory's network)."""
    return len(self.layers or self.hidden) + 1

  @property
  def num_segments(self) -> int:
    return len(self.cuts) + 1


@dataclasses.dataclass(frozen=True)
class SILConfig:
  """How synthetic intermediate labels are drawn and learned."""
  kind: str = "uniform"
  scale: float = 1.0  # kappa: uniform entries are kappa * U(0, 1)
  # Std of the Gaussian noise on SIL inputs in the parallel schedule (measured in
  # benchmarks/RESULTS.md); with `noise_relative`, the std is noise * kappa instead, so a kappa
  # sweep keeps the signal-to-noise ratio.
  noise: float = 0.5
  noise_relative: bool = False
  loss: str = "mse"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One optax loop: optimizer, learning rate and its schedule, batch size and epochs.

  The optax chain these build is `synthpart.optim.make_optimizer`; every default keeps
  the plain optimizer at a constant rate.
  """
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  batch_size: int = 128
  epochs: int = 10
  weight_decay: float = 0.0  # decoupled for adamw and lamb, added to the gradients otherwise
  momentum: float = 0.9
  # One jitted lax.scan per epoch (fastest for dense networks); false: a Python loop over a
  # jitted step, for convolutional networks on CPU (`synthpart.train.epoch.StepwiseEpoch`).
  scan: bool = True
  # A classifying loop whose epoch loss stays no better than chance for this many epochs in a row
  # is stopped as diverged (`synthpart.train.driver`); 0 never stops one for that.
  chance_epochs: int = 5
  # > 0: exactly this many steps instead of `epochs` epochs (the last epoch cut short)
  steps: int = 0
  lr_schedule: str = "constant"  # constant | cosine | step
  warmup_epochs: float = 0.0  # linear warmup from 0 (fractions of an epoch allowed)
  final_lr_factor: float = 0.0  # cosine: the rate ends at learning_rate * this
  step_epochs: int = 1  # step: the rate is multiplied by step_factor every step_epochs epochs
  step_factor: float = 0.1
  clip_norm: float = 0.0  # clip the gradients' global norm to this (0: no clipping)
  decay_mask: str = "all"  # all | kernels (no decay on biases and normalisation scales)
  loss_scale: float = 1.0  # static loss scale for float16 (1: none); overflowed steps skipped


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The pipelined schedule: how fresh each segment's inputs are, and when it starts."""
  # Steps between refreshes of a segment's inputs from the current earlier segments (capped at
  # an epoch): before every chunk of this many steps, the rows it will read are recomputed.
  refresh_steps: int = 50
  # Rounds (epochs) segment k-1 trains before segment k starts, capped at segment k-1's epochs:
  # at or beyond them, segment k starts after segment k-1 has finished (the sequential schedule).
  # One epoch (measured in benchmarks/RESULTS.md) spares segment k the untrained outputs.
  delay_epochs: int = 1


@dataclasses.dataclass(frozen=True)
class PlacementConfig:
  """How many devices each segment trains on (see `synthpart.placement`).

  `groups` lists one size per segment, in order (uneven sizes allowed); where it is empty every
  segment gets `devices_per_segment`. A group of k > 1 devices trains its segment data-parallel,
  through `backend` (`synthpart.placement.BACKENDS`).
  """
  groups: tuple[int, ...] = ()
  devices_per_segment: int = 1
  backend: str = "sharding"  # sharding (jax.jit + NamedSharding) | pmap (jax.pmap)

  def sizes(self, num_segments: int) -> tuple[int, ...]:
    """The group size of every segment."""
    return self.groups or (self.devices_per_segment,) * num_segments


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """When the composed network is evaluated (`synthpart.train.stops`): always after every epoch;
  with `every_steps` also after every that many steps of a loop, with `log_spaced` also after
  steps 1, 2, 4, 8, ... (below `every_steps` where it is set)."""
  every_steps: int = 0
  log_spaced: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often each loop saves its state, and how many saves it keeps."""
  every: int = 1  # epochs between checkpoints; every loop also saves after its last epoch
  keep: int = 2


PRNG_IMPLS: Registry[str] = Registry("seeds.prng_impl")
PRNG_IMPLS.add("default", "", "jax's default (the jax_default_prng_impl flag: threefry2x32 "
               "unless changed)")
for _name, _doc in (("threefry2x32", "Threefry, JAX's default: the same bits on every backend"),
                    ("rbg", "the hardware RNG bit generator, faster on TPU"),
                    ("unsafe_rbg", "rbg with a cheaper split and fold_in")):
  PRNG_IMPLS.add(_name, _name, _doc)


@dataclasses.dataclass(frozen=True)
class SeedsConfig:
  """Seeds per purpose, each optional: unset, a purpose draws from the run's `seed` exactly as
  it always did, so one seed gives the same bits. Set, it replaces `seed` for that purpose
  alone: `sil` for the SIL tables, `init` for the initial parameters, `order` for the data
  order of every loop (recovery's too). `prng_impl` chooses the PRNG implementation of every
  key the run draws.
  """
  sil: int | None = None
  init: int | None = None
  order: int | None = None
  prng_impl: str = "default"


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run. `segments` holds per-segment overrides of `train`, by segment index."""
  seed: int = 0
  schedule: str = "sequential"
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  sil: SILConfig = SILConfig()
  train: TrainConfig = TrainConfig()
  segments: tuple[Mapping[str, Any], ...] = ()
  # A fresh Adam at the segments' rate can undo what they learned; a tenth of it keeps it.
  recovery: TrainConfig = TrainConfig(epochs=2, learning_rate=1e-4)
  checkpoint: CheckpointConfig = CheckpointConfig()
  placement: PlacementConfig = PlacementConfig()
  eval: EvalConfig = EvalConfig()
  pipeline: PipelineConfig = PipelineConfig()
  seeds: SeedsConfig = SeedsConfig()

  def segment_train(self, index: int) -> TrainConfig:
    """The training settings of segment `index`: `train` with that segment's overrides."""
    overrides = self.segments[index] if index < len(self.segments) else {}
    return dataclasses.replace(self.train, **overrides)

  @property
  def num_devices(self) -> int:
    """Devices the run spreads over: every segment's group, added up."""
    return sum(self.placement.sizes(self.model.num_segments))

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["segments"] = [dict(s) for s in self.segments]
    out["model"]["layers"] = [dict(layer) for layer in self.model.layers]
    return out


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "sil": SILConfig, "train": TrainConfig,
             "recovery": TrainConfig, "checkpoint": CheckpointConfig,
              "placement": PlacementConfig, "eval": EvalConfig, "pipeline": PipelineConfig,
              "seeds": SeedsConfig}


def _coerce(path: str, value: Any, default: Any) -> Any:
  """Checks `value` against the type of the field's default; converts where lossless."""
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
      return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{path} must be true or false, got {value!r}")
  if isinstance(default, int):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
      raise ConfigError(f"{path} must be an integer, got {value!r}")
    try:
      return int(value)
    except ValueError:
      raise ConfigError(f"{path} must be an integer, got {value!r}") from None
  if isinstance(default, float):
    if isinstance(value, bool):
      raise ConfigError(f"{path} must be a number, got {value!r}")
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"{path} must be a number, got {value!r}") from None
  if isinstance(default, tuple):
    if isinstance(value, str):
      value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, int) and not isinstance(value, bool):
      value = [value]
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{path} must be a list of integers, got {value!r}")
    return tuple(_coerce(f"{path}[{i}]", v, 0) for i, v in enumerate(value))
  if default is None or isinstance(default, str):
    if value is not None and not isinstance(value, str):
      raise ConfigError(f"{path} must be a string, got {value!r}")
    return value
  raise ConfigError(f"{path}: unsupported value {value!r}")


def _shown(key: Any) -> str:
  """A key as typed where it prints on one line, else quoted (errors stay one line)."""
  return key if isinstance(key, str) and key.isprintable() else repr(key)


def parse_layers(path: str, value: Any) -> tuple[dict[str, Any], ...]:
  """`model.layers` from a list of tables or from text: blocks separated by commas, each a type
  and its options, e.g. ``conv:features=32:kernel=3,pool:window=2,flatten,dense:width=128``.

  Every option is checked here, so that a bad one is one line naming the layer (its position and
  text), the option and what it may be: whole sizes in 1..MAX_SIZE, `blocks.OPTION_CHOICES` and
  `model.activation` names. Whether a layer fits the shape it gets is checked as the network is
  built (`synthpart.model.build_network`)."""
  texts: list[str | None] = []
  if isinstance(value, str):
    items = [item.strip() for item in value.split(",") if item.strip()]
    texts = list(items)
    value = [_layer_from_text(path, item) for item in items]
  if not isinstance(value, (list, tuple)):
    raise ConfigError(f"{path} must be a list of block tables, got {value!r}")
  layers = []
  for i, layer in enumerate(value):
    if not isinstance(layer, Mapping) or "type" not in layer:
      raise ConfigError(f"{path}[{i}] must be a table with a type, got {layer!r}")
    if not isinstance(layer["type"], str):
      raise ConfigError(f"{path}[{i}].type must be a string, one of {', '.join(BUILT_IN)}; got "
                        f"{layer['type']!r}")
    BUILT_IN.check(layer["type"], f"{path}[{i}].type")
    where = f"{path}[{i}] ({texts[i] if texts else layer_text(layer)})"
    parameters = inspect.signature(BUILT_IN[layer["type"]]).parameters
    allowed = [name for name in parameters if name not in ("dtype", "param_dtype")]
    for key, option in layer.items():
      if key == "type":
        continue
      if key not in allowed:
        raise ConfigError(f"{where}: {layer['type']} has no option {_shown(key)}; allowed: "
                          f"{', '.join(allowed) or 'none'}")
      _check_layer_option(where, key, option, str(parameters[key].annotation))
    missing = [name for name, parameter in parameters.items()
               if parameter.default is inspect.Parameter.empty and name not in layer]
    if missing:
      raise ConfigError(f"{where}: {layer['type']} needs {', '.join(missing)} (a whole number "
                        f"in 1..{MAX_SIZE})")
    layers.append(dict(layer))
  return tuple(layers)


def layer_text(layer: Mapping[str, Any]) -> str:
  """A `model.layers` entry as the command line writes it: ``type:key=value:...``."""
  return ":".join([_shown(layer.get("type")),
                   *(f"{_shown(k)}={_shown(v)}" for k, v in layer.items() if k != "type")])


def _check_layer_option(where: str, key: str, option: Any, annotation: str) -> None:
  """Raises `ConfigError` unless `option` suits the built-in block's parameter `key`, whose
  annotation (text) says whether it is a whole size or a name."""
  if annotation.startswith("int"):
    if isinstance(option, bool) or not isinstance(option, int) or not 1 <= option <= MAX_SIZE:
      raise ConfigError(f"{where}: {key} must be a whole number in 1..{MAX_SIZE}, got "
                        f"{option!r}")
  elif key == "activation":
    if not isinstance(option, str) or option not in ACTIVATIONS:
      raise ConfigError(f"{where}: activation must be one of {', '.join(ACTIVATIONS)}, got "
                        f"{option!r}")
  elif key in OPTION_CHOICES:
    if option not in OPTION_CHOICES[key]:
      raise ConfigError(f"{where}: {key} must be one of {', '.join(OPTION_CHOICES[key])}, got "
                        f"{option!r}")
  elif not isinstance(option, str):
    raise ConfigError(f"{where}: {key} must be a string, got {option!r}")


def _layer_from_text(path: str, item: str) -> dict[str, Any]:
  kind, *options = item.split(":")
  layer: dict[str, Any] = {"type": kind}
  for option in options:
    key, sep, text = option.partition("=")
    if not sep or not key:
      raise ConfigError(f"{path}: {option!r} in {item!r} must look like key=value")
    if key in layer:
      raise ConfigError(f"{path}: {key} is given twice in {item!r}")
    layer[key] = _integer_or_text(text)
  return layer


def _integer_or_text(text: str) -> int | str:
  """An option's text as an integer where it is one (``-3`` too, so that its range is named),
  else as text."""
  try:
    return int(text) if text.strip() else text
  except ValueError:
    return text


def _build(cls: type, path: str, values: Mapping[str, Any]) -> Any:
  if not isinstance(values, Mapping):
    raise ConfigError(f"[{path}] must be a table of settings, got {values!r}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  defaults = cls()
  kwargs: dict[str, Any] = {}
  for key, value in values.items():
    if key not in fields:
      raise ConfigError(f"unknown setting {path}.{_shown(key)}; allowed: {', '.join(fields)}")
    if cls is ModelConfig and key == "layers":
      kwargs[key] = parse_layers(f"{path}.{key}", value)
    elif cls is SeedsConfig and key != "prng_impl":
      kwargs[key] = None if value is None else _coerce(f"{path}.{key}", value, 0)
    else:
      kwargs[key] = _coerce(f"{path}.{key}", value, getattr(defaults, key))
  return cls(**kwargs)


def _overrides(path: str, values: Mapping[str, Any]) -> dict[str, Any]:
  """The settings a [[segments]] table overrides, checked like a [train] table."""
  built = _build(TrainConfig, path, values)
  return {key: getattr(built, key) for key in values}


def from_dict(values: Mapping[str, Any]) -> Config:
  """Builds and validates a `Config` from nested plain values (a parsed TOML document)."""
  kwargs: dict[str, Any] = {}
  for key, value in values.items():
    if key in _SECTIONS:
      if key == "recovery" and isinstance(value, Mapping):
        value = {**dataclasses.asdict(Config.recovery), **value}
      kwargs[key] = _build(_SECTIONS[key], key, value)
    elif key == "segments":
      if not isinstance(value, (list, tuple)):
        raise ConfigError(f"segments must be a list of tables, got {value!r}")
      kwargs[key] = tuple(_overrides(f"segments.{i}", s) for i, s in enumerate(value))
    elif key in ("seed", "schedule"):
      kwargs[key] = _coerce(key, value, getattr(Config(), key))
    else:
      allowed = ", ".join(["seed", "schedule", "segments", *_SECTIONS])
      raise ConfigError(f"unknown setting {_shown(key)}; allowed: {allowed}")
  config = Config(**kwargs)
  validate(config)
  return config


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
  """Sets `values[a][b]...` from ``"a.b..."``; numeric parts index the `segments` list.

  `ConfigError` where a part of the path is not a table (a list indexed by name, a number or a
  list given a key): the value goes into a table, never into a list or a number.
  """
  parts = dotted.split(".")
  node: Any = values
  for i, part in enumerate(parts[:-1]):
    if isinstance(node, list):
      if not part.isdigit():
        raise _not_a_table(dotted, parts[:i], node)
      while len(node) <= int(part):
        node.append({})
      node = node[int(part)]
    elif isinstance(node, dict):
      if part.isdigit():
        raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[:i]) or 'the config'} is a "
                          f"table, not a list; {part} is not one of its keys")
      default: list[Any] | dict[str, Any] = (
          [] if i + 1 < len(parts) and parts[i + 1].isdigit() else {})
      node = node.setdefault(part, default)
    else:
      raise _not_a_table(dotted, parts[:i], node)
  if not isinstance(node, dict):
    raise _not_a_table(dotted, parts[:-1], node)
  if isinstance(value, str):
    value = _parse_scalar(value)
  node[parts[-1]] = value


def _not_a_table(dotted: str, prefix: Sequence[str], node: Any) -> ConfigError:
  """The error of a dotted path one of whose parts (`prefix`) holds `node`, not a table."""
  where = ".".join(prefix) or "the config"
  kind = "a list" if isinstance(node, list) else f"{node!r}"
  if list(prefix) == ["segments"]:
    hint = "set a key of one segment's table (e.g. segments.0.epochs=3)"
  elif isinstance(node, list):
    hint = f"give {where} whole (e.g. {where}=[...])"
  else:
    hint = f"set {where} itself"
  return ConfigError(f"cannot set {dotted}: {where} is {kind}, not a table; {hint}")


def _parse_scalar(text: str) -> Any:
  """Reads a command-line value as TOML would (numbers, booleans, lists), else a string."""
  try:
    return tomllib.loads(f"v = {text}")["v"]
  except tomllib.TOMLDecodeError:
    return text


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
  """Reads a TOML file (or the defaults), applies dotted overrides, validates."""
  values: dict[str, Any] = {}
  if path is not None:
    try:
      # utf-8-sig: a byte order mark, as some editors write, is not part of the TOML.
      values = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
      raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
      raise ConfigError(f"config file {path} is a directory; give a file") from None
    except (OSError, UnicodeDecodeError) as e:
      raise ConfigError(f"config file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
  for key, value in (overrides or {}).items():
    set_dotted(values, key, value)
  return from_dict(values)


# Bounds that keep a setting inside what the machine can represent: seeds are 64-bit signed,
# array dimensions fit XLA's 32-bit sizes, and epochs past a million are a typo, not a plan.
MAX_SEED = 2**63 - 1
MAX_SIZE = 2**31 - 1
MAX_EPOCHS = 10**6
# SIL tables are float32 and losses square their entries: past this kappa they overflow, and long
# before it no optimizer step size fits both the targets and the weights.
MAX_KAPPA = 1e6
# Training computes in float32 (or narrower): a step size, clipping norm or loss scale below its
# smallest normal number is zero there, and the run would train nothing while recording the value.
FLOAT32_TINY = 2.0 ** -126
FLOAT32_MAX = 3.4028234663852886e38


def _float32_positive(value: float) -> bool:
  return FLOAT32_TINY <= value <= FLOAT32_MAX


def _check_train(path: str, t: TrainConfig, allow_zero_epochs: bool = False) -> None:
  OPTIMIZERS.check(t.optimizer, f"{path}.optimizer")
  if not _float32_positive(t.learning_rate):
    raise ConfigError(f"{path}.learning_rate must be a positive number float32 can hold "
                      f"({FLOAT32_TINY:.3g}..{FLOAT32_MAX:.3g}), got {t.learning_rate}")
  if not 1 <= t.batch_size <= MAX_SIZE:
    raise ConfigError(f"{path}.batch_size must be in 1..{MAX_SIZE}, got {t.batch_size}")
  least = 0 if allow_zero_epochs else 1
  if not least <= t.epochs <= MAX_EPOCHS:
    raise ConfigError(f"{path}.epochs must be an integer in {least}..{MAX_EPOCHS}, "
                      f"got {t.epochs}")
  if not 0 <= t.chance_epochs <= MAX_EPOCHS:
    raise ConfigError(f"{path}.chance_epochs must be an integer in 0..{MAX_EPOCHS} (0: never "
                      f"stop at chance level), got {t.chance_epochs}")
  if not (t.weight_decay >= 0 and math.isfinite(t.weight_decay)):
    raise ConfigError(f"{path}.weight_decay must be a number >= 0, got {t.weight_decay}")
  if not (math.isfinite(t.momentum) and 0 <= t.momentum <= 1):
    raise ConfigError(f"{path}.momentum must be in [0, 1], got {t.momentum}")
  if not 0 <= t.steps <= MAX_EPOCHS * 10**4:
    raise ConfigError(f"{path}.steps must be an integer in 0..{MAX_EPOCHS * 10**4} (0: whole "
                      f"epochs), got {t.steps}")
  LR_SCHEDULES.check(t.lr_schedule, f"{path}.lr_schedule")
  DECAY_MASKS.check(t.decay_mask, f"{path}.decay_mask")
  if not (0 <= t.warmup_epochs <= t.epochs):
    raise ConfigError(f"{path}.warmup_epochs must be between 0 and {path}.epochs "
                      f"({t.epochs}), got {t.warmup_epochs}")
  if not 0 <= t.final_lr_factor <= 1:
    raise ConfigError(f"{path}.final_lr_factor must be in [0, 1], got {t.final_lr_factor}")
  if t.step_epochs < 1:
    raise ConfigError(f"{path}.step_epochs must be at least 1, got {t.step_epochs}")
  if not 0 < t.step_factor <= 1:
    raise ConfigError(f"{path}.step_factor must be in (0, 1], got {t.step_factor}")
  if not (t.clip_norm == 0 or _float32_positive(t.clip_norm)):
    raise ConfigError(f"{path}.clip_norm must be 0 (no clipping) or in {FLOAT32_TINY:.3g}.."
                      f"{FLOAT32_MAX:.3g} (float32), got {t.clip_norm}")
  if not _float32_positive(t.loss_scale):
    raise ConfigError(f"{path}.loss_scale must be a positive number float32 can hold "
                      f"({FLOAT32_TINY:.3g}..{FLOAT32_MAX:.3g}; 1: none), got {t.loss_scale}")


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested tables -> dotted keys; lists and scalars are leaves."""
  out: dict[str, Any] = {}
  for key, value in table.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{dotted}."))
    else:
      out[dotted] = value
  return out


def validate(config: Config) -> None:
  """Checks everything that does not depend on the data; raises `ConfigError`."""
  if not 0 <= config.seed <= MAX_SEED:
    raise ConfigError(f"seed must be an integer in 0..2^63-1, got {config.seed}")
  SCHEDULES.check(config.schedule)
  m = config.model
  if not m.hidden:
    raise ConfigError("model.hidden must list at least one hidden width")
  if any(w < 1 for w in m.hidden):
    raise ConfigError(f"model.hidden widths must be positive, got {list(m.hidden)}")
  if any(w > MAX_SIZE for w in m.hidden):
    raise ConfigError(f"model.hidden widths must be at most {MAX_SIZE}, got {list(m.hidden)}")
  ACTIVATIONS.check(m.activation)
  DTYPES.check(m.dtype)
  DTYPES.check(m.param_dtype, "model.param_dtype")
  cuts = list(m.cuts)
  if m.layers and m.factory:
    raise ConfigError("model.layers and model.factory exclude each other; give one of them")
  if not m.factory and any(c < 1 or c > m.num_layers - 1 for c in cuts):
    raise ConfigError(f"model.cuts {cuts} out of range: a cut falls after a hidden block, "
                      f"1..{m.num_layers - 1}")
  if cuts != sorted(set(cuts)):
    raise ConfigError(f"model.cuts {cuts} must be strictly increasing, without repeats")
  SIL_KINDS.check(config.sil.kind)
  SIL_LOSSES.check(config.sil.loss)
  if not 0 < config.sil.scale <= MAX_KAPPA:
    raise ConfigError(f"sil.scale (kappa) must be > 0 and at most {MAX_KAPPA:g} (float32 SIL "
                      f"targets and their squared errors overflow past it), got "
                      f"{config.sil.scale}")
  if not (config.sil.noise >= 0 and math.isfinite(config.sil.noise)):
    raise ConfigError(f"sil.noise must be >= 0, got {config.sil.noise}")
  _check_train("train", config.train)
  _check_train("recovery", config.recovery, allow_zero_epochs=True)
  if len(config.segments) > m.num_segments:
    raise ConfigError(f"{len(config.segments)} [[segments]] tables given for "
                      f"{m.num_segments} segments (cuts {cuts})")
  for i in range(m.num_segments):
    _check_train(f"segments.{i}", config.segment_train(i))
  if config.checkpoint.every < 1 or config.checkpoint.keep < 1:
    raise ConfigError(f"checkpoint.every and checkpoint.keep must be at least 1, got "
                      f"{config.checkpoint.every} and {config.checkpoint.keep}")
  if config.eval.every_steps < 0:
    raise ConfigError(f"eval.every_steps must be >= 0, got {config.eval.every_steps}")
  if config.pipeline.refresh_steps < 1 or config.pipeline.delay_epochs < 0:
    raise ConfigError(f"pipeline.refresh_steps must be at least 1 and pipeline.delay_epochs at "
                      f"least 0, got {config.pipeline.refresh_steps} and "
                      f"{config.pipeline.delay_epochs}")
  if config.data.validation_size < 0:
    raise ConfigError(f"data.validation_size must be >= 0, got {config.data.validation_size}")
  _check_placement(config.placement, m.num_segments)
  _check_backend(config)
  PRNG_IMPLS.check(config.seeds.prng_impl, "seeds.prng_impl")
  for purpose in ("sil", "init", "order"):
    own = getattr(config.seeds, purpose)
    if own is not None and not 0 <= own <= MAX_SEED:
      raise ConfigError(f"seeds.{purpose} must be an integer in 0..2^63-1 (or unset), got {own}")


def _check_placement(p: PlacementConfig, num_segments: int) -> None:
  if p.devices_per_segment < 1:
    raise ConfigError(f"placement.devices_per_segment must be at least 1, got "
                      f"{p.devices_per_segment}")
  if not p.groups:
    return
  if p.devices_per_segment != 1:
    raise ConfigError("placement.groups and placement.devices_per_segment exclude each other; "
                      "give one of them")
  if len(p.groups) != num_segments:
    raise ConfigError(f"placement.groups {list(p.groups)} must give one size per segment: "
                      f"{num_segments} segments")
  if any(not 1 <= size <= MAX_SIZE for size in p.groups):
    raise ConfigError(f"placement.groups sizes must be in 1..{MAX_SIZE}, got {list(p.groups)}")


def _check_backend(config: Config) -> None:
  """pmap splits every minibatch evenly over a group: the batch size must divide by its size."""
  BACKENDS.check(config.placement.backend)
  if config.placement.backend != "pmap":
    return
  sizes = config.placement.sizes(config.model.num_segments)
  loops = [(f"segments.{i}", config.segment_train(i), sizes[i]) for i in range(len(sizes))]
  loops += [("train", config.train, sizes[0]), ("recovery", config.recovery, sizes[0])]
  for path, t, size in loops:
    if t.batch_size % size:
      raise ConfigError(f"{path}.batch_size {t.batch_size} does not divide over the "
                        f"{size} devices of its group (placement.backend = pmap)")
    if size > 1 and (t.steps or not t.scan):
      raise ConfigError(f"placement.backend = pmap runs whole scanned epochs: {path}.steps must "
                        f"be 0 and {path}.scan true, got {t.steps} and {str(t.scan).lower()}")
  check_backend_for(config, (config.schedule,))
  if max(sizes) > 1 and (config.eval.every_steps or config.eval.log_spaced):
    raise ConfigError("placement.backend = pmap runs whole epochs: eval.every_steps must be 0 "
                      "and eval.log_spaced false (evaluations inside epochs need the sharding "
                      "backend)")


def check_backend_for(config: Config, schedules: Sequence[str]) -> None:
  """Refuses, in one line, the pmap backend over device groups for a run that trains any of
  `schedules` in chunks of steps (`Schedule.runs_in_chunks`): pmap runs whole epochs. `compare`
  checks every schedule it trains, a run its own."""
  if config.placement.backend != "pmap" or config.model.num_segments < 2:
    return
  if max(config.placement.sizes(config.model.num_segments)) < 2:
    return
  for name in schedules:
    if name in SCHEDULES and SCHEDULES[name].runs_in_chunks:
      raise ConfigError(f"placement.backend = pmap runs whole epochs, and the {name} schedule "
                        "runs them in chunks: use placement.backend = sharding"
                        + (" (compare trains every schedule)" if len(schedules) > 1 else ""))


def validate_for_data(config: Config, num_train: int) -> None:
  """Checks the settings that depend on the dataset's size."""
  trains = [("train", config.train)] + [(f"segments.{i}", config.segment_train(i))
                                        for i in range(config.model.num_segments)]
  if config.recovery.epochs:
    trains.append(("recovery", config.recovery))
  for path, t in trains:
    if t.batch_size > num_train:
      raise ConfigError(f"{path}.batch_size {t.batch_size} is larger than the "
                        f"{num_train} training examples")
