"""Bootstrap confidence intervals (seeded): BCa via ``scipy.stats.bootstrap`` for means; the
resample-count helpers below serve the per-site bands of the sensitivity curves.

Everything here is unit-agnostic: the CI has the unit of the values passed in (spikes per
70-170 ms window, or multiples of a site's clean-image s.d. after normalisation).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_N_BOOT = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap confidence interval ``[lo, hi]``.

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


def percentile_interval(boot: np.ndarray, level: float = DEFAULT_LEVEL, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper percentiles of bootstrap replicates ``boot`` along ``axis`` (NaNs ignored)."""
    check_level(level)
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN
        lo = np.nanpercentile(boot, 100 * alpha, axis=axis)
        hi = np.nanpercentile(boot, 100 * (1 - alpha), axis=axis)
    return lo, hi


def estimate_from_boot(value: float, boot: np.ndarray, level: float = DEFAULT_LEVEL, n: int = 0) -> Estimate:
    """Wrap a point estimate and its 1-d bootstrap replicates ``(n_boot,)`` into an Estimate."""
    lo, hi = percentile_interval(np.asarray(boot, dtype=float), level)
    return Estimate(float(value), float(lo), float(hi), level, int(n))


def bootstrap_mean(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
                   seed: int = 0) -> Estimate:
    """Mean of ``values`` (n,) with a BCa CI (``scipy.stats.bootstrap``) over the n values (NaNs dropped)."""
    from scipy import stats

    check_n_boot(n_boot)
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Estimate(np.nan, np.nan, np.nan, level, 0)
    if v.size < 3 or np.ptp(v) == 0:
        return Estimate(float(v.mean()), np.nan, np.nan, level, v.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((v,), np.mean, n_resamples=int(n_boot), confidence_level=level, method="BCa",
                             random_state=np.random.default_rng(seed)).confidence_interval
    return Estimate(float(v.mean()), float(ci.low), float(ci.high), level, v.size)


def resample_counts(n_rows: int, n_boot: int, rng: np.random.Generator, max_elements: int = 2_000_000):
    """Yield chunks of bootstrap count matrices, (chunk, n_rows) floats.

    Row b says how often each of the n_rows units was drawn in resample b (n_rows draws
    with replacement), so a resampled sum is ``counts @ values``. Chunks bound memory.
    """
    chunk = max(1, max_elements // max(n_rows, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n_rows, size=(b, n_rows)) + (np.arange(b) * n_rows)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n_rows).reshape(b, n_rows).astype(float)


def resample_rows_mean(table: np.ndarray, n_rows: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the column means of ``table[:n_rows]``.

    ``table``: (n_rows_max, n_cols), NaN where a row has no value for a column. Rows (images)
    are resampled with replacement, the same rows for every column, so columns that share
    images (epsilons of one clean image) keep their correlation. Returns (n_boot, n_cols);
    a column with no finite value in a resample is NaN.
    """
    n_cols = table.shape[1]
    if n_rows == 0:
        return np.full((n_boot, n_cols), np.nan)
    t = table[:n_rows]
    ok = np.isfinite(t)
    filled, okf = np.where(ok, t, 0.0), ok.astype(float)
    out = np.empty((n_boot, n_cols))
    i = 0
    for w in resample_counts(n_rows, n_boot, rng):
        with np.errstate(invalid="ignore", divide="ignore"):
            cnt = w @ okf
            out[i:i + len(w)] = np.where(cnt > 0, (w @ filled) / np.maximum(cnt, 1), np.nan)
        i += len(w)
    return out


def combine_boot(a_value: float, a_boot: np.ndarray, b_value: float, b_boot: np.ndarray, op: str,
                 level: float = DEFAULT_LEVEL) -> Estimate:
    """``a op b`` (op: "ratio" or "difference") with a CI from paired bootstrap replicates.

    Replicates of independent resamples (e.g. targeted vs random stimuli, day 1 vs day 5)
    are combined replicate by replicate; with independent data this is the bootstrap of
    the combined statistic.
    """
    a_boot = np.asarray(a_boot, dtype=float)
    b_boot = np.asarray(b_boot, dtype=float)
    if a_boot.shape != b_boot.shape:
        raise ValueError(f"bootstrap replicates differ in shape {a_boot.shape} vs {b_boot.shape}; "
                         "compute both with the same n_boot")
    with np.errstate(invalid="ignore", divide="ignore"):
        if op == "ratio":
            return estimate_from_boot(a_value / b_value if b_value != 0 else np.nan, a_boot / b_boot, level)
        if op == "difference":
            return estimate_from_boot(a_value - b_value, a_boot - b_boot, level)
    raise ValueError(f"op must be 'ratio' or 'difference'; got {op!r}")
