"""analysis.stats: paired day-over-day test, Spearman, saturation share, noise-floor flag."""
import numpy as np
import pytest

from analysis.bootstrap import Estimate
from analysis.stats import indistinguishable_from_floor, paired_difference, rankdata, saturation_share, spearman


def test_paired_difference_sees_a_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 5, 30)                 # large between-image spread
    a, b = base + rng.normal(0, 0.1, 30), base + 0.3 + rng.normal(0, 0.1, 30)
    p = paired_difference(a, b, seed=1)
    assert p.n == 30 and abs(p.estimate.value - 0.3) < 0.06
    assert p.estimate.lo > 0.2 and p.estimate.hi < 0.4 and p.p_value < 1e-3
    same = paired_difference(a, a + rng.normal(0, 0.1, 30), seed=1)
    assert same.estimate.lo < 0 < same.estimate.hi and same.p_value > 0.05


def test_sign_flip_is_exact_for_few_units():
    # 4 positive differences: the observed mean is the largest of 2^4 sign patterns (and its mirror)
    p = paired_difference(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert p.p_value == pytest.approx(2 / 16)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference(np.zeros(3), np.zeros(4))


def test_spearman_and_ranks():
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    x = np.arange(20.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [3, 4]))


def test_saturation_share_and_floor_flag():
    floor = np.array([10.0, 20.0])
    rates = np.array([[10.5, 100.0], [150.0, 199.0], [100.0, 28.0]])   # ceiling 200: span 190 / 180
    # near: 10.5 (floor), 199 (ceiling), 28 (<= 20 + 9); not: 100, 150, 100
    assert saturation_share(rates, floor, 200.0) == pytest.approx(3 / 6)
    assert indistinguishable_from_floor(Estimate(0.3, 0.2, 0.4), Estimate(0.25, 0.2, 0.3))
    assert not indistinguishable_from_floor(Estimate(0.9, 0.7, 1.1), Estimate(0.25, 0.2, 0.3))
