import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart.errors import ConfigError
from synthpart.labels import sil_table, sil_tables


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
