"""Paired and rank statistics a reviewer asks for: pure functions over arrays.

- :func:`paired_difference`: the mean of paired differences ``b - a`` over the same units
  (images), a percentile paired-bootstrap CI, and a two-sided sign-flip (randomisation)
  test of "mean difference = 0" (exact for n <= 16 units, Monte Carlo otherwise).
- :func:`spearman`: Spearman rank correlation (average ranks for ties).
- :func:`saturation_share`: share of rates within a fraction of the floor or ceiling.
- :func:`indistinguishable_from_floor`: whether a control's CI overlaps the noise floor's.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from analysis.bootstrap import DEFAULT_LEVEL, Estimate, percentile_interval


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``b - a`` over ``n`` paired units with a bootstrap CI and a sign-flip p-value."""

    estimate: Estimate
    p_value: float
    n: int

    def __str__(self) -> str:
        return f"{self.estimate} (paired over {self.n} images, sign-flip p = {self.p_value:.3g})"


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, n_flips: int = 20000,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> PairedDifference:
    """Paired estimate of mean(b - a); NaN pairs are dropped. Units of ``a`` and ``b``."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs equally long a and b (the same units); got {a.shape} and {b.shape}")
    d = (b - a)[np.isfinite(a) & np.isfinite(b)]
    n = len(d)
    if n == 0:
        nan = float("nan")
        return PairedDifference(Estimate(nan, nan, nan, level, 0), nan, 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = d[idx].mean(axis=1)
    lo, hi = percentile_interval(boot, level)
    observed = abs(d.mean())
    if n <= 16:
        signs = np.array(list(product((-1.0, 1.0), repeat=n)))
    else:
        signs = rng.choice((-1.0, 1.0), size=(n_flips, n))
    null = np.abs((signs * d).mean(axis=1))
    p = float((np.sum(null >= observed - 1e-12) + (0 if n <= 16 else 1)) / (len(null) + (0 if n <= 16 else 1)))
    return PairedDifference(Estimate(float(d.mean()), float(lo), float(hi), level, n), p, n)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of finite pairs (NaN with fewer than 3 pairs or no variation)."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


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
