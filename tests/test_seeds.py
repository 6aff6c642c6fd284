"""Seeds per purpose: each varies only its own part; unset, one seed gives today's bits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from synthpart.errors import ConfigError
from synthpart.progress import Progress
from synthpart.results import results_document
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.problem import describe

from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)


def _problem(**overrides):
  return P.make_problem(tiny_config(**overrides), tiny_dataset(), jax.devices()[:2])


def _bits(key):
  return np.asarray(jax.random.key_data(key))


def _parts(problem):
  """What each purpose draws: the SIL tables, the first segment's initial parameters, and the
  order keys of a segment and of recovery."""
  init = segments.init_params(problem, problem.specs[0], jax.devices()[0])
  return {"sil": [np.asarray(t) for t in problem.sil.values()],
          "init": [np.asarray(x) for x in jax.tree.leaves(init)],
          "order": [_bits(problem.key(P.ORDER_STREAM, 0)), _bits(problem.key(P.RECOVERY_STREAM))]}


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_unset_seeds_draw_as_one_seed_always_did():
  problem = _problem(seed=5)
  for path in [(P.INIT_STREAM,), (P.SIL_STREAM,), (P.ORDER_STREAM, 3), (P.RECOVERY_STREAM,)]:
    key = jax.random.key(5)
    for p in path:
      key = jax.random.fold_in(key, p)
    assert np.array_equal(_bits(problem.key(*path)), _bits(key))
  same = _problem(seed=5, **{"seeds.sil": 5, "seeds.init": 5, "seeds.order": 5})
  assert all(_same(a, b) for a, b in zip(_parts(problem).values(), _parts(same).values()))


@pytest.mark.parametrize("purpose", ["sil", "init", "order"])
def test_a_seed_varies_only_its_own_part(purpose):
  base = _parts(_problem())
  varied = _parts(_problem(**{f"seeds.{purpose}": 11}))
  for part in base:
    assert _same(base[part], varied[part]) == (part != purpose), part


def test_sil_seed_leaves_conventional_training_bit_for_bit():
  a, _ = S.train_conventional(_problem(), QUIET)
  b, _ = S.train_conventional(_problem(**{"seeds.sil": 3}), QUIET)
  c, _ = S.train_conventional(_problem(**{"seeds.order": 3}), QUIET)
  assert _same(jax.tree.leaves(a), jax.tree.leaves(b))
  assert not _same(jax.tree.leaves(a), jax.tree.leaves(c))


def test_prng_impl_is_settable_and_recorded():
  problem = _problem()
  assert results_document("train", describe(problem, "generated"), problem.config.to_dict(),
                          [])["prng_impl"] == "threefry2x32"
  rbg = _problem(**{"seeds.prng_impl": "rbg", "train.epochs": 1})
  assert jax.random.key_impl(rbg.key(P.SIL_STREAM)) == jax.random.key_impl(
      jax.random.key(0, impl="rbg"))
  _, result = S.train_parallel(rbg, QUIET)
  assert 0 <= result.test_accuracy <= 1
  assert results_document("train", describe(rbg, "generated"), rbg.config.to_dict(),
                          [result])["prng_impl"] == "rbg"
  with pytest.raises(ConfigError, match="seeds.prng_impl"):
    _problem(**{"seeds.prng_impl": "philox"})
  with pytest.raises(ConfigError, match="seeds.sil must be an integer"):
    _problem(**{"seeds.sil": "x"})
