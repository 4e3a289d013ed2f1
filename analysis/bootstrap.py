"""Bootstrap confidence intervals (seeded), BCa via ``scipy.stats.bootstrap``: of a mean
(:func:`bootstrap_mean`), of column means sharing their units (:func:`bca_mean_interval`, the
per-site bands of the sensitivity curves), and of a Pearson r resampling clusters of points
(:func:`bca_pearson_by_cluster`). No percentile-bootstrap interval is left in ``analysis``.

Everything here is unit-agnostic: the CI has the unit of the values passed in (spikes per
70-170 ms window, or multiples of a site's clean-image s.d. after normalisation).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_N_BOOT = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval ``[lo, hi]`` (BCa or two-level; see where it is made).

    ``n`` is the number of independent units (images, stimuli) behind it.
    """

    value: float
    lo: float
    hi: float
    level: float = DEFAULT_LEVEL
    n: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.lo:.3g}, {self.hi:.3g}]"

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.value, self.lo, self.hi)


def check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), e.g. 0.95; got {level}")


def check_n_boot(n_boot: int) -> None:
    if int(n_boot) < 10:
        raise ValueError(f"n_boot must be at least 10 bootstrap resamples (use ~2000); got {n_boot}")


def bootstrap_mean(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
                   seed: int = 0) -> Estimate:
    """Mean of ``values`` (n,) with a BCa CI (``scipy.stats.bootstrap``) over the n values (NaNs dropped)."""
    check_n_boot(n_boot)
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Estimate(np.nan, np.nan, np.nan, level, 0)
    if v.size < 3 or np.ptp(v) == 0:
        return Estimate(float(v.mean()), np.nan, np.nan, level, v.size)
    lo, hi = bca_limits((v,), np.mean, n_boot, level, seed, max_elements=None)
    return Estimate(float(v.mean()), float(lo), float(hi), level, v.size)


MIN_BCA_UNITS = 3   # fewer independent units than this: no interval (NaN), not a made-up band


