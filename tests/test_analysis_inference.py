"""Floor-corrected magnitudes, two-level BCa intervals, permutation test, Holm, MDE, ratio rule."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.bootstrap import Estimate
from analysis.inference import (
    FLOOR_REASON,
    _pigeonhole_variance,
    above_floor_test,
    day_headline,
    floor_corrected_square,
    floor_corrected_square_noise_variance,
    holm,
    minimum_detectable_effect,
    mover_difference,
    pair_tables,
    population_mean,
    random_effects_variance,
    ratio_if_estimable,
    signed_sqrt,
    site_slots,
    split_half_products,
    two_level_estimate,
)
from benchmarks.coverage_bench import run
from tests.coverage_sim import day_pairs, simulate_day


def test_floor_corrected_square_is_unbiased_where_abs_is_not():
    rng = np.random.default_rng(0)
    n, m, true = 200_000, 6, 0.5
    pert = rng.normal(10 + true, 2.0, size=(m, n))
    clean = rng.normal(10, 2.0, size=(m, n))
    pert[0, :1000] = np.nan  # a missing repeat changes m for some columns, not the expectation
    sq = floor_corrected_square(pert, clean)
    se = sq.std() / np.sqrt(n)
    assert abs(sq.mean() - true ** 2) < 4 * se
    raw = (np.nanmean(pert, 0) - clean.mean(0)) ** 2
    assert raw.mean() - true ** 2 > 1.0   # the noise floor: 2 * 4 / 6 = 1.33 spikes^2


def test_split_half_products_are_centred_on_the_square_and_symmetric_under_no_effect():
    rng = np.random.default_rng(1)
    n = 100_000
    null = split_half_products(rng.poisson(8.0, (8, n)).astype(float), rng.poisson(8.0, (8, n)).astype(float), rng)
    assert abs(null.mean()) < 4 * null.std() / np.sqrt(n)
    assert abs(np.mean(null > 0) - np.mean(null < 0)) < 0.01
    eff = split_half_products(rng.poisson(10.0, (8, n)).astype(float), rng.poisson(8.0, (8, n)).astype(float), rng)
    assert abs(eff.mean() - 4.0) < 4 * eff.std() / np.sqrt(n)


def test_holm_matches_hand_computed_values():
    adj = holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adj[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adj[3])


def test_minimum_detectable_effect_is_2_80_standard_errors():
    assert minimum_detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)


def test_two_level_estimate_brackets_the_population_mean_of_site_means():
    rng = np.random.default_rng(2)
    table = rng.normal(1.0, 0.3, size=(6, 10, 2)) + rng.normal(0, 0.2, size=(6, 1, 1))
    table[0, :5] = np.nan  # a site with fewer images: the mean of site means, not of cells
    est = two_level_estimate([table], np.asarray, n_resamples=499).estimates
    want = np.nanmean(np.nanmean(table, axis=1), axis=0)
    for e, w in zip(est, want):
        assert e.value == pytest.approx(w)
        assert e.lo < e.value < e.hi
    np.testing.assert_allclose(population_mean(table), want)


def test_ratio_is_withheld_when_random_is_at_the_noise_floor():
    rng = np.random.default_rng(3)
    num = rng.normal(1.0, 0.2, size=(5, 8, 1))
    den = rng.normal(0.0, 0.2, size=(5, 8, 1))
    den_est = two_level_estimate([den], signed_sqrt, n_resamples=499).estimates[0]
    out = ratio_if_estimable(num, den, den_est, 0.4, 0, n_resamples=499)
    assert out.estimate is None and out.text() == f"not estimable: {FLOOR_REASON}"
    den2 = rng.normal(0.25, 0.05, size=(5, 8, 1))
    est2 = two_level_estimate([den2], signed_sqrt, n_resamples=499).estimates[0]
    ok = ratio_if_estimable(num, den2, est2, 0.001, 0, n_resamples=499)
    assert ok.estimate is not None and ok.estimate.lo <= ok.estimate.value <= ok.estimate.hi
    assert ok.estimate.value == pytest.approx(np.sqrt(num.mean() / den2.mean()), rel=0.05)
    assert ratio_if_estimable(num, den2, Estimate(0.5, -0.1, 0.9), 0.001, 0).estimate is None


def test_day_headline_on_a_simulated_day_reports_every_epsilon():
    rng = np.random.default_rng(4)
    repeats, prov, sigma, _, _, _ = simulate_day(rng, 5, 8)
    tp, rp = day_pairs(prov, 5)
    h = day_headline(repeats, tp, rp, np.arange(5), sigma, n_resamples=299)
    assert h.targeted_sq.shape == (5, 8, 3) and h.n_images == 40   # each site its own 8 images, in slots
    for d, t, r in zip(h.difference, h.targeted_rms, h.random_rms):
        assert d.value == pytest.approx(t.value - r.value)
        assert d.lo <= d.value <= d.hi
    assert np.all((h.random_p_holm >= h.random_p) | np.isnan(h.random_p))


def test_small_coverage_study_covers_and_is_unbiased_on_null_days():
    """40 days (the 200-day study is benchmarks/coverage_bench.py): coverage near 95 %, null error ~0."""
    out = run(40, 6, 10, 499)
    for k, v in out["coverage_all"].items():
        assert v >= 0.85, (k, v)
    assert abs(out["null_mean_square_error"]) < 4 * out["null_mean_square_se"] + 1e-3
    assert abs(out["null_rms_error"]) < 0.03
    assert out["null_rejection"] <= 0.15


def test_nested_images_are_resampled_within_their_site():
    """The loop's design: each site has its own 3 images. On a sites x union-of-images table a
    resample can draw sites none of whose images were drawn (an undefined replicate, so no BCa
    interval); in site slots every drawn site keeps 3 of its own images."""
    rng = np.random.default_rng(5)
    n_sites, per_site = 4, 3
    union = np.full((n_sites, n_sites * per_site, 1), np.nan)
    for k in range(n_sites):
        union[k, k * per_site:(k + 1) * per_site, 0] = rng.normal(0.5 + 0.1 * k, 0.2, per_site)
    (slots,) = site_slots([union])
    assert slots.shape == (n_sites, per_site, 1) and np.isfinite(slots).all()
    est = two_level_estimate([slots], np.asarray, n_resamples=999).estimates[0]
    assert est.value == pytest.approx(np.nanmean(union))
    assert est.lo < est.value < est.hi
    crossed = rng.normal(size=(3, 5, 1))
    assert site_slots([crossed])[0] is crossed   # images shared by sites: left as is


def test_day_headline_does_not_depend_on_the_order_of_the_sites():
    rng = np.random.default_rng(6)
    repeats, prov, sigma, _, _, _ = simulate_day(rng, 4, 6)
    tp, rp = day_pairs(prov, 4)
    a = day_headline(repeats, tp, rp, np.arange(4), sigma, n_resamples=199, seed=1)
    b = day_headline(repeats, tp, rp, np.arange(4)[::-1], sigma[::-1], n_resamples=199, seed=1)
    assert [e.value for e in a.difference] == pytest.approx([e.value for e in b.difference])
    assert [e.value for e in a.targeted_rms] == pytest.approx([e.value for e in b.targeted_rms])


def test_floor_correction_with_trial_ids_stays_unbiased_when_a_parent_shares_trials_with_its_perturbed_images():
    """A trial's images share one gain (the simulator's RSVP noise). When a clean image and its
    perturbed images are shown in the same trials, their counts covary and d^2 - s'^2/m' - s^2/m
    subtracts that covariance as noise (biased below 0 on null days); the trial-aware U-statistic
    does not. With families in different trials (the loop's schedule) the two agree."""
    plain, aware, apart = [], [], []
    for d in range(20):
        rng = np.random.default_rng(100 + d)
        repeats, prov, sigma, _, _, trials = simulate_day(rng, 6, 10, null=True, family_trials=True)
        tp, rp = day_pairs(prov, 6)
        images = np.unique(tp.parent)
        plain.append(np.nanmean(pair_tables(repeats, rp, np.arange(6), sigma, images, rng)["sq"]))
        aware.append(np.nanmean(pair_tables(repeats, rp, np.arange(6), sigma, images, rng, trials)["sq"]))
        repeats, prov, sigma, _, _, trials = simulate_day(rng, 6, 10, null=True)
        tp, rp = day_pairs(prov, 6)
        sq = [pair_tables(repeats, rp, np.arange(6), sigma, np.unique(tp.parent), rng, tr)["sq"] for tr in (None, trials)]
        ok = np.isfinite(sq[0])
        apart.append(np.mean(np.abs(sq[0] - sq[1])[ok] > 1e-9))
    se = np.std(aware) / np.sqrt(len(aware))
    assert abs(np.mean(aware)) < 4 * se
    assert np.mean(plain) < -4 * np.std(plain) / np.sqrt(len(plain))
    assert np.mean(apart) < 0.15   # shuffled trials: few parents ever share a trial with their child


def test_trial_aware_floor_correction_equals_the_closed_form_when_no_pair_shares_a_trial():
    rng = np.random.default_rng(7)
    pert, clean = rng.poisson(9.0, (6, 50)).astype(float), rng.poisson(7.0, (6, 50)).astype(float)
    pert[2, :5] = np.nan
    tp = np.arange(300).reshape(6, 50)
    np.testing.assert_allclose(floor_corrected_square(pert, clean, tp, tp + 1000), floor_corrected_square(pert, clean),
                               rtol=1e-10, atol=1e-9)


def test_random_effects_variance_is_unbiased_where_the_pigeonhole_bootstrap_counts_cell_noise_three_times():
    """Crossed sites x images with site, image and cell effects (sd 0.3, 0.2, 1.0): the moment
    estimate's mean matches Var(grand mean) = sa^2/S + sb^2/I + se^2/(S I); the pigeonhole
    bootstrap's is about sa^2/S + sb^2/I + 3 se^2/(S I) (Owen 2007). Nested: s^2(site means)/S."""
    rng = np.random.default_rng(8)
    S, I, sa, sb, se = 8, 16, 0.3, 0.2, 1.0
    v_re, v_pig, means = [], [], []
    for _ in range(400):
        z = sa * rng.standard_normal((S, 1)) + sb * rng.standard_normal((1, I)) + se * rng.standard_normal((S, I))
        v_re.append(random_effects_variance(z, nested=False)[0])
        v_pig.append(_pigeonhole_variance(z, 400, int(rng.integers(1 << 30))))
        means.append(z.mean())
    true = sa ** 2 / S + sb ** 2 / I + se ** 2 / (S * I)
    assert np.mean(v_re) == pytest.approx(true, rel=0.1)
    assert np.var(means) == pytest.approx(true, rel=0.2)
    assert np.mean(v_pig) == pytest.approx(sa ** 2 / S + sb ** 2 / I + 3 * se ** 2 / (S * I), rel=0.15)
    nested = [random_effects_variance(sa * rng.standard_normal((S, 1)) + se * rng.standard_normal((S, I)), True)
              for _ in range(400)]
    assert np.mean([v for v, _ in nested]) == pytest.approx(sa ** 2 / S + se ** 2 / (S * I), rel=0.1)
    assert nested[0][1] == S - 1


def test_mover_difference_reduces_to_the_wald_interval_for_symmetric_intervals():
    a, b = Estimate(1.0, 0.8, 1.2), Estimate(0.3, 0.0, 0.6)
    d = mover_difference(a, b, 0.5)
    half = np.sqrt(0.2 ** 2 + 0.3 ** 2 - 2 * 0.5 * 0.2 * 0.3)
    assert (d.value, d.lo, d.hi) == pytest.approx((0.7, 0.7 - half, 0.7 + half))
    skew = mover_difference(a, Estimate(0.0, -0.1, 0.5), 0.0)   # b's long upper side widens the LOWER side of a - b
    assert 1.0 - skew.lo == pytest.approx(np.hypot(0.2, 0.5)) and skew.hi - 1.0 == pytest.approx(np.hypot(0.2, 0.1))


def test_noise_variance_of_the_floor_corrected_square_matches_its_spread():
    """Normal repeats, true change 0 and 1 (sd 2, 8 and 10 repeats): the formula (given the true
    square) matches the Monte-Carlo variance of the floor-corrected square within 10 %."""
    rng = np.random.default_rng(9)
    n = 40_000
    for true in (0.0, 1.0):
        pert, clean = rng.normal(5 + true, 2.0, (8, n)), rng.normal(5, 2.0, (10, n))
        sq = floor_corrected_square(pert, clean)
        var = floor_corrected_square_noise_variance(pert, clean, true ** 2)
        assert np.mean(var) == pytest.approx(np.var(sq), rel=0.1)


def test_above_floor_test_uses_every_cell_of_a_nested_design():
    """4 sites x 3 own images (the demo's size), every cross-product positive: with cells as units
    the exact sign-flip p is 2^-12; averaging the 3 slots over sites would leave p >= 1/8."""
    products = np.abs(np.random.default_rng(10).normal(0.05, 0.02, size=(4, 3, 1)))
    assert above_floor_test(products, nested=True)[0] == pytest.approx(2.0 ** -12)
    assert above_floor_test(products, nested=False)[0] == pytest.approx(1 / 8)


def test_skew_corrected_interval_is_the_t_interval_for_symmetric_values():
    from scipy import stats

    from analysis.inference import skew_corrected_mean_interval
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 0.5, -0.5])       # third cumulant exactly 0
    lo, hi = skew_corrected_mean_interval(x)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    assert (lo, hi) == pytest.approx((x.mean() - half, x.mean() + half))
    # a variance floor above s^2 widens it to that floor
    lo2, hi2 = skew_corrected_mean_interval(x, variance_floor=4 * x.var(ddof=1))
    assert hi2 - lo2 == pytest.approx(2 * (hi - lo))
    assert np.isnan(skew_corrected_mean_interval(np.array([1.0, 2.0]))[0])   # < 3 values: no interval


