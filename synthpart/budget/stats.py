"""Confidence intervals over seeds: Student's t-interval of a mean.

The t quantile is computed here (the density integrated numerically, then bisection), so that
nothing beyond numpy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
# Integration points of the density between 0 and a candidate quantile.
_GRID = 20_001


def _t_cdf(x: float, df: int) -> float:
  """P(T <= x) for x >= 0, Student's t with `df` degrees of freedom."""
  norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
  t = np.linspace(0.0, x, _GRID)
  density = norm * (1 + t * t / df) ** (-(df + 1) / 2)
  return 0.5 + float(np.trapezoid(density, t))


def t_quantile(p: float, df: int) -> float:
  """The `p` quantile (p in [0.5, 1)) of Student's t with `df` degrees of freedom."""
  if not 0.5 <= p < 1 or df < 1:
    raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
  low, high = 0.0, 1.0
  while _t_cdf(high, df) < p:
    low, high = high, 2 * high
  for _ in range(50):
    mid = (low + high) / 2
    low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
  return (low + high) / 2


def t_interval(values: Sequence[float],
               confidence: float = CONFIDENCE) -> tuple[float, float, float]:
  """(mean, low, high): the two-sided `confidence` t-interval of the mean of `values`; with one
  value the interval is unbounded, with none everything is nan."""
  if not values:
    return math.nan, math.nan, math.nan
  array = np.asarray(values, float)
  mean = float(array.mean())
  if len(array) < 2:
    return mean, -math.inf, math.inf
  half = (t_quantile(0.5 + confidence / 2, len(array) - 1)
          * float(array.std(ddof=1)) / math.sqrt(len(array)))
  return mean, mean - half, mean + half
