"""A `Problem`: everything the schedules share, prepared once from a config and a dataset.

The run's PRNG key is split by purpose into streams (folded in), so each use draws independently
of the others: initialisation, the SIL tables, the data order of each loop, recovery. Each
purpose may have a seed of its own (`[seeds]`: sil, init, order); without one it draws from the
run's `seed`, exactly as before those settings existed.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import jax
import numpy as np

from synthpart import placement as placement_lib
from synthpart.blocks import Block, Shape
from synthpart.config import PRNG_IMPLS, Config, validate_for_data
from synthpart.data import Dataset
from synthpart.labels import sil_tables
from synthpart.model import build_network, network_shapes, whole_network
from synthpart.partition import SegmentSpec, plan_segments
from synthpart.results import RunDescription
from synthpart.train.objectives import Constants

# Streams of the run's key, folded in so that each use draws independently of the others.
INIT_STREAM, SIL_STREAM, ORDER_STREAM, RECOVERY_STREAM = 0, 1, 2, 3
# The `[seeds]` setting each stream reads (recovery's data order is data order too).
STREAM_SEEDS = {INIT_STREAM: "init", SIL_STREAM: "sil", ORDER_STREAM: "order",
                RECOVERY_STREAM: "order"}


def stream_seed(config: Config, stream: int) -> int:
  """The seed a stream's key starts from: its own `[seeds]` entry where set, else `seed`."""
  own = getattr(config.seeds, STREAM_SEEDS.get(stream, ""), None)
  return config.seed if own is None else own


def prng_impl(config: Config) -> str:
  """The PRNG implementation the run's keys use: the setting, or jax's default."""
  chosen = PRNG_IMPLS[config.seeds.prng_impl]
  # jax.config exposes its flags as attributes that its stubs do not declare
  return chosen or str(jax.config.jax_default_prng_impl)  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Problem:
  """Everything the schedules share, prepared once: settings, data on the host, plan, devices."""
  config: Config
  dataset: str
  train_x: np.ndarray  # [N, *input_shape], uint8 images or float inputs, as the dataset has them
  train_y: np.ndarray  # int32 [N]
  test_x: np.ndarray  # [M, *input_shape]
  test_y: np.ndarray  # int32 [M]
  num_classes: int
  specs: tuple[SegmentSpec, ...]
  devices: tuple[jax.Device, ...]
  sil: dict[int, np.ndarray]  # cut block -> [classes, *cut shape] table, on the host
  # Inputs are divided by this on the device: 255 for uint8 images, 1 for float inputs.
  input_scale: float
  # Training-set statistics of the scaled inputs, [*input_shape] each; None unless standardising.
  pixel_mean: np.ndarray | None = None
  pixel_std: np.ndarray | None = None
  # Each segment's device group, where a caller chose them (a multi-process run places only its
  # own segments); empty: laid out from config.placement over `devices`.
  groups: tuple[tuple[jax.Device, ...], ...] = ()

  @property
  def widths(self) -> tuple[int, ...]:
    """Features at every block boundary, input first."""
    return whole_network(self.specs).widths

  @property
  def shapes(self) -> tuple[Shape, ...]:
    """Per-example shapes at every block boundary, input first."""
    return whole_network(self.specs).shapes

  @property
  def network(self) -> tuple[Block, ...]:
    return whole_network(self.specs).blocks

  def group_of(self, segment: int) -> tuple[jax.Device, ...]:
    """The devices `segment` trains on; without groups, device i mod n for segment i."""
    if self.groups:
      return self.groups[segment]
    sizes = self.config.placement.sizes(len(self.specs))
    return placement_lib.layout_groups(self.devices, sizes)[segment]

  def device_of(self, segment: int) -> placement_lib.Placement:
    """Where `segment` lives: its device, or a sharding replicated over its device group."""
    return placement_lib.placement_of(self.group_of(segment))

  def key(self, *path: int) -> jax.Array:
    """The run's key folded with `path` (a stream, then anything within it), started from the
    stream's seed (`stream_seed`). Seeds and stream numbers are Python integers that must reach
    the device: allowed here even where a caller forbids implicit transfers."""
    seed = stream_seed(self.config, path[0]) if path else self.config.seed
    with jax.transfer_guard("allow"):
      key = jax.random.key(seed, impl=prng_impl(self.config))
      for p in path:
        key = jax.random.fold_in(key, p)
      return key


