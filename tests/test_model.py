import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart.model import apply_segment, compose, dense_plan, init_segment, whole_network

WIDTHS = (12, 10, 9, 8, 7, 6, 3)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 5), unique=True, max_size=5).map(sorted), st.integers(0, 1000))
def test_composed_segments_equal_the_whole_network(cuts, seed):
  specs = dense_plan(WIDTHS, tuple(cuts))
  whole = whole_network(specs)
  key = jax.random.key(seed)
  x = jax.random.uniform(jax.random.key(seed + 1), (5, 12))
  segment_params = [init_segment(key, s) for s in specs]
  # A layer is initialised the same whichever segment holds it.
  whole_params = init_segment(key, whole)
  for a, b in zip(jax.tree.leaves(compose(segment_params)), jax.tree.leaves(whole_params)):
    assert np.array_equal(a, b)
  y = x
  for spec, params in zip(specs, segment_params):
    y = apply_segment(params, y, spec)
  np.testing.assert_allclose(y, apply_segment(whole_params, x, whole), rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_keeps_float32_weights():
  (spec,) = dense_plan((6, 5, 2), (), dtype="bfloat16")
  params = init_segment(jax.random.key(0), spec)
  y = apply_segment(params, np.ones((3, 6), np.float32), spec)
  assert params[0]["kernel"].dtype == np.float32 and y.dtype == np.float32 and y.shape == (3, 2)
