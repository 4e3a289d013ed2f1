"""Known-answer tests for the sensitivity estimators, baselines, noise floor and bootstrap."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.baselines import mean_abs_pair_difference, random_direction_control, random_pair_baseline
from analysis.bootstrap import bootstrap_mean
from analysis.groundtruth import fraction_of_true
from analysis.noise import expected_abs_difference_poisson, split_half_noise_floor, split_half_reliability
from analysis.sensitivity import predicted_vs_measured, sensitivity_curve
from tests.test_analysis_synthetic import closed_loop_day, provenance


def pm_day(n_sites: int, n_images: int, eps: float = 1.0):
    """Provenance of clean images, each with a +1 and a -1 targeted stimulus at one epsilon.
    Returns (prov, parent index, direction) for the perturbed rows."""
    rows = []
    for s in range(n_sites):
        for _ in range(n_images):
            p = len(rows)
            rows.append(dict(kind="clean", parent=-1, site=-1, eps=0.0, dir=0, pred=np.nan))
            for d in (1, -1):
                rows.append(dict(kind="targeted", parent=p, site=s, eps=eps, ei=0, dir=d, pred=2.0 * d))
    return provenance(rows, [eps])


def ci_se(curve, k=0):
    """Standard error of the population value at epsilon index k, read off its 95% interval
    (the curve keeps no bootstrap replicates: its band is the two-level interval)."""
    return float(curve.population_hi[k] - curve.population_lo[k]) / (2 * 1.96)


# --- bias-corrected estimator ------------------------------------------------------------------

@pytest.mark.parametrize("q", [0.0, 0.25])
def test_bias_corrected_is_unbiased_with_right_signs_and_shrinks_by_1_minus_2q(q):
    """True shift = direction * mu; a fraction q of predicted signs wrong -> E = (1 - 2q) * mu."""
    mu, n_sites, n_img = 0.4, 2, 3000
    prov = pm_day(n_sites, n_img)
    rng = np.random.default_rng(1)
    n = len(prov["kind"])
    truth = np.full((n, n_sites), 5.0)
    pert = np.flatnonzero(prov["kind"] == "targeted")
    truth[pert, prov["site"][pert]] += prov["direction"][pert] * mu
    responses = truth + rng.standard_normal(truth.shape)  # mean spike counts with s.d. 1 noise
    wrong = rng.choice(pert, size=int(round(q * len(pert))), replace=False)
    prov["predicted_change"][wrong] *= -1
    curve = sensitivity_curve(responses, prov, estimator="signed", normalise=False, n_boot=500, seed=2)
    expected = (1 - 2 * q) * mu
    se = ci_se(curve)
    assert 0.005 < se < 0.02
    assert abs(curve.population[0] - expected) < 4 * se, (curve.population[0], expected, se)
    # and the absolute estimator on the same data is far above mu (noise bias)
    absolute = sensitivity_curve(responses, prov, estimator="abs", normalise=False, n_boot=100)
    assert absolute.population[0] > mu + 0.3


# --- absolute estimator under Poisson noise ----------------------------------------------------

def test_expected_abs_difference_poisson_matches_skellam_and_monte_carlo():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = 3.0, 4.5
    k = np.arange(-80, 81)
    skellam = float((np.abs(k) * scipy_stats.skellam.pmf(k, a, b)).sum())
    assert expected_abs_difference_poisson(a, b, 1, 1) == pytest.approx(skellam, rel=1e-9)
    # unequal repeat counts: means of 3 and 5 Poisson counts, large-sample check (fixed seed)
    rng = np.random.default_rng(0)
    n = 400_000
    x = rng.poisson(3 * a, n) / 3
    y = rng.poisson(5 * b, n) / 5
    d = np.abs(x - y)
    assert expected_abs_difference_poisson(a, b, 3, 5) == pytest.approx(d.mean(), abs=4 * d.std() / np.sqrt(n))
    # no noise bias when rates are far apart, and E|X - Y| >= |a - b| always
    assert expected_abs_difference_poisson(0.0, 50.0, 1, 1) == pytest.approx(50.0, rel=1e-9)
    assert expected_abs_difference_poisson(a, b, 2, 2) > abs(a - b)


def test_absolute_estimator_is_biased_up_by_the_poisson_expectation():
    """Clean rate 4, perturbed 4 +/- 0.5 spikes, 5 repeats each: E|dr| from the exact formula."""
    n_sites, n_img, n_rep, a, delta = 2, 3000, 5, 4.0, 0.5
    prov = pm_day(n_sites, n_img)
    n = len(prov["kind"])
    rates = np.full((n, n_sites), a)
    pert = np.flatnonzero(prov["kind"] == "targeted")
    rates[pert, prov["site"][pert]] += prov["direction"][pert] * delta
    rng = np.random.default_rng(3)
    responses = rng.poisson(np.broadcast_to(rates, (n_rep,) + rates.shape)).mean(axis=0)
    curve = sensitivity_curve(responses, prov, estimator="abs", normalise=False, n_boot=500, seed=4)
    expected = 0.5 * (expected_abs_difference_poisson(a + delta, a, n_rep, n_rep)
                      + expected_abs_difference_poisson(a - delta, a, n_rep, n_rep))
    se = ci_se(curve)
    assert expected - delta > 0.4  # the bias is large compared with the true shift
    assert abs(curve.population[0] - expected) < 4 * se, (curve.population[0], expected, se)
    signed = sensitivity_curve(responses, prov, estimator="signed", normalise=False, n_boot=500, seed=4)
    assert abs(signed.population[0] - delta) < 4 * ci_se(signed)  # bias-corrected recovers the truth


# --- site attribution, controls, NaNs ----------------------------------------------------------

def test_noise_free_day_gives_exact_curves_and_counts_each_stimulus_for_its_site_only():
    eps = (0.5, 1.0, 2.0)
    prov, rates, model = closed_loop_day(n_sites=3, n_images=5, epsilons=eps, n_channels=5, gain=1.0,
                                         model_gain=1.5)
    rates = np.maximum(rates, 0) + 3.0  # keep floor-clipping away: every shift is exactly gain * eps
    curve = sensitivity_curve(rates, prov, normalise=False, n_boot=50)
    assert curve.sites.tolist() == [0, 1, 2]
    np.testing.assert_allclose(curve.site_mean, np.tile(eps, (3, 1)), atol=1e-12)
    np.testing.assert_allclose(curve.population_lo, eps)
    np.testing.assert_allclose(curve.n_images, 5)
    signed = sensitivity_curve(rates, prov, estimator="signed", normalise=False, n_boot=50)
    np.testing.assert_allclose(signed.population, eps)
    on_model = sensitivity_curve(model + 3.0, prov, normalise=False, n_boot=50)  # model units
    np.testing.assert_allclose(on_model.population, 1.5 * np.array(eps))
    control = random_direction_control(rates, prov, normalise=False, n_boot=50)
    assert control.sites.tolist() == [0, 1, 2]
    np.testing.assert_allclose(control.population, 0.0)
    np.testing.assert_allclose(control.n_images, 15)  # site -1 controls count for every site
    # an explicitly requested site with no stimuli is NaN and does not enter the population mean
    sub = sensitivity_curve(rates, prov, sites=[0, 4], normalise=False, n_boot=50)
    assert np.isnan(sub.site_mean[1]).all() and sub.population == pytest.approx(eps)
    # unmeasured stimuli (NaN) are dropped, not counted as zero
    holey = rates.copy()
    holey[np.flatnonzero(prov["kind"] == "targeted")[::3]] = np.nan
    np.testing.assert_allclose(sensitivity_curve(holey, prov, normalise=False, n_boot=50).population, eps)


def test_normalised_curve_divides_by_clean_sd():
    prov, rates, _ = closed_loop_day(n_sites=2, n_images=6, epsilons=(1.0,), gain=1.0)
    rates = rates + 3.0
    sd = np.std(rates[prov["kind"] == "clean"][:, :2], axis=0, ddof=1)
    curve = sensitivity_curve(rates, prov, n_boot=50)
    np.testing.assert_allclose(curve.site_mean[:, 0], 1.0 / sd)
    np.testing.assert_allclose(curve.sigma, sd)


def test_bad_inputs_raise_one_clear_error():
    prov, rates, _ = closed_loop_day(n_sites=2, n_images=3, epsilons=(1.0,))
    with pytest.raises(ValueError, match="estimator='abs'"):
        sensitivity_curve(rates, prov, estimator="signed", kind="random")
    with pytest.raises(ValueError, match="n_stimuli"):
        sensitivity_curve(rates[:-1], prov)
    with pytest.raises(ValueError, match="missing column 'parent'"):
        sensitivity_curve(rates, {"kind": prov["kind"]})
    with pytest.raises(ValueError, match="estimator must be"):
        sensitivity_curve(rates, prov, estimator="mean")
    flat = rates.copy()
    flat[:, 1] = 5.0
    with pytest.raises(ValueError, match=r"sites \[1\]"):
        sensitivity_curve(flat, prov)


# --- baselines ---------------------------------------------------------------------------------

def test_mean_abs_pair_difference_equals_brute_force():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 37))
    brute = [np.mean([abs(x[j] - x[k]) for j in range(37) for k in range(j + 1, 37)]) for x in a]
    np.testing.assert_allclose(mean_abs_pair_difference(a), brute, rtol=1e-12)


def test_random_pair_baseline_on_known_structure():
    # channel 0: five 0s and five 1s -> 25 of the 45 pairs differ by 1; channel 1: 0..9 -> mean |j-k| = 11/3
    kind = np.array(["clean"] * 10 + ["targeted"] * 2, dtype=object)
    resp = np.zeros((12, 2))
    resp[:10, 0] = [0, 1] * 5
    resp[:10, 1] = np.arange(10)
    resp[10:] = 1e6  # perturbed rows never enter the baseline
    base = random_pair_baseline(resp, {"kind": kind}, normalise=False, n_boot=200)
    np.testing.assert_allclose(base.value, [25 / 45, 11 / 3], rtol=1e-12)
    # Gaussian clean responses: E|X - Y| / sigma = 2 / sqrt(pi)
    rng = np.random.default_rng(6)
    g = rng.normal(10, 3, size=(4000, 3))
    norm = random_pair_baseline(g, {"kind": np.array(["clean"] * 4000, dtype=object)}, n_boot=200)
    np.testing.assert_allclose(norm.value, 2 / np.sqrt(np.pi), atol=0.03)
    assert norm.population.lo < 2 / np.sqrt(np.pi) < norm.population.hi


# --- measurement noise -------------------------------------------------------------------------

def test_split_half_noise_floor_on_pure_noise_equals_expected_abs_difference():
    """Gaussian repeats (s.d. 2), 7 valid of 9 per stimulus: floor = sqrt(2/7) * 2 * sqrt(2/pi),
    which is also what |dr| reads for perturbations that do nothing."""
    rng = np.random.default_rng(7)
    n_stim, n_ch, sd = 2000, 3, 2.0
    means = rng.uniform(3, 9, size=(n_stim, n_ch))
    reps = means + sd * rng.standard_normal((9, n_stim, n_ch))
    for s in range(n_stim):
        reps[rng.choice(9, 2, replace=False), s] = np.nan
    floor = split_half_noise_floor(reps, n_boot=300, seed=8)
    expected = np.sqrt(2 / 7) * sd * np.sqrt(2 / np.pi)
    se = (floor.hi - floor.lo) / (2 * 1.96)   # per-site BCa interval over stimuli
    assert np.all(np.abs(floor.value - expected) < 4 * se), (floor.value, expected, se)
    raw = split_half_noise_floor(reps, n_boot=100, scale_to_full=False, seed=8)  # halves of 3 and 4
    np.testing.assert_allclose(raw.value, np.sqrt(1 / 3 + 1 / 4) * sd * np.sqrt(2 / np.pi), rtol=0.05)
    # a repeat missing on one channel only (per-channel NaN) leaves the other channels' split unchanged
    holey = reps.copy()
    holey[0, :500, 1] = np.nan
    patched = split_half_noise_floor(holey, n_boot=100, seed=8)
    assert patched.value[0] == pytest.approx(floor.value[0], rel=1e-12)
    assert abs(patched.value[1] - expected) < 0.05
    # with sigma: same numbers in units of sigma
    scaled = split_half_noise_floor(reps, sigma=np.full(n_ch, 2.0), n_boot=100, seed=8)
    np.testing.assert_allclose(scaled.value, floor.value / 2.0)


def test_split_half_reliability_matches_spearman_brown_truth():
    """Signal variance 1, noise variance 4, 8 repeats: reliability of the mean = 1 / (1 + 4/8)."""
    rng = np.random.default_rng(9)
    signal = rng.standard_normal((3000, 2))
    reps = signal + 2.0 * rng.standard_normal((8, 3000, 2))
    np.testing.assert_allclose(split_half_reliability(reps, n_splits=10), 1 / 1.5, atol=0.03)


# --- predicted vs measured, ground truth -------------------------------------------------------

def test_predicted_vs_measured_correlation_known_answer():
    """measured = predicted + N(0,1), predicted ~ N(0,1): r = 1/sqrt(2)."""
    n = 4000
    rng = np.random.default_rng(10)
    rows = []
    for _ in range(n):
        p = len(rows)
        rows.append(dict(kind="clean", parent=-1, site=-1, eps=0.0, dir=0, pred=np.nan))
        rows.append(dict(kind="targeted", parent=p, site=0, eps=1.0, ei=0, dir=1, pred=rng.standard_normal()))
    prov = provenance(rows, [1.0])
    resp = np.full((2 * n, 1), 5.0)
    resp[1::2, 0] += prov["predicted_change"][1::2] + rng.standard_normal(n)
    pvm = predicted_vs_measured(resp, prov, n_boot=300)
    assert pvm.r.value == pytest.approx(1 / np.sqrt(2), abs=0.03)
    assert pvm.r.lo < 1 / np.sqrt(2) < pvm.r.hi and pvm.r.n == n
    np.testing.assert_allclose(pvm.predicted, prov["predicted_change"][1::2])


def test_fraction_of_true_on_noise_free_data():
    eps = (0.5, 1.0)
    prov, rates, _ = closed_loop_day(n_sites=3, n_images=4, epsilons=eps, gain=1.0)
    rates = rates + 3.0
    achieved = sensitivity_curve(rates, prov, estimator="signed", normalise=False, n_boot=50)
    true = 2.0 * np.tile(eps, (3, 1))
    frac = fraction_of_true(achieved, true)
    np.testing.assert_allclose(frac.site_fraction, 0.5)
    assert [frac.population[e].as_tuple() for e in eps] == [pytest.approx((0.5, 0.5, 0.5))] * 2
    with pytest.raises(ValueError, match="shape"):
        fraction_of_true(achieved, true[:, :1])


# --- bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    data = rng.exponential(1.0, size=(400, 60))  # true mean 1
    covered = [(e.lo < 1.0 < e.hi) for e in (bootstrap_mean(d, n_boot=800, seed=i) for i, d in enumerate(data))]
    assert 0.90 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_sensitivity_curve_population_ci_coverage():
    """Population CI of the bias-corrected curve covers the true shift mu in ~95% of synthetic days."""
    rng = np.random.default_rng(12)
    prov = pm_day(3, 25)
    pert = np.flatnonzero(prov["kind"] == "targeted")
    truth = np.full((len(prov["kind"]), 3), 5.0)
    truth[pert, prov["site"][pert]] += prov["direction"][pert] * 0.5
    covered = []
    for i in range(200):
        resp = truth + rng.standard_normal(truth.shape)
        c = sensitivity_curve(resp, prov, estimator="signed", normalise=False, n_boot=400, seed=i)
        covered.append(c.population_lo[0] < 0.5 < c.population_hi[0])
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_reliability_agrees_with_modelfit_scores():
    """analysis and modelfit each have a split-half reliability (analysis may not import modelfit)."""
    scores = pytest.importorskip("modelfit.scores")
    rng = np.random.default_rng(13)
    reps = rng.standard_normal((400, 3)) * [1.0, 0.5, 2.0] + 1.5 * rng.standard_normal((6, 400, 3))
    np.testing.assert_allclose(split_half_reliability(reps, n_splits=30),
                               scores.split_half_reliability(reps, n_splits=30), atol=0.03)
