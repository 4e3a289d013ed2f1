"""Scores: split-half ceiling on data of known reliability, noise-ceiled predictivity, site selection."""
import numpy as np
import pytest

from modelfit.scores import (
    noise_ceiled_predictivity,
    select_sites,
    spearman_brown,
    split_half_reliability,
    summarize,
)

NOISE_SD = np.array([0.5, 1.0, 2.0, 4.0, 1e6])  # last site: pure noise


def _repeats(n_repeats=10, n_images=2000, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n_images, len(NOISE_SD)))
    true[:, -1] = 0.0
    reps = true[None] + NOISE_SD * rng.normal(size=(n_repeats, n_images, len(NOISE_SD)))
    return true, reps


def test_split_half_matches_known_reliability():
    _true, reps = _repeats()
    expected = 1.0 / (1.0 + NOISE_SD**2 / reps.shape[0])  # var(true) / var(mean of 10 repeats)
    rel = split_half_reliability(reps, n_splits=20, seed=1)
    np.testing.assert_allclose(rel[:-1], expected[:-1], atol=0.06)  # ~3 sampling SDs at 2000 images
    assert abs(rel[-1]) < 0.1


def test_split_half_with_missing_repeats():
    _true, reps = _repeats(n_repeats=12)
    rng = np.random.default_rng(2)
    reps[rng.random(reps.shape[:2]) < 0.25] = np.nan  # invalid presentations (all sites)
    reps[:, :5, 0] = np.nan  # one site unrecorded for 5 images
    reps[1:, 5:8, 1] = np.nan  # images with a single repeat are left out
    rel = split_half_reliability(reps, n_splits=20, seed=1)
    k = np.isfinite(reps).sum(0).mean()  # ~9 valid repeats per image
    expected = 1.0 / (1.0 + NOISE_SD**2 / k)
    np.testing.assert_allclose(rel[:-1], expected[:-1], atol=0.07)


def test_perfect_model_is_at_the_noise_ceiling():
    true, reps = _repeats()
    mean = reps.mean(0)
    ceiling = split_half_reliability(reps, n_splits=20)
    r = np.array([np.corrcoef(true[:, j], mean[:, j])[0, 1] for j in range(4)])
    nc = noise_ceiled_predictivity(r, ceiling[:4])
    np.testing.assert_allclose(nc, 1.0, atol=0.06)
    # a model explaining half of the true variance scores ~0.5
    rng = np.random.default_rng(5)
    half = true[:, :4] + rng.normal(size=true[:, :4].shape)  # r^2 with truth = 0.5
    r_half = np.array([np.corrcoef(half[:, j], mean[:, j])[0, 1] for j in range(4)])
    np.testing.assert_allclose(noise_ceiled_predictivity(r_half, ceiling[:4]), 0.5, atol=0.06)
    s = summarize(r, ceiling[:4])
    assert set(s) == {"median_r", "median_ceiling", "median_noise_ceiled", "median_r_over_sqrt_ceiling",
                      "median_explainable_variance_fraction"}
    assert abs(s["median_noise_ceiled"] - 1.0) < 0.06


def test_spearman_brown_and_ceiling_edge_cases():
    np.testing.assert_allclose(spearman_brown(np.array([0.0, 0.5, 1.0])), [0.0, 2 / 3, 1.0])
    out = noise_ceiled_predictivity(np.array([0.5, 0.5, 0.5]), np.array([0.5, 0.0, np.nan]))
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and np.isnan(out[2])
    with pytest.raises(ValueError, match="one entry per site"):
        noise_ceiled_predictivity(np.ones(3), np.ones(2))


def test_select_sites():
    rel = np.array([0.9, 0.2, np.nan, 0.5, -0.1])
    assert select_sites(rel, 0.5).tolist() == [0, 3]
    assert select_sites(rel, -1.0).tolist() == [0, 1, 3, 4]


def test_bad_repeat_arrays():
    with pytest.raises(ValueError, match=r"\(n_repeats, n_images, n_sites\)"):
        split_half_reliability(np.ones((10, 5)))
    with pytest.raises(ValueError, match="at least 2 repeats"):
        split_half_reliability(np.ones((1, 5, 2)))


def test_three_predictivity_names_differ_as_defined():
    from modelfit.scores import brain_score_predictivity, summarize

    r, c = np.array([0.5, 0.3, -0.2]), np.array([0.8, 0.36, 0.5])
    np.testing.assert_allclose(brain_score_predictivity(r, c), r / np.sqrt(c))
    np.testing.assert_allclose(noise_ceiled_predictivity(r, c), np.sign(r) * r ** 2 / c)
    assert np.isnan(brain_score_predictivity(np.array([0.5]), np.array([0.0]))[0])
    s = summarize(r, c)
    assert s["median_r_over_sqrt_ceiling"] == pytest.approx(0.5)   # median of 0.559, 0.5, -0.283
    assert s["median_explainable_variance_fraction"] == pytest.approx(0.25)   # median of 0.3125, 0.25, -0.08