def all_equal(values: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Whether each column's ``spread`` (max - min of its finite ``values`` (n, m)) is rounding only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        size = np.nanmax(np.abs(values), axis=0) if values.size else np.zeros(values.shape[1])
    return np.asarray(spread <= 1e-12 * np.maximum(size, 1e-300))


def _bca_group(v: np.ndarray, n_boot: int, level: float, seed: int, max_elements: int) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval of the column means of ``v`` (n, m), all finite; the same rows for every column."""
    lo, hi = bca_limits((v,), np.mean, n_boot, level, seed, cells=v.size, max_elements=max_elements, axis=0)
    return np.atleast_1d(lo), np.atleast_1d(hi)


def bca_mean_interval(values: np.ndarray, axis: int = 0, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
                      seed: int = 0, max_elements: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """BCa intervals (``scipy.stats.bootstrap``) of the means along ``axis`` of ``values``, NaNs dropped.

    The units along ``axis`` (e.g. a site's images) are resampled, the same units for every
    other entry (e.g. every epsilon) where they share their finite rows: columns are grouped
    by which rows are finite and each group is one vectorised bootstrap. A column with fewer
    than :data:`MIN_BCA_UNITS` finite values gets NaN; one whose values are all equal gets
    ``[value, value]`` (every resample is that value). ``max_elements``: resampled values held
    in memory at once. Returns (lo, hi), each ``values``' shape without ``axis``; unit of values.
    """
    check_n_boot(n_boot)
    check_level(level)
    v = np.moveaxis(np.asarray(values, dtype=float), axis, 0)
    rest = v.shape[1:]
    flat = v.reshape(v.shape[0], int(np.prod(rest)))
    lo, hi = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
    ok = np.isfinite(flat)
    enough = ok.sum(axis=0) >= MIN_BCA_UNITS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanmax(flat, axis=0) - np.nanmin(flat, axis=0) if flat.size else np.zeros(flat.shape[1])
    flat_cols = enough & all_equal(flat, spread)
    lo[flat_cols] = hi[flat_cols] = np.nanmean(flat[:, flat_cols], axis=0) if flat_cols.any() else 0.0
    todo = enough & ~flat_cols
    patterns, group = np.unique(ok[:, todo].T, axis=0, return_inverse=True) if todo.any() else (np.empty((0, 0)), [])
    cols = np.flatnonzero(todo)
    for g, rows in enumerate(patterns):
        c = cols[np.asarray(group).ravel() == g]
        lo[c], hi[c] = _bca_group(flat[np.asarray(rows, bool)][:, c], n_boot, level, seed, max_elements)
    return lo.reshape(rest), hi.reshape(rest)


def bca_pearson_by_cluster(x: np.ndarray, y: np.ndarray, cluster: np.ndarray, n_boot: int = DEFAULT_N_BOOT,
                           level: float = DEFAULT_LEVEL, seed: int = 0) -> Estimate:
    """Pearson r of the (n,) points ``(x, y)`` with a BCa interval resampling whole clusters.

    ``cluster``: (n,) label of each point's independent unit (points of one cluster share
    noise and are resampled together). A resample's r comes from the summed per-cluster
    moments, so every resample and jackknife pass is vectorised. NaN interval with fewer than
    :data:`MIN_BCA_UNITS` clusters; ``n`` of the Estimate = the number of clusters.
    """
    check_n_boot(n_boot)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels, ci = np.unique(np.asarray(cluster), return_inverse=True)
    n_clusters = len(labels)
    if len(x) < 3:
        return Estimate(np.nan, np.nan, np.nan, level, n_clusters)
    xc, yc = x - x.mean(), y - y.mean()
    moments = np.zeros((n_clusters, 6))
    np.add.at(moments, np.asarray(ci).ravel(), np.stack([np.ones_like(xc), xc, yc, xc * xc, yc * yc, xc * yc], 1))

    def pearson(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = np.moveaxis(moments[np.asarray(idx, dtype=np.int64)].sum(axis=-2), -1, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sxy - sx * sy / n) / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))

    value = float(pearson(np.arange(n_clusters)))
    if n_clusters < MIN_BCA_UNITS or not np.isfinite(value):
        return Estimate(value, np.nan, np.nan, level, n_clusters)
    lo, hi = bca_limits((np.arange(n_clusters, dtype=float),), pearson, n_boot, level, seed, cells=6 * n_clusters)
    return Estimate(value, float(lo), float(hi), level, n_clusters)


def bca_limits(data: tuple[np.ndarray, ...], statistic: Callable, n_boot: int, level: float, seed: int, *,
               cells: int = 1, max_elements: int | None = 4_000_000, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The project's one BCa call (``scipy.stats.bootstrap``, unpaired samples, vectorised
    ``statistic(*data, axis=axis)``, seeded). Resamples go in batches of about ``max_elements``
    resampled values given ``cells`` values per resample (None: all at once). A degenerate
    sample gives a NaN interval, reported as such. Returns (low, high) arrays of the
    statistic's shape."""
    from scipy import stats

    batch = None if max_elements is None else max(1, max_elements // max(cells, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(data, statistic, n_resamples=int(n_boot), confidence_level=level, method="BCa",
                             paired=False, vectorized=True, batch=batch, axis=axis,
                             random_state=np.random.default_rng(seed)).confidence_interval
    return np.asarray(ci.low), np.asarray(ci.high)


def bca_interval(data: tuple[np.ndarray, ...], statistic: Callable, n_boot: int, level: float, seed: int,
                 cells: int) -> tuple[float, float]:
    """BCa interval (:func:`bca_limits`) of a scalar ``statistic(*data, axis=-1)`` (vectorised),
    in batches of about 4e6 resampled values given ``cells`` values per resample."""
    check_n_boot(n_boot)
    lo, hi = bca_limits(data, statistic, n_boot, level, seed, cells=cells)
    return float(lo), float(hi)


def pigeonhole_bca(values: np.ndarray, per_site: Callable[[np.ndarray], np.ndarray], n_boot: int, level: float,
                   seed: int) -> tuple[float, float]:
    """BCa interval of the mean over sites of ``per_site(values)``, sites AND images random.

    values: (n_images, n_sites), the images shared by the sites (crossed); ``per_site`` maps
    (..., n_images, n_sites) to (..., n_sites) (e.g. a NaN-mean over images). The pigeonhole
    bootstrap (sites and images resampled independently; Owen 2007) with BCa, in batches of
    bounded memory. It counts the site x image variance more than once, so it errs wide: the
    random-effects rescaling of :func:`analysis.inference.two_level_estimate` needs a mean over
    images. Fewer than 3 sites: sites held fixed."""
    n_img, n_sites = values.shape
    images = np.arange(n_img, dtype=float)

    def pooled(t: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(per_site(t), axis=-1)
    if n_sites < MIN_BCA_UNITS:
        def over_images(i, axis=-1):
            return pooled(values[np.asarray(i, np.int64)])                   # (..., images, sites)
        return bca_interval((images,), over_images, n_boot, level, seed, values.size)

    def both(s, i, axis=-1):
        s, i = np.asarray(s, np.int64), np.asarray(i, np.int64)
        return pooled(values[i[..., :, None], s[..., None, :]])              # (..., images, sites)
    return bca_interval((np.arange(n_sites, dtype=float), images), both, n_boot, level, seed, values.size)
