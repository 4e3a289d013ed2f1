"""Measurement noise: split-half noise floor, split-half reliability, Poisson bias of |.|.

Per-repeat responses are spike counts per presentation in the 70-170 ms window,
``(n_repeats, n_stimuli, n_channels)``, NaN where a repeat is missing (stimuli may have
different numbers of valid repeats).
"""
from __future__ import annotations

import warnings

import numpy as np

from analysis.baselines import SiteLevel, site_level_of_means
from analysis.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOT, check_n_boot


def check_repeats(repeats: np.ndarray) -> np.ndarray:
    r = np.asarray(repeats, dtype=float)
    if r.ndim != 3:
        raise ValueError(f"per-repeat responses must have shape (n_repeats, n_stimuli, n_channels) with NaN for "
                         f"missing repeats; got shape {r.shape}")
    return r


def select_stimuli(repeats: np.ndarray, stimuli) -> np.ndarray:
    """Restrict (n_repeats, n_stimuli, n_channels) to ``stimuli`` (index array or boolean mask)."""
    if stimuli is None:
        return repeats
    idx = np.asarray(stimuli)
    if idx.dtype == bool and idx.shape != (repeats.shape[1],):
        raise ValueError(f"stimuli mask has shape {idx.shape}; expected ({repeats.shape[1]},), one per stimulus")
    return repeats[:, idx]


def ranks_along_first_axis(keys: np.ndarray) -> np.ndarray:
    """Rank (0 = smallest) of each entry among its column along axis 0."""
    order = np.argsort(keys, axis=0)
    rank = np.empty_like(order)
    shape = (-1,) + (1,) * (keys.ndim - 1)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(keys.shape[0]).reshape(shape), keys.shape), axis=0)
    return rank


