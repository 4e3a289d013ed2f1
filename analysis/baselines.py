"""Baselines for the sensitivity curve: random image pairs and model-free random directions.

Responses: (n_stimuli, n_channels) mean spike counts per stimulus (70-170 ms window), rows
in the order of the provenance columns; NaN = not measured.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    MIN_BCA_UNITS,
    Estimate,
    bca_interval,
    bca_mean_interval,
    check_n_boot,
    pigeonhole_bca,
)
from analysis.inference import two_level_estimate
from analysis.provenance import check_responses, provenance_columns
from analysis.sensitivity import SensitivityCurve, clean_sigma, sensitivity_curve


@dataclass(frozen=True)
class SiteLevel:
    """A scalar per site (no epsilon dependence) plus its population mean, with CIs.

    ``sites``, ``value``, ``lo``, ``hi``: (n_sites,), a site's interval is BCa over its
    images (stimuli); ``population``: mean over sites, interval with sites and images random.
    Unit: multiples of sigma_i if ``normalised`` else spikes per window.
    """

    sites: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    population: Estimate
    normalised: bool

    @property
    def unit(self) -> str:
        return "multiples of the site's clean-image s.d." if self.normalised else "spikes per window"


def site_level_of_means(sites: np.ndarray, per_unit: np.ndarray, normalised: bool, n_boot: int, level: float,
                        seed: int) -> SiteLevel:
    """Per-site means over units (images, stimuli) of ``per_unit`` (n_units, n_sites), NaN = missing.

    Site intervals: BCa over that site's units. Population (mean over sites of the site means):
    :func:`analysis.inference.two_level_estimate`, crossed (every unit is shared by the sites).
    """
    v = np.asarray(per_unit, dtype=float)
    lo, hi = bca_mean_interval(v, 0, n_boot, level, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = np.nanmean(v, axis=0)
        pop = float(np.nanmean(value))
    n = int(np.isfinite(v).any(axis=1).sum())
    est = two_level_estimate([v.T[:, :, None]], np.asarray, n_resamples=n_boot, level=level, seed=seed).estimates[0]
    pop_lo, pop_hi = est.lo, est.hi
    return SiteLevel(np.asarray(sites), value, lo, hi, Estimate(pop, pop_lo, pop_hi, level, n), normalised)


def mean_abs_pair_difference(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of |a_j - a_k| over all pairs j < k along ``axis`` (exact, O(n log n) by sorting)."""
    a = np.sort(np.moveaxis(np.asarray(a, dtype=float), axis, -1), axis=-1)
    n = a.shape[-1]
    if n < 2:
        return np.full(a.shape[:-1], np.nan)
    weights = 2.0 * np.arange(n) - n + 1.0
    return (a * weights).sum(axis=-1) / (n * (n - 1) / 2.0)


def random_pair_baseline(responses: np.ndarray, prov, *, sites: np.ndarray | None = None,
                         normalise: bool = True, sigma: np.ndarray | None = None,
                         n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> SiteLevel:
    """Random-image-pair baseline ``mean |r_i(x_j) - r_i(x_k)| / sigma_i`` over clean images.

    The mean is taken exactly over all pairs j < k of distinct clean images (the expectation
    over random pairs). CIs: per site, BCa over its clean images; population (mean over
    sites), :func:`pigeonhole_bca` on the clean images every site has. ``sites``
    default: all channels. responses: (n_stimuli, n_channels) spikes; only rows with
    kind == "clean" are used.
    """
    check_n_boot(n_boot)
    kind = provenance_columns(prov, ("kind",))["kind"]
    r = check_responses(responses, len(kind))
    sites = np.arange(r.shape[1]) if sites is None else np.asarray(sites, dtype=np.int64)
    clean = r[kind == "clean"][:, sites]
    if normalise:
        sigma = clean_sigma(r, prov, sites) if sigma is None else np.asarray(sigma, dtype=float)
        clean = clean / sigma
    value, lo, hi = (np.full(len(sites), np.nan) for _ in range(3))
    for k in range(len(sites)):
        v = clean[:, k][np.isfinite(clean[:, k])]
        if v.size < 2:
            raise ValueError(f"site {int(sites[k])} has fewer than 2 measured clean images; the random-pair "
                             "baseline needs at least 2")
        value[k] = mean_abs_pair_difference(v)
        if v.size >= MIN_BCA_UNITS and np.ptp(v) > 0:
            lo[k], hi[k] = bca_interval((v,), mean_abs_pair_difference, n_boot, level, seed + k, v.size)
    shared = clean[np.isfinite(clean).all(axis=1)]
    pop_lo, pop_hi = (pigeonhole_bca(shared, lambda t: mean_abs_pair_difference(t, axis=-2), n_boot, level, seed)
                      if len(shared) >= MIN_BCA_UNITS and len(sites) else (np.nan, np.nan))
    n = int(np.isfinite(clean).any(axis=1).sum())
    return SiteLevel(sites, value, lo, hi, Estimate(float(np.mean(value)), pop_lo, pop_hi, level, n), normalise)


def random_direction_control(responses: np.ndarray, prov, *, sites: np.ndarray | None = None,
                             normalise: bool = True, sigma: np.ndarray | None = None,
                             n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
                             seed: int = 0) -> SensitivityCurve:
    """Model-free control: ``|r_i(x+delta) - r_i(x)|`` for random directions (kind "random").

    Same estimator, epsilons and normalisation as the targeted curve. A random stimulus with
    ``site == -1`` counts for every analysed site (default: the targeted sites).
    """
    return sensitivity_curve(responses, prov, estimator="abs", kind="random", sites=sites, normalise=normalise,
                             sigma=sigma, n_boot=n_boot, level=level, seed=seed)
