import pytest
from hypothesis import given
from hypothesis import strategies as st

from synthpart.errors import ConfigError
from synthpart.model import dense_plan
from synthpart.partition import network_widths, plan_segments


def test_paper_cut():
  specs = dense_plan(network_widths(784, (512,) * 5, 47), (3,))
  assert [(s.start, s.stop) for s in specs] == [(0, 3), (3, 6)]
  assert specs[0].widths == (784, 512, 512, 512) and specs[1].widths == (512, 512, 512, 47)
  assert specs[0].objective == "inputs -> sil" and specs[1].objective == "sil -> labels"
  assert specs[0].output_cut == 3 and specs[1].input_cut == 3


def test_no_cut_is_one_segment():
  (spec,) = dense_plan((10, 8, 3), ())
  assert spec.is_first and spec.is_last and spec.num_layers == 2


WHOLE = dense_plan(tuple(range(10, 19)), ())[0]  # 8 dense blocks


@given(st.lists(st.integers(1, 7), unique=True, max_size=7).map(sorted))
def test_segments_tile_the_network(cuts):
  specs = plan_segments(WHOLE.blocks, WHOLE.shapes, tuple(cuts))
  assert len(specs) == len(cuts) + 1
  assert specs[0].start == 0 and specs[-1].stop == 8
  for a, b in zip(specs, specs[1:]):
    assert a.stop == b.start and a.widths[-1] == b.widths[0] and a.output_cut == b.input_cut


@pytest.mark.parametrize("cuts", [(0,), (8,), (3, 3), (4, 2)])
def test_bad_cuts(cuts):
  with pytest.raises(ConfigError, match="model.cuts"):
    dense_plan(tuple(range(10, 19)), cuts)