def test_skew_corrected_interval_limits_solve_halls_transformed_statistic():
    """At each limit mu, Hall's G((mean - mu)/s) equals -+ t_q / sqrt(n) (Hall 1992, eq. for G)."""
    from scipy import stats

    from analysis.inference import skew_corrected_mean_interval
    x = np.random.default_rng(3).gamma(0.7, 2.0, 9)
    n, m, s = len(x), x.mean(), x.std(ddof=1)
    g = n * np.sum((x - m) ** 3) / ((n - 1) * (n - 2)) / s ** 3
    q = stats.t.ppf(0.975, n - 1) / np.sqrt(n)

    def big_g(t):
        return t + g * t ** 2 / 3 + g ** 2 * t ** 3 / 27 + g / (6 * n)

    lo, hi = skew_corrected_mean_interval(x)
    assert big_g((m - lo) / s) == pytest.approx(q)
    assert big_g((m - hi) / s) == pytest.approx(-q)
    assert hi - m > m - lo          # right-skewed values: the upper side is the longer one


def test_skew_corrected_interval_covers_the_mean_of_a_skewed_population_where_t_misses():
    """4000 samples of 8 from Gamma(0.5) (skewness 2.8; mean 0.5): the t interval covers ~86 %
    (misses mostly below), the skew-corrected one near 95 %."""
    from scipy import stats

    from analysis.inference import skew_corrected_mean_interval
    rng = np.random.default_rng(0)
    x, mu = rng.gamma(0.5, 1.0, (4000, 8)), 0.5
    iv = np.array([skew_corrected_mean_interval(r) for r in x])
    hall = np.mean((iv[:, 0] <= mu) & (mu <= iv[:, 1]))
    half = stats.t.ppf(0.975, 7) * x.std(axis=1, ddof=1) / np.sqrt(8)
    t_cov = np.mean(np.abs(x.mean(axis=1) - mu) <= half)
    assert t_cov < 0.89
    assert 0.925 <= hall <= 0.965      # Monte-Carlo SE 0.35 %


