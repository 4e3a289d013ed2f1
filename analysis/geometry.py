"""Response along a line and on a plane through a clean image: slope, curvature, contours.

A response ``r(t)`` measured at signed steps ``t`` along a unit direction ``u`` (L2 norm,
pixels in [0,1]) is fitted by least squares with ``r(t) = a + b t + (c / 2) t^2``:
``b`` is the slope (spikes per unit L2 norm) and ``c`` the curvature (the second derivative,
spikes per unit^2), both at the clean image ``t = 0``. Confidence intervals are BCa
(``scipy.stats.bootstrap``) over repeats: at every ``t`` level the presentations are
resampled with replacement (stratified: each level is one sample, so the design stays fixed;
a level with a single presentation is held fixed) and the line refitted; or, when
presentations share noise (a trial's gain in the simulator and in a monkey), over whole
trials (``clusters``, refitted from the summed per-trial normal equations).

The same fit on noise-free values (a model's predictions, the simulator's expected counts)
gives the model's and the truth's slope and curvature on exactly the same points.

:func:`presentations_for_halfwidth` turns a noise s.d. and a wanted CI half-width into the
repeats per point (and presentations per line) the fit needs, from the design's
``(X^T X)^-1`` (normal theory, which the bootstrap approximates).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    Estimate,
    bca_limits,
    check_level,
)


def _design(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, np.float64).reshape(-1)
    return np.stack([np.ones_like(t), t, 0.5 * t * t], 1)


def fit_quadratic(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(a, slope, curvature)`` of the least-squares fit ``y = a + b t + (c/2) t^2``.

    ``y``: (n,) or (n, k) (k columns fitted at once, result (3, k)). Needs >= 3 distinct t."""
    t = np.asarray(t, np.float64).reshape(-1)
    if len(np.unique(t)) < 3:
        raise ValueError(f"a slope and a curvature need at least 3 distinct steps t; got {np.unique(t).tolist()}")
    coef, *_ = np.linalg.lstsq(_design(t), np.asarray(y, np.float64), rcond=None)
    return coef


@dataclass(frozen=True)
class LineFit:
    """Slope (spikes / L2 unit) and curvature (spikes / L2 unit^2) along one direction, with CIs."""

    slope: Estimate
    curvature: Estimate
    intercept: float


