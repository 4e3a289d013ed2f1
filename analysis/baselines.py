"""Baselines for the sensitivity curve: random image pairs and model-free random directions.

Responses: (n_stimuli, n_channels) mean spike counts per stimulus (70-170 ms window), rows
in the order of the provenance columns; NaN = not measured.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOT, Estimate, check_n_boot, estimate_from_boot, percentile_interval
from analysis.provenance import check_responses, provenance_columns
from analysis.sensitivity import SensitivityCurve, clean_sigma, sensitivity_curve


@dataclass(frozen=True)
class SiteLevel:
    """A scalar per site (no epsilon dependence) plus its population mean, with CIs.

    ``sites``, ``value``, ``lo``, ``hi``: (n_sites,); ``boot``: (n_boot, n_sites);
    ``population``: mean over sites; ``population_boot``: (n_boot,).
    Unit: multiples of sigma_i if ``normalised`` else spikes per window.
    """

    sites: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    boot: np.ndarray
    population: Estimate
    population_boot: np.ndarray
    normalised: bool

    @property
    def unit(self) -> str:
        return "multiples of the site's clean-image s.d." if self.normalised else "spikes per window"


def site_level(sites: np.ndarray, value: np.ndarray, boot: np.ndarray, normalised: bool, level: float,
               n: int) -> SiteLevel:
    """Assemble a SiteLevel from per-site values (n_sites,) and replicates (n_boot, n_sites)."""
    lo, hi = percentile_interval(boot, level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pop_boot = np.nanmean(boot, axis=1)
        pop = estimate_from_boot(np.nanmean(value), pop_boot, level, n)
    return SiteLevel(np.asarray(sites), value, lo, hi, boot, pop, pop_boot, normalised)


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
    over random pairs). CI: bootstrap over clean images. ``sites`` default: all channels.
    responses: (n_stimuli, n_channels) spikes; only rows with kind == "clean" are used.
    """
    check_n_boot(n_boot)
    kind = provenance_columns(prov, ("kind",))["kind"]
    r = check_responses(responses, len(kind))
    sites = np.arange(r.shape[1]) if sites is None else np.asarray(sites, dtype=np.int64)
    clean = r[kind == "clean"][:, sites]
    if normalise:
        sigma = clean_sigma(r, prov, sites) if sigma is None else np.asarray(sigma, dtype=float)
    rng = np.random.default_rng(seed)
    value = np.full(len(sites), np.nan)
    boot = np.full((n_boot, len(sites)), np.nan)
    for k in range(len(sites)):
        v = clean[:, k][np.isfinite(clean[:, k])]
        if v.size < 2:
            raise ValueError(f"site {int(sites[k])} has fewer than 2 measured clean images; the random-pair "
                             "baseline needs at least 2")
        value[k] = mean_abs_pair_difference(v)
        boot[:, k] = mean_abs_pair_difference(v[rng.integers(0, v.size, size=(n_boot, v.size))])
    if normalise:
        value, boot = value / sigma, boot / sigma
    return site_level(sites, value, boot, normalise, level, int(np.isfinite(clean).any(axis=1).sum()))


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
