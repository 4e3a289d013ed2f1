"""Coverage of the curve, baseline and correlation intervals against a known truth (issue 26).

Each test draws many seeded data sets whose true value is known and counts how often the 95 %
interval contains it; where the old construction (percentile bootstrap, sites held fixed,
points treated as independent) is the point of comparison it is computed beside the new one
on the same data.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from analysis.baselines import random_pair_baseline
from analysis.bootstrap import bca_mean_interval, bca_pearson_by_cluster
from analysis.sensitivity import ImageTable, curve_from_table, population_table


def percentile_interval(data: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``data`` (n, draws): the percentile-bootstrap 95 % interval of the mean (the old bands)."""
    idx = np.random.default_rng(seed).integers(0, data.shape[0], (n_boot, data.shape[0]))
    lo, hi = np.percentile(data[idx].mean(axis=1), [2.5, 97.5], axis=0)
    return lo, hi


def test_bca_covers_a_skewed_mean_at_least_as_often_as_the_percentile_interval():
    """Exponential(1) samples (skewness 2; true mean 1), 2000 draws each: at n = 15 both
    intervals under-cover (small skewed samples), BCa less (its upper end moves up with the
    skew: fewer misses below the truth); at n = 50 BCa is near nominal. Monte-Carlo SE ~0.6 %."""
    rng = np.random.default_rng(1)
    for n, nominal_band in ((15, (0.88, 0.93)), (50, (0.92, 0.96))):
        data = rng.exponential(1.0, size=(n, 2000))
        lo, hi = bca_mean_interval(data, 0, 999, 0.95, seed=3)
        p_lo, p_hi = percentile_interval(data, 999, seed=4)
        bca, pct = np.mean((lo < 1.0) & (1.0 < hi)), np.mean((p_lo < 1.0) & (1.0 < p_hi))
        assert nominal_band[0] <= bca <= nominal_band[1], (n, bca)
        assert bca >= pct, (n, bca, pct)
        assert np.mean(hi < 1.0) < np.mean(p_hi < 1.0), n   # fewer misses on the short (upper) side


def test_bca_mean_interval_edges_no_band_below_three_units_and_a_point_for_constant_columns():
    v = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, np.nan], [4.0, 2.0, 6.0], [3.0, 2.0, np.nan]])
    lo, hi = bca_mean_interval(v, 0, 500, 0.95, seed=0)
    assert lo[0] < 2.5 < hi[0]                       # 4 values: a real interval
    assert lo[1] == hi[1] == 2.0                     # every resample of a constant column is that constant
    assert np.isnan(lo[2]) and np.isnan(hi[2])       # 2 finite values: no interval, not a made-up band
    # the columns' finite rows differ: each group is bootstrapped on its own rows
    lo2, hi2 = bca_mean_interval(v[:, :1], 0, 500, 0.95, seed=0)
    assert (lo2[0], hi2[0]) == (lo[0], hi[0])


def test_population_band_covers_the_mean_over_random_sites_and_images():
    """Nested table: value = mu + site effect (s.d. 0.4) + image effect (s.d. 0.6), 6 sites x
    8 images, 200 draws. The two-level band covers the population mean mu near 95 %; the old
    band (percentile bootstrap over images, sites held fixed) misses the site variance."""
    S, n_img, mu = 6, 8, 1.0
    new, old = [], []
    for i in range(200):
        rng = np.random.default_rng(i)
        v = mu + 0.4 * rng.standard_normal((S, 1, 1)) + 0.6 * rng.standard_normal((S, n_img, 1))
        table = ImageTable(v, np.arange(S * n_img).reshape(S, n_img), np.full(S, n_img), np.arange(S),
                           np.array([1.0]), np.ones((S, 1)), np.array([0]))
        c = curve_from_table(table, None, 500, 0.95, i, "signed", "targeted")
        assert abs(c.population[0] - np.mean(v)) < 1e-12
        new.append(c.population_lo[0] < mu < c.population_hi[0])
        idx = rng.integers(0, n_img, (500, S, n_img))
        boot = np.take_along_axis(np.broadcast_to(v[:, :, 0], (500, S, n_img)), idx, axis=2).mean(axis=(1, 2))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        old.append(lo < mu < hi)
    assert 0.91 <= np.mean(new) <= 0.98, np.mean(new)
    assert np.mean(old) < 0.75, np.mean(old)