def split_halves(repeats: np.ndarray, rng: np.random.Generator):
    """One random split of each stimulus's valid repeats into two halves.

    Returns half means ``a``, ``b`` (n_stimuli, n_channels) spikes, half sizes ``n1``, ``n2``
    and valid-repeat count ``m`` (n_stimuli, n_channels); entries with m < 2 are NaN.
    The split is the same for every channel of a stimulus (a presentation is one unit).
    """
    valid = np.isfinite(repeats)
    keys = rng.random(repeats.shape[:2])
    per_presentation = valid.all(axis=2)
    if np.array_equal(per_presentation, valid.any(axis=2)):  # usual case: a presentation is valid or not
        rank = ranks_along_first_axis(np.where(per_presentation, keys, np.inf))[:, :, None]
    else:
        rank = ranks_along_first_axis(np.where(valid, keys[:, :, None], np.inf))
    m = valid.sum(axis=0)
    n1 = m // 2
    n2 = m - n1
    in_a = valid & (rank < n1[None])
    in_b = valid & ~in_a
    x = np.where(valid, repeats, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(m >= 2, (x * in_a).sum(axis=0) / n1, np.nan)
        b = np.where(m >= 2, (x * in_b).sum(axis=0) / n2, np.nan)
    return a, b, n1, n2, m


def split_half_noise_floor(repeats: np.ndarray, *, stimuli=None, sites: np.ndarray | None = None,
                           sigma: np.ndarray | None = None, n_splits: int = 20, scale_to_full: bool = True,
                           n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> SiteLevel:
    """Measurement-noise floor of the absolute-difference sensitivity, per site, with CIs.

    For each stimulus the valid repeats are split at random into halves of n1 and n2 and
    ``|mean(half1) - mean(half2)|`` is taken (averaged over ``n_splits`` splits). With
    ``scale_to_full`` it is multiplied by ``sqrt((2/m) / (1/n1 + 1/n2))`` (m = all valid
    repeats), turning it into the expected ``|r(x') - r(x)|`` of two stimuli that evoke the
    same rate, each averaged over m repeats: what ``s_i(x,e)`` reads when delta has no effect
    (exact for Gaussian noise, close for Poisson counts).

    repeats: (n_repeats, n_stimuli, n_channels) spikes, NaN = missing repeat.
    stimuli: indices or mask of the stimuli to use (default all). sites: channels (default all).
    sigma: (n_sites,) spikes; if given the floor is divided by it (same units as the
    normalised curve). CIs: per site BCa over stimuli; population two-level (sites and stimuli
    random, :func:`analysis.baselines.site_level_of_means`).
    """
    check_n_boot(n_boot)
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1; got {n_splits}")
    r = select_stimuli(check_repeats(repeats), stimuli)
    sites = np.arange(r.shape[2]) if sites is None else np.asarray(sites, dtype=np.int64)
    r = r[:, :, sites]
    rng = np.random.default_rng(seed)
    total = np.zeros(r.shape[1:])
    for _ in range(n_splits):
        a, b, n1, n2, m = split_halves(r, rng)
        d = np.abs(a - b)
        if scale_to_full:
            with np.errstate(invalid="ignore", divide="ignore"):
                d = d * np.sqrt((2.0 / m) / (1.0 / n1 + 1.0 / n2))
        total += d
    per_stim = total / n_splits  # (n_stimuli, n_sites), NaN where m < 2
    ok = np.isfinite(per_stim)
    if not ok.any():
        raise ValueError("no stimulus has 2 or more valid repeats; the split-half noise floor needs repeats")
    normalised = sigma is not None
    if normalised:
        sigma = np.asarray(sigma, dtype=float)
        if sigma.shape != (len(sites),):
            raise ValueError(f"sigma must have one entry per site, shape ({len(sites)},); got {sigma.shape}")
        per_stim = per_stim / sigma
    return site_level_of_means(sites, per_stim, normalised, n_boot, level, seed)


def split_half_reliability(repeats: np.ndarray, *, stimuli=None, n_splits: int = 20, seed: int = 0) -> np.ndarray:
    """Spearman-Brown corrected split-half reliability per channel, (n_channels,), unitless.

    Pearson r across stimuli between the two half means, corrected to the full repeat
    count as ``2r / (1 + r)``, averaged over ``n_splits`` random splits. This is the noise
    ceiling that a model's cross-validated r is compared with. Stimuli with < 2 valid repeats
    are skipped. repeats: (n_repeats, n_stimuli, n_channels) spikes, NaN = missing.
    """
    r = select_stimuli(check_repeats(repeats), stimuli)
    rng = np.random.default_rng(seed)
    out = np.zeros(r.shape[2])
    for _ in range(n_splits):
        a, b, *_ = split_halves(r, rng)
        for c in range(r.shape[2]):
            ok = np.isfinite(a[:, c]) & np.isfinite(b[:, c])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rho = np.corrcoef(a[ok, c], b[ok, c])[0, 1] if ok.sum() >= 3 else np.nan
            out[c] += 2 * rho / (1 + rho)
    return out / n_splits


def poisson_pmf(mean: float) -> np.ndarray:
    """Poisson(mean) probabilities on 0..K, K covering all but ~1e-15 of the mass."""
    if mean < 0:
        raise ValueError(f"Poisson mean must be >= 0; got {mean}")
    if mean == 0:
        return np.ones(1)
    k_max = int(mean + 14 * np.sqrt(mean) + 30)
    k = np.arange(k_max + 1)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k_max + 1)))])
    return np.exp(k * np.log(mean) - mean - log_fact)


def expected_abs_difference_poisson(rate_a: float, rate_b: float, n_a: int = 1, n_b: int = 1) -> float:
    """Exact ``E|mean_a - mean_b|`` for means of n_a iid Poisson(rate_a) and n_b iid Poisson(rate_b) counts.

    rate_a, rate_b: expected spike counts per presentation (spikes per window).
    The sum of n Poisson(rate) counts is Poisson(n * rate); the expectation is a sum over
    both count distributions. Its excess over |rate_a - rate_b| is the upward bias of the
    absolute-difference sensitivity estimator.
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"repeat counts must be >= 1; got n_a={n_a}, n_b={n_b}")
    pa, pb = poisson_pmf(n_a * rate_a), poisson_pmf(n_b * rate_b)
    ka, kb = np.arange(len(pa)) / n_a, np.arange(len(pb)) / n_b
    return float(pa @ np.abs(ka[:, None] - kb[None, :]) @ pb)