def test_fieller_interval_limits_make_the_difference_just_significant():
    """At each Fieller limit rho, mean(a) - rho mean(b) is exactly t_q standard errors from 0;
    with a constant denominator it is the t interval of mean(a) divided by it; unbounded -> NaN."""
    from scipy import stats

    from analysis.inference import fieller_interval
    rng = np.random.default_rng(4)
    b = rng.gamma(4.0, 0.25, 12)
    a = 0.3 * b + rng.normal(0, 0.05, 12)
    lo, hi = fieller_interval(a, b)
    tq = stats.t.ppf(0.975, 11)
    for rho in (lo, hi):
        d = a - rho * b
        assert abs(d.mean()) == pytest.approx(tq * d.std(ddof=1) / np.sqrt(12))
    assert lo < a.mean() / b.mean() < hi
    const = np.full(12, 2.0)
    lo_c, hi_c = fieller_interval(a, const)
    half = tq * a.std(ddof=1) / np.sqrt(12)
    assert (lo_c, hi_c) == pytest.approx(((a.mean() - half) / 2, (a.mean() + half) / 2))
    assert np.isnan(fieller_interval(a, rng.normal(0, 1, 12))[0])    # denominator not away from 0


def test_fraction_of_truth_falls_back_to_the_two_level_interval_where_fieller_is_unbounded():
    from analysis.inference import fieller_interval, fraction_of_truth
    rng = np.random.default_rng(8)
    n_sites, per_site = 4, 3
    truth = np.full((n_sites, n_sites * per_site, 1), np.nan)
    for k, scale in enumerate((0.05, 0.1, 2.0, 6.0)):        # site white-box means far apart
        truth[k, k * per_site:(k + 1) * per_site, 0] = scale * rng.gamma(4.0, 0.25, per_site)
    measured = 0.3 * truth + np.where(np.isfinite(truth), rng.normal(0, 0.05, truth.shape), np.nan)
    (m, t) = site_slots([measured, truth])
    assert np.isnan(fieller_interval(np.nanmean(m[:, :, 0], 1), np.nanmean(t[:, :, 0], 1))[0])
    est = fraction_of_truth(measured, truth, n_resamples=499)[0]
    assert np.isfinite(est.lo) and est.lo <= est.value <= est.hi
    assert est.value == pytest.approx(np.nanmean(np.nanmean(m, 1)) / np.nanmean(np.nanmean(t, 1)))