def test_population_table_keeps_nested_slots_and_spreads_shared_images_into_columns():
    v = np.arange(8.0).reshape(2, 2, 2)
    nested = ImageTable(v, np.array([[10, 11], [12, 13]]), np.array([2, 2]), np.array([0, 1]), np.array([1.0, 2.0]),
                        np.ones((2, 2)), np.array([0, 1]))
    t, is_nested = population_table(nested, v)
    assert is_nested and t is v
    crossed = ImageTable(v, np.array([[10, 11], [11, -1]]), np.array([2, 1]), np.array([0, 1]), np.array([1.0, 2.0]),
                         np.ones((2, 2)), np.array([0, 1]))
    t, is_nested = population_table(crossed, v)
    assert not is_nested and t.shape == (2, 2, 2)
    np.testing.assert_array_equal(t[0], v[0])                        # site 0: images 10, 11
    np.testing.assert_array_equal(t[1, 1], v[1, 0])                  # site 1: image 11 only
    assert np.isnan(t[1, 0]).all()


def test_predicted_vs_measured_r_resamples_the_clean_image():
    """40 clean images x 4 stimuli sharing image effects in both prediction and measurement:
    x = a_g + u, y = x + b_g + e (unit variances), true r = sqrt(2 / 4). Resampling the clean
    image covers near 95 %; resampling the 160 points as if independent under-covers."""
    G, m, truth = 40, 4, np.sqrt(0.5)
    cluster = np.repeat(np.arange(G), m)
    by_image, by_point = [], []
    for i in range(300):
        rng = np.random.default_rng(i)
        x = np.repeat(rng.standard_normal(G), m) + rng.standard_normal(G * m)
        y = x + np.repeat(rng.standard_normal(G), m) + rng.standard_normal(G * m)
        e = bca_pearson_by_cluster(x, y, cluster, 999, 0.95, seed=i)
        assert e.n == G and abs(e.value - np.corrcoef(x, y)[0, 1]) < 1e-12
        by_image.append(e.lo < truth < e.hi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = stats.bootstrap((x, y), lambda a, b, axis=-1: stats.pearsonr(a, b, axis=axis).statistic, paired=True,
                                 vectorized=True, n_resamples=999, method="BCa",
                                 random_state=np.random.default_rng(i)).confidence_interval
        by_point.append(ci.low < truth < ci.high)
    assert 0.90 <= np.mean(by_image) <= 0.98, np.mean(by_image)
    assert np.mean(by_point) < np.mean(by_image) - 0.03, (np.mean(by_point), np.mean(by_image))


def test_random_pair_baseline_intervals_cover_site_and_population_truth():
    """Site s: r = w_s z(x) + noise with z shared by the sites (crossed images), w_s = |N(0,1)|;
    a site's E|r(x_j) - r(x_k)| = 2 sqrt(w_s^2 + 1) / sqrt(pi); the population truth is its
    mean over w. 5 sites x 30 clean images, 150 draws."""
    S, n_img = 5, 30
    w_big = np.abs(np.random.default_rng(99).standard_normal(2_000_000))
    truth = float(np.mean(2 * np.sqrt(w_big ** 2 + 1) / np.sqrt(np.pi)))
    kind = np.array(["clean"] * n_img, dtype=object)
    pop, site = [], []
    for i in range(150):
        rng = np.random.default_rng(i)
        w = np.abs(rng.standard_normal(S))
        r = w * rng.standard_normal((n_img, 1)) + rng.standard_normal((n_img, S))
        b = random_pair_baseline(r, {"kind": kind}, normalise=False, n_boot=999, seed=i)
        pop.append(b.population.lo < truth < b.population.hi)
        true_site = 2 * np.sqrt(w ** 2 + 1) / np.sqrt(np.pi)
        site.append(np.mean((b.lo < true_site) & (true_site < b.hi)))
    assert 0.89 <= np.mean(pop) <= 1.0, np.mean(pop)
    assert 0.89 <= np.mean(site) <= 0.98, np.mean(site)
