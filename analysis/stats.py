"""Paired and rank statistics a reviewer asks for: pure functions over arrays.

- :func:`paired_difference`: the mean of paired differences ``b - a`` over the same units
  (images), a BCa paired-bootstrap CI (``scipy.stats.bootstrap``), a two-sided sign-flip
  test of "mean difference = 0" (``scipy.stats.permutation_test``) and the minimum
  detectable effect printed beside a "no significant change".
- :func:`spearman`: Spearman rank correlation (average ranks for ties).
- :func:`saturation_share`: share of rates within a fraction of the floor or ceiling.
- :func:`indistinguishable_from_floor`: whether a control's CI overlaps the noise floor's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.bootstrap import DEFAULT_LEVEL, Estimate
from analysis.inference import minimum_detectable_effect


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``b - a`` over ``n`` paired units: BCa CI, sign-flip p-value, minimum detectable effect.

    ``mde``: the smallest true mean difference a two-sided level-``alpha`` test detects with 80 %
    power, from the bootstrap standard error (units of ``a`` and ``b``).
    """

    estimate: Estimate
    p_value: float
    n: int
    mde: float = float("nan")

    def __str__(self) -> str:
        return f"{self.estimate} (paired over {self.n} images, sign-flip p = {self.p_value:.3g})"


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 1999, n_flips: int = 9999,
                      level: float = DEFAULT_LEVEL, seed: int = 0, alpha: float = 0.05) -> PairedDifference:
    """Paired estimate of mean(b - a); NaN pairs are dropped. Units of ``a`` and ``b``.

    CI: ``scipy.stats.bootstrap`` (BCa) of the mean of the paired differences; p: two-sided
    sign-flip test (``scipy.stats.permutation_test``, permutation_type "samples": exact up to
    13 units, ``n_flips`` random sign patterns beyond); ``mde`` at ``alpha`` (pass the
    Holm/Bonferroni-adjusted alpha of a family of tests).
    """
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs equally long a and b (the same units); got {a.shape} and {b.shape}")
    d = (b - a)[np.isfinite(a) & np.isfinite(b)]
    n = len(d)
    nan = float("nan")
    if n == 0:
        return PairedDifference(Estimate(nan, nan, nan, level, 0), nan, 0)
    rng = np.random.default_rng(seed)
    lo = hi = se = nan
    if n >= 3 and np.ptp(d) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((d,), _mean, vectorized=True, n_resamples=n_boot, confidence_level=level,
                                  method="BCa", random_state=rng)
        lo, hi, se = res.confidence_interval.low, res.confidence_interval.high, res.standard_error
    test = stats.permutation_test((d,), _mean, permutation_type="samples", alternative="two-sided", vectorized=True,
                                  n_resamples=np.inf if n <= 13 else n_flips, random_state=rng)
    return PairedDifference(Estimate(float(d.mean()), float(lo), float(hi), level, n), float(test.pvalue), n,
                            minimum_detectable_effect(float(se), alpha))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata``)."""
    return stats.rankdata(np.asarray(x, float), method="average")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of finite pairs (NaN with fewer than 3 pairs or no variation)."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def saturation_share(rates: np.ndarray, floor: np.ndarray, ceiling: float | np.ndarray, within: float = 0.05) -> float:
    """Share of ``rates`` (N, C) within ``within`` x (ceiling - floor) of the floor (C,) or the ceiling."""
    rates = np.asarray(rates, float)
    floor = np.asarray(floor, float)
    span = np.asarray(ceiling, float) - floor
    near = (rates <= floor + within * span) | (rates >= np.asarray(ceiling, float) - within * span)
    return float(np.mean(near)) if near.size else float("nan")


def indistinguishable_from_floor(control: Estimate, floor: Estimate) -> bool:
    """True when the control's CI reaches down into the noise floor's CI (a ratio over it is unstable)."""
    return bool(control.lo <= floor.hi)
