import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart.errors import ConfigError
from synthpart.labels import reachable, sil_table, sil_tables
from synthpart.progress import Progress
from synthpart.train.objectives import Inputs
from synthpart.train.problem import SIL_STREAM, make_problem
from synthpart.train.schedules import train_parallel
from synthpart.train.segments import segment_task

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)


def test_uniform_is_kappa_times_unit_interval():
  t = sil_table(jax.random.key(0), 47, 512, "uniform", 3.0)
  assert t.shape == (47, 512) and t.dtype == jnp.float32
  assert float(t.min()) >= 0 and float(t.max()) < 3.0 and float(t.max()) > 2.9


def test_orthogonal_rows():
  t = np.asarray(sil_table(jax.random.key(1), 10, 64, "orthogonal", 2.0))
  np.testing.assert_allclose(t @ t.T, 4.0 * np.eye(10), atol=1e-4)


def test_unknown_kind():
  with pytest.raises(ConfigError, match="sil.kind"):
    sil_table(jax.random.key(0), 3, 4, "laplace")


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["uniform", "gaussian", "orthogonal"]))
def test_same_key_same_table_bit_for_bit(seed, kind):
  a = sil_table(jax.random.key(seed), 5, 8, kind, 1.5)
  b = sil_table(jax.random.key(seed), 5, 8, kind, 1.5)
  assert np.array_equal(np.asarray(a), np.asarray(b))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 6), unique=True, min_size=1, max_size=6).map(sorted),
       st.integers(1, 6))
def test_adding_a_cut_leaves_other_tables_unchanged(cuts, extra):
  widths = (20, 9, 10, 11, 12, 13, 14, 5)
  key = jax.random.key(7)
  before = sil_tables(key, widths, tuple(cuts), 5)
  after = sil_tables(key, widths, tuple(sorted(set(cuts) | {extra})), 5)
  for c in cuts:
    assert np.array_equal(np.asarray(before[c]), np.asarray(after[c]))
    assert before[c].shape == (5, widths[c])


def test_negative_codes_are_shifted_into_a_relu_cuts_range():
  raw = sil_table(jax.random.key(3), 10, 64, "gaussian", 1.0)
  shifted = reachable(raw, "relu")
  assert float(raw.min()) < 0 and float(shifted.min()) == 0
  np.testing.assert_array_equal(jax.nn.relu(shifted), shifted)  # a ReLU can output every entry
  # One shift for every class: the codes keep their distances.
  np.testing.assert_allclose(shifted[:, None] - shifted[None], raw[:, None] - raw[None], atol=1e-5)
  assert reachable(raw, "linear") is raw and reachable(raw, "tanh") is raw
  uniform = sil_table(jax.random.key(3), 10, 64, "uniform", 1.0)
  np.testing.assert_array_equal(reachable(uniform, "relu"), uniform)  # already >= 0: as drawn


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal"])
def test_a_problem_shifts_the_tables_of_relu_cuts_only(kind):
  relu = make_problem(tiny_config(**{"sil.kind": kind}), tiny_dataset())
  tanh = make_problem(tiny_config(**{"sil.kind": kind, "model.activation": "tanh"}),
                      tiny_dataset())
  (cut,) = relu.config.model.cuts
  assert relu.sil[cut].min() == 0 and tanh.sil[cut].min() < 0
  np.testing.assert_allclose(relu.sil[cut] - relu.sil[cut][0], tanh.sil[cut] - tanh.sil[cut][0],
                             atol=1e-6)


def test_a_relu_cut_fits_shifted_gaussian_codes_below_the_raw_codes_floor():
  problem = make_problem(tiny_config(**{"sil.kind": "gaussian", "train.epochs": 30}),
                         tiny_dataset())
  (cut,) = problem.config.model.cuts
  raw = sil_tables(problem.key(SIL_STREAM), problem.shapes, (cut,), 4, "gaussian")[cut]
  # Against the raw codes a ReLU's outputs (>= 0) never get below the negative entries' squares.
  floor = np.mean(np.minimum(np.asarray(raw)[problem.train_y], 0) ** 2)
  _, result = train_parallel(problem, QUIET, track_accuracy=False)
  assert result.segments[0].loss_per_epoch[-1] < floor


def test_parallel_noise_relative_to_kappa():
  absolute = make_problem(tiny_config(**{"sil.scale": 3.0, "sil.noise": 0.2}), tiny_dataset())
  relative = make_problem(tiny_config(**{"sil.scale": 3.0, "sil.noise": 0.2,
                                         "sil.noise_relative": True}), tiny_dataset())
  spec = relative.specs[1]
  assert segment_task(absolute, spec, Inputs.SIL).noise == 0.2
  assert segment_task(relative, spec, Inputs.SIL).noise == pytest.approx(0.6)
  assert segment_task(relative, spec, Inputs.FEATURES).noise == 0