def _solve_normal(xtx: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """Least-squares coefficients from stacked normal equations (..., 3, 3), (..., 3) -> (3, ...);
    NaN where the system is singular (fewer than 3 distinct t)."""
    scale = np.maximum(np.abs(xtx).max(axis=(-2, -1)), 1e-300)
    ok = np.linalg.cond(xtx / scale[..., None, None]) < 1e12
    safe = np.where(ok[..., None, None], xtx, np.eye(3))
    coef = np.linalg.solve(safe, xty[..., None])[..., 0]
    return np.moveaxis(np.where(ok[..., None], coef, np.nan), -1, 0)


def _bca(samples: tuple[np.ndarray, ...], statistic, n_boot: int, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval of the (2, ...) statistic (slope, curvature) over independently resampled samples."""
    return bca_limits(samples, statistic, n_boot, level, seed, cells=sum(len(x) for x in samples),
                      max_elements=2_000_000)


def _cluster_interval(t: np.ndarray, y: np.ndarray, clusters: np.ndarray, n_boot: int, level: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BCa of (slope, curvature) resampling whole clusters (e.g. trials): noise shared inside a
    cluster (a trial's gain) stays together. Each cluster's normal equations are summed."""
    ids, inv = np.unique(clusters, return_inverse=True)
    X = _design(t)
    xtx = np.zeros((len(ids), 3, 3))
    xty = np.zeros((len(ids), 3))
    np.add.at(xtx, inv, X[:, :, None] * X[:, None, :])
    np.add.at(xty, inv, X * y[:, None])

    def slope_curvature(idx, axis=-1):
        k = np.asarray(idx, np.int64)
        return _solve_normal(xtx[k].sum(axis=-3), xty[k].sum(axis=-2))[1:]
    if len(ids) < 3:
        return np.full(2, np.nan), np.full(2, np.nan)
    return _bca((np.arange(len(ids), dtype=float),), slope_curvature, n_boot, level, seed)


def _stratified_interval(t: np.ndarray, y: np.ndarray, n_boot: int, level: float,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BCa of (slope, curvature) resampling the repeats within each ``t`` level (one sample per
    level with 2 or more repeats; single-repeat levels enter every resample unchanged)."""
    levels = np.unique(t)
    groups = [y[t == v] for v in levels]
    free = [k for k, g in enumerate(groups) if len(g) >= 2]
    fixed_t = np.concatenate([np.full(len(groups[k]), levels[k]) for k in range(len(levels)) if k not in free] + [[]])
    fixed_y = np.concatenate([groups[k] for k in range(len(levels)) if k not in free] + [[]])
    if not free:
        return np.full(2, np.nan), np.full(2, np.nan)

    def slope_curvature(*ys, axis=-1):
        tt = np.concatenate([np.full(v.shape[-1], levels[k]) for k, v in zip(free, ys)] + [fixed_t])
        yy = np.concatenate(list(ys) + [np.broadcast_to(fixed_y, ys[0].shape[:-1] + fixed_y.shape)], axis=-1)
        X = _design(tt)
        return _solve_normal(X.T @ X, yy @ X)[1:]
    return _bca(tuple(groups[k] for k in free), slope_curvature, n_boot, level, seed)


def fit_line(t: np.ndarray, y: np.ndarray, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
             seed: int = 0, clusters: np.ndarray | None = None) -> LineFit:
    """Fit ``y`` (one value per presentation) at steps ``t`` (one per presentation) with BCa
    intervals (``n_boot`` resamples, at ``level``): resampling the repeats within each distinct
    ``t``, or, with ``clusters`` (one label per presentation, e.g. its trial), whole clusters."""
    check_level(level)
    t = np.asarray(t, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if len(t) != len(y):
        raise ValueError(f"t has {len(t)} entries but y has {len(y)}; give one step per presentation")
    a, b, c = fit_quadratic(t, y)
    if clusters is not None:
        lo, hi = _cluster_interval(t, y, np.asarray(clusters).reshape(-1), n_boot, level, seed)
    else:
        lo, hi = _stratified_interval(t, y, n_boot, level, seed)
    n = len(np.unique(t))
    return LineFit(Estimate(float(b), float(lo[0]), float(hi[0]), level, n),
                   Estimate(float(c), float(lo[1]), float(hi[1]), level, n), float(a))


def noise_free_fit(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(slope, curvature)`` of noise-free values (model predictions, expected counts)."""
    _, b, c = fit_quadratic(t, y)
    return float(b), float(c)


def presentations_for_halfwidth(t_levels: np.ndarray, noise_sd: float, halfwidth: float,
                                level: float = DEFAULT_LEVEL) -> tuple[int, int]:
    """Repeats per point needed for a CI half-width of ``halfwidth`` on the slope and on the
    curvature of one line with points ``t_levels`` and a per-presentation noise s.d. of
    ``noise_sd`` (same units as the response); returns ``(repeats_slope, repeats_curvature)``.
    Presentations per line = repeats x len(t_levels)."""
    check_level(level)
    if not halfwidth > 0:
        raise ValueError(f"halfwidth must be > 0; got {halfwidth}")
    cov = np.linalg.inv(_design(t_levels).T @ _design(t_levels))
    z = stats.norm.ppf(0.5 + level / 2)
    need = (z * noise_sd) ** 2 * np.diag(cov)[1:] / halfwidth ** 2
    return int(np.ceil(need[0])), int(np.ceil(need[1]))


def grid_means(coords: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean response on a regular grid: ``coords`` (n, 2) per presentation (rounded to the
    grid's levels), ``y`` (n,). Returns (a levels, b levels, means (len(a), len(b)); NaN where
    there is no point)."""
    coords = np.round(np.asarray(coords, np.float64), 9)
    av, bv = np.unique(coords[:, 0]), np.unique(coords[:, 1])
    out = np.full((len(av), len(bv)), np.nan)
    ia, ib = np.searchsorted(av, coords[:, 0]), np.searchsorted(bv, coords[:, 1])
    for i in range(len(av)):
        for j in range(len(bv)):
            m = (ia == i) & (ib == j)
            if m.any():
                out[i, j] = float(np.mean(np.asarray(y)[m]))
    return av, bv, out
