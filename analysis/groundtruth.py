"""Simulation only: how much of the true (white-box) sensitivity the closed loop achieved."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import Estimate
from analysis.sensitivity import SensitivityCurve


@dataclass(frozen=True)
class FractionOfTrue:
    """Achieved / true sensitivity. ``epsilons`` (n_eps,); ``site_fraction`` (n_sites, n_eps);
    ``population``: one Estimate per epsilon, ratio of population means (mean over sites of
    achieved / mean over sites of true), CI: the achieved curve's two-level population interval
    divided by the (fixed, known) true population value."""

    epsilons: np.ndarray
    sites: np.ndarray
    site_fraction: np.ndarray
    population: dict[float, Estimate]


def fraction_of_true(achieved: SensitivityCurve, true_sensitivity: np.ndarray) -> FractionOfTrue:
    """Fraction of each site's true sensitivity that the loop reached, per epsilon.

    achieved: curve measured by the loop (use the bias-corrected estimator, or the curve of
        true rates at the loop's stimuli, so noise does not inflate it).
    true_sensitivity: (n_sites, n_eps) white-box sensitivity of the hidden ground truth, in
        the achieved curve's units (spikes per window, or divided by the same sigma_i if
        ``achieved.normalised``), rows in ``achieved.sites`` order, columns in
        ``achieved.epsilons`` order. Computed elsewhere (sim) with a budget large enough
        that doubling it changes the answer by < 2%.
    """
    true = np.asarray(true_sensitivity, dtype=float)
    if true.shape != achieved.site_mean.shape:
        raise ValueError(f"true_sensitivity must have shape (n_sites, n_eps) = {achieved.site_mean.shape} "
                         f"(sites {achieved.sites.tolist()}, epsilons {achieved.epsilons.tolist()}); got {true.shape}")
    if np.any(true <= 0):
        raise ValueError("true_sensitivity must be > 0 everywhere (a white-box attack always moves a site a "
                         "little); check its units and ordering")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        site_fraction = achieved.site_mean / true
        has = np.isfinite(achieved.site_mean)
        true_pop = np.array([true[has[:, k], k].mean() if has[:, k].any() else np.nan
                             for k in range(true.shape[1])])
    # the truth is a fixed positive number: the fraction's interval is the curve's, divided by it
    pop = {float(e): Estimate(float(achieved.population[k] / true_pop[k]), float(achieved.population_lo[k] / true_pop[k]),
                              float(achieved.population_hi[k] / true_pop[k]), achieved.level,
                              int(achieved.n_images[:, k].sum()))
           for k, e in enumerate(achieved.epsilons)}
    return FractionOfTrue(achieved.epsilons, achieved.sites, site_fraction, pop)
