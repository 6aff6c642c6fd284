"""Segment groups: data parallelism inside a segment's own devices, nothing across placement."""

import re

import jax
import numpy as np
import pytest

from synthpart import config as config_lib
from synthpart import placement
from synthpart.cli import build_parser
from synthpart.errors import ConfigError
from synthpart.prepare import load_config
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.loop import start_loop
from synthpart.train.objectives import Inputs

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _problem(**overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), jax.devices()[:4])


def _start(problem, index):
  """Segment `index` of the parallel schedule, started on its placement."""
  spec = problem.specs[index]
  inputs = Inputs.PIXELS if spec.is_first else Inputs.SIL
  data = {"x": problem.train_x, "y": problem.train_y} if spec.is_first else {"y": problem.train_y}
  spec_ = segments.loop_spec(problem, "pnn-parallel", f"segment {index}", spec, inputs)
  return segments.segment_loop(problem, spec_, data)


def _collectives(hlo: str) -> list[tuple[str, str]]:
  """(kind, replica groups) of every collective instruction in an HLO module's text."""
  found = []
  for line in hlo.splitlines():
    match = re.search(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
    if match:
      groups_text = re.search(r"replica_groups=(\{[^=]*\}|\[[^=]*\}|mesh\S*\s\{[^}]*\})", line)
      found.append((match.group(1), groups_text.group(1) if groups_text else ""))
  return found


def _group_size(replica_groups: str) -> int:
  """Devices per replica group, from `{{0,1}}`, `[1,2]<=[2]` or `mesh['axis_0'=2,...] {...}`."""
  if replica_groups.startswith("{"):
    return len(re.findall(r"\d+", replica_groups.split("}")[0]))
  if replica_groups.startswith("["):
    return int(re.match(r"\[\d+,(\d+)\]", replica_groups).group(1))
  sizes = dict(re.findall(r"'(\w+)'=(\d+)", replica_groups))
  axes = re.findall(r"'(\w+)'", replica_groups.split("{", 1)[1])
  return int(np.prod([int(sizes[a]) for a in axes]))


# --- settings --------------------------------------------------------------------------------

def test_default_is_one_device_per_segment():
  problem = _problem(**{"model.cuts": [1, 2]})
  assert problem.config.placement.sizes(3) == (1, 1, 1)
  assert [problem.device_of(i) for i in range(3)] == jax.devices()[:3]
  assert all(isinstance(problem.device_of(i), jax.Device) for i in range(3))


@pytest.mark.parametrize("values,sizes", [
    ({"placement.groups": [1, 3]}, (1, 3)),
    ({"placement.devices_per_segment": 2}, (2, 2)),
    ({"placement.groups": "2,2"}, (2, 2)),
])
def test_group_sizes_from_settings(values, sizes):
  assert tiny_config(**values).placement.sizes(2) == sizes


@pytest.mark.parametrize("values,words", [
    ({"placement.groups": [2]}, "one size per segment"),
    ({"placement.groups": [2, 0]}, "sizes must be in 1\\.\\."),
    ({"placement.devices_per_segment": 0}, "at least 1"),
    ({"placement.groups": [2, 2], "placement.devices_per_segment": 2}, "exclude each other"),
    ({"placement.group": [2, 2]}, "unknown setting placement.group"),
])
def test_bad_group_settings_are_one_line_errors(values, words):
  with pytest.raises(ConfigError, match=words) as info:
    tiny_config(**values)
  assert "\n" not in str(info.value)


def test_group_sizes_flag():
  args = build_parser().parse_args(["train", "--group-sizes", "1,3", "--cuts", "2"])
  assert load_config(args).placement.groups == (1, 3)


def test_groups_are_laid_out_in_order_and_never_repeat_a_device():
  d = jax.devices()[:4]
  assert placement.layout_groups(d, (1, 3)) == ((d[0],), (d[1], d[2], d[3]))
  assert placement.layout_groups(d, (2, 2, 2)) == ((d[0], d[1]), (d[2], d[3]), (d[0], d[1]))
  with pytest.raises(ConfigError, match="group of 5 devices but only 4"):
    placement.layout_groups(d, (5,))


# --- placement and compiled collectives --------------------------------------------------------

def test_a_group_segment_lives_on_its_group_and_reduces_only_there():
  problem = _problem(**{"placement.groups": [2, 2]})
  run = _start(problem, 1)
  group = set(jax.devices()[2:4])
  assert run.info.device == "cpu:2,cpu:3"
  for leaf in jax.tree.leaves((run.state, run.data, run.consts, run.key)):
    assert leaf.devices() == group and leaf.sharding.is_fully_replicated
  assert set(run.epoch_fn.runtime_executable().local_devices()) == group
  hlo = run.epoch_fn.as_text()
  assert "num_partitions=2" in hlo.splitlines()[0]
  found = _collectives(hlo)
  # The data are replicated: the gradient (and loss) all-reduce is the only collective, and it
  # spans the group's two devices, the whole of what the executable runs on.
  assert found and {kind for kind, _ in found} == {"all-reduce"}
  assert all(_group_size(g) == 2 for _, g in found), found


def test_one_device_compiles_the_plain_program():
  run = _start(_problem(), 1)
  hlo = run.epoch_fn.as_text()
  assert not _collectives(hlo) and "num_partitions" not in hlo.splitlines()[0]
  assert run.epoch_fn.runtime_executable().local_devices() == [jax.devices()[1]]


def test_uneven_groups():
  problem = _problem(**{"placement.groups": [1, 3]})
  assert problem.device_of(0) == jax.devices()[0]
  run = _start(problem, 1)
  assert set(run.epoch_fn.runtime_executable().local_devices()) == set(jax.devices()[1:4])
  assert all(_group_size(g) == 3 for _, g in _collectives(run.epoch_fn.as_text()))


# --- schedules ----------------------------------------------------------------------------

def _assert_close(one, r1, many, rk):
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([s.loss_per_epoch for s in r1.segments],
                             [s.loss_per_epoch for s in rk.segments], rtol=1e-5)
  assert r1.test_accuracy == rk.test_accuracy


def test_parallel_groups_match_one_device_and_move_nothing_between_groups():
  one, r1 = S.train_parallel(_problem(), QUIET, track_accuracy=False)
  problem = _problem(**{"placement.groups": [2, 2]})
  with jax.transfer_guard_device_to_device("disallow_explicit"):
    many, rk = S.train_parallel(problem, QUIET, track_accuracy=False)
  assert rk.transfers == ()
  assert [s.device for s in rk.segments] == ["cpu:0,cpu:1", "cpu:2,cpu:3"]
  # A group of k devices reaches the parameters of one device, up to the order of the sums.
  _assert_close(one, r1, many, rk)


def test_sequential_groups_match_one_device_and_copy_the_cut_to_each_device():
  one, r1 = S.train_sequential(_problem(), QUIET, track_accuracy=False)
  problem = _problem(**{"placement.groups": [1, 3]})
  many, rk = S.train_sequential(problem, QUIET, track_accuracy=False)
  _assert_close(one, r1, many, rk)
  n, width = len(problem.train_y), problem.widths[2]
  assert [(t.source, t.destination, t.bytes) for t in rk.transfers] == [
      ("cpu:0", "cpu:1,cpu:2,cpu:3", 3 * n * width * 4)]


def test_placement_config_round_trips_through_to_dict():
  config = tiny_config(**{"placement.groups": [1, 3]})
  assert config.to_dict()["placement"] == {"groups": (1, 3), "devices_per_segment": 1,
                                           "backend": "sharding"}
  assert config_lib.from_dict(config.to_dict()) == config


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


@pytest.mark.parametrize("train", [S.train_sequential, S.train_parallel])
def test_pmap_backend_reaches_the_sharding_backends_parameters(train):
  """Groups of 2 through jax.pmap and through jit + NamedSharding: the same parameters up to
  the order of floating-point sums (no input noise, which each backend draws its own way)."""
  settings = {"placement.groups": [2, 2], "sil.noise": 0.0}
  sharded_params, sharded = train(_problem(**settings), QUIET)
  pmap_params, pmapped = train(_problem(**settings, **{"placement.backend": "pmap"}), QUIET)
  for a, b in zip(_leaves(sharded_params), _leaves(pmap_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  assert [s.device for s in pmapped.segments] == [s.device for s in sharded.segments]
  np.testing.assert_allclose([s.loss_per_epoch for s in pmapped.segments],
                             [s.loss_per_epoch for s in sharded.segments], rtol=2e-4)


def test_pmap_backend_conventional_and_recovery_and_noise():
  problem = _problem(**{"placement.devices_per_segment": 2, "placement.backend": "pmap"})
  params, result = S.train_parallel(problem, QUIET)  # with input noise
  assert all(np.isfinite(s.loss_per_epoch).all() for s in result.segments)
  _, recovered = S.train_recovery(problem, params, result, QUIET)
  _, conventional = S.train_conventional(problem, QUIET)
  for r in (result, recovered, conventional):
    assert 0.5 < r.test_accuracy <= 1, r.method
  # Outside the epoch the arrays are the sharding backend's: replicated over the group.
  spec, target = problem.specs[0], problem.device_of(0)
  lspec = segments.loop_spec(problem, "pnn-parallel", "segment 0", spec, Inputs.PIXELS,
                      train=problem.config.train)
  assert lspec.backend == "pmap" and lspec.device == target
  loop = start_loop(lspec, segments.init_params(problem, spec, target),
                    {"x": problem.train_x, "y": problem.train_y},
                    segments.segment_constants(problem, spec, Inputs.PIXELS, target),
                    problem.key(P.ORDER_STREAM, 0))
  assert isinstance(loop.epoch_fn, placement.PmapEpoch) and loop.info.memory["temp"] >= 0
  losses = loop.dispatch(0)
  assert losses.shape == (loop.steps_per_epoch,)
  for leaf in jax.tree.leaves(loop.state):
    assert leaf.sharding == target


def test_pmap_backend_needs_batches_that_divide():
  with pytest.raises(ConfigError, match="does not divide over the 3 devices"):
    config_lib.load(overrides={"placement.groups": [3, 1], "placement.backend": "pmap"})
  with pytest.raises(ConfigError, match="placement.backend"):
    config_lib.load(overrides={"placement.backend": "pjit"})