def make_problem(config: Config, dataset: Dataset, devices: Sequence[jax.Device] | None = None,
                 warn_shared: bool = True) -> Problem:
  """Builds the network, plans the segments and draws the SIL tables.

  Inputs keep their shape (NHWC images stay images; feature vectors stay [N, F]).
  """
  train_x = np.ascontiguousarray(dataset.train_images)
  test_x = np.ascontiguousarray(dataset.test_images)
  validate_for_data(config, len(train_x))
  input_shape = tuple(train_x.shape[1:])
  network = build_network(config.model, input_shape, dataset.num_classes)
  shapes = network_shapes(network, input_shape)
  specs = plan_segments(network, shapes, config.model.cuts)
  scale = dataset.input_scale
  problem = Problem(config=config, dataset=dataset.name, train_x=train_x,
                    train_y=np.asarray(dataset.train_labels, np.int32), test_x=test_x,
                    test_y=np.asarray(dataset.test_labels, np.int32),
                    num_classes=dataset.num_classes, specs=specs,
                    devices=tuple(devices or jax.devices()), sil={}, input_scale=scale)
  if warn_shared:  # a caller that places segments itself (a launch) passes False
    warn_shared_devices(problem)
  tables = sil_tables(problem.key(SIL_STREAM), shapes, config.model.cuts, dataset.num_classes,
                      config.sil.kind, config.sil.scale,
                      {c: network[c - 1].activation for c in config.model.cuts})
  mean = std = None
  if config.data.standardize:  # computed once here, not by every loop that needs them
    x = train_x.astype(np.float32) / scale
    mean, std = x.mean(0), x.std(0) + 1e-6
  return dataclasses.replace(problem, sil=jax.device_get(tables), pixel_mean=mean,
                             pixel_std=std)


def shared_devices(problem: Problem) -> dict[str, list[int]]:
  """The devices that hold more than one segment's group: device name -> those segments."""
  holders: dict[str, list[int]] = {}
  for segment in range(len(problem.specs)):
    for device in problem.group_of(segment):
      holders.setdefault(f"{device.platform}:{device.id}", []).append(segment)
  return {name: segments for name, segments in holders.items() if len(segments) > 1}


def warn_shared_devices(problem: Problem) -> None:
  """Warns where segments share a device: correct, but they take turns there instead of
  training at once (pass more devices; on CPU they are simulated, `select_devices`)."""
  for name, segments in shared_devices(problem).items():
    warnings.warn(f"segments {', '.join(map(str, segments))} share device {name}: they train "
                  f"there one after another, not at once; give each its own device (on CPU, "
                  f"synthpart.prepare.select_devices({problem.config.num_devices}, ...) or "
                  f"--devices {problem.config.num_devices} simulates them)", stacklevel=3)


def input_constants(problem: Problem, device: placement_lib.Placement) -> Constants:
  """Pixel statistics for standardisation (training set only), on `device`; else empty."""
  if problem.pixel_mean is None:
    return Constants()
  return Constants(mean=jax.device_put(problem.pixel_mean, device),
                   std=jax.device_put(problem.pixel_std, device))


def describe(problem: Problem, source: str, fingerprint: str | None = None) -> RunDescription:
  """What results.json records of the run around its methods: the dataset (from `source`,
  with the data's `fingerprint` where given), the devices, the backend and the PRNG."""
  dataset: dict[str, object] = {
      "name": problem.dataset, "source": source, "num_classes": problem.num_classes,
      "num_train": len(problem.train_y), "num_test": len(problem.test_y),
      "num_features": math.prod(problem.train_x.shape[1:]),
      "input_shape": list(problem.train_x.shape[1:]), "input_dtype": str(problem.train_x.dtype),
      "input_scale": problem.input_scale}
  if fingerprint is not None:
    dataset["fingerprint"] = fingerprint
  return RunDescription(dataset=dataset,
                        devices=tuple(f"{d.platform}:{d.id}" for d in problem.devices),
                        backend=jax.default_backend(), prng_impl=prng_impl(problem.config))
