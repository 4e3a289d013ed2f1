"""Readout: recovers a known linear map, matches scikit-learn, handles NaN, rejects bad input."""
import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import Ridge

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor, images_to_tensor
from modelfit.readout import Readout
from modelfit.scores import cross_validated_r


def _linear_data(n=600, d=40, s=5, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(0, 2, d)
    W = rng.normal(size=(s, d))
    b = rng.normal(0, 5, s)
    signal = X @ W.T + b
    return X, signal + noise * rng.normal(size=signal.shape), W, b, signal


def test_recovers_known_linear_map_and_its_predictivity():
    X, Y, W, b, signal = _linear_data()
    r = Readout(alphas=[1e-3, 1e-2, 0.1, 1, 10, 100, 1e3]).fit(X, Y)
    Wr, br = r.raw_weights()
    # OLS standard error of each weight is noise / (sqrt(n) * std(feature)); allow 5 of them
    se = 0.5 / (np.sqrt(len(X)) * X.std(0))
    assert np.all(np.abs(Wr - W) < 5 * se[None, :])
    # in-sample error of a least-squares fit: rms = noise * sqrt(d / n) = 0.13
    assert np.sqrt(np.mean((r.predict(X) - signal) ** 2)) < 0.5 * np.sqrt(40 / 600) * 1.3
    # predictivity on fresh data: expected r = sqrt(var(signal) / (var(signal) + noise^2))
    Xt, Yt, _, _, st = _linear_data(seed=1)
    Xt, Yt = Xt, (Yt - st) + (Xt @ W.T + b)  # same map, new images and noise
    expected = np.sqrt(np.var(Xt @ W.T, 0) / (np.var(Xt @ W.T, 0) + 0.25))
    np.testing.assert_allclose(r.score(Xt, Yt), expected, atol=0.01)
    assert r.coef_.shape == (5, 40) and r.intercept_.shape == (5,) and r.alpha_.shape == (5,)


def test_ridge_matches_sklearn_at_chosen_alpha_primal_and_dual():
    X, Y, *_ = _linear_data(n=200, d=30, s=4, noise=5.0)
    for rows in (slice(None), slice(0, 20)):  # n >= D (Gram) and n < D (kernel)
        Xs, Ys = X[rows], Y[rows]
        r = Readout(alphas=[0.1, 10.0, 1000.0], cv_folds=4).fit(Xs, Ys)
        Z = (Xs - Xs.mean(0)) / Xs.std(0)
        for j in range(Ys.shape[1]):
            ref = Ridge(alpha=r.alpha_[j]).fit(Z, Ys[:, j])
            np.testing.assert_allclose(r.coef_[j], ref.coef_, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(r.intercept_[j], ref.intercept_, rtol=1e-8)


def test_alpha_chosen_per_site_by_cv():
    """A noiseless site gets a small penalty, a pure-noise site the largest one."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 20))
    Y = np.column_stack([X @ rng.normal(size=20), rng.normal(size=300)])
    r = Readout(alphas=[1e-3, 1e3, 1e6]).fit(X, Y)
    assert r.alpha_.tolist() == [1e-3, 1e6]


def test_missing_responses_each_site_fitted_on_its_rows():
    X, Y, *_ = _linear_data(n=300, d=20, s=3, noise=1.0)
    Yn = Y.copy()
    Yn[:100, 1] = np.nan
    Yn[250:, 2] = np.nan
    r = Readout(alphas=[1.0]).fit(Xn := X, Yn)
    Z = (Xn - Xn.mean(0)) / Xn.std(0)  # scaler uses all rows
    for j, rows in enumerate([slice(None), slice(100, None), slice(0, 250)]):
        ref = Ridge(alpha=1.0).fit(Z[rows], Y[rows, j])
        np.testing.assert_allclose(r.coef_[j], ref.coef_, rtol=1e-8, atol=1e-10)
    assert r.n_train_.tolist() == [300, 200, 250]
    assert np.all(np.isfinite(r.score(X, Yn)))


def test_pls_matches_sklearn():
    X, Y, *_ = _linear_data(n=200, d=30, s=3)
    r = Readout(method="pls", pls_components=5).fit(X, Y)
    Z = (X - X.mean(0)) / X.std(0)
    ref = PLSRegression(n_components=5, scale=False).fit(Z, Y)
    np.testing.assert_allclose(r.predict(X), ref.predict(Z), rtol=1e-6, atol=1e-8)
    assert np.all(np.isnan(r.alpha_))


def test_exported_module_matches_predict():
    bb = build_backbone("tiny", "layer4")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 64, 64, 3), dtype=np.uint8)
    F = FeatureExtractor(bb).transform(pixels)
    Y = F[:, :6] @ rng.normal(size=(6, 4)) + 10 + rng.normal(0, 0.1, (48, 4))
    r = Readout(alphas=[0.1, 1.0, 10.0], cv_folds=3).fit(F, Y)
    module = r.to_torch(build_backbone("tiny", "layer4"))
    with torch.no_grad():
        out = module(images_to_tensor(pixels)).numpy()
    pred = r.predict(F)
    np.testing.assert_allclose(out, pred, rtol=1e-4, atol=1e-4 * np.abs(pred).max())
    with pytest.raises(ValueError, match="backbone gives 64 features"):
        r.to_torch(build_backbone("tiny", "layer3"))


def test_cross_validated_r_on_linear_data_is_near_truth():
    X, Y, W, b, signal = _linear_data(n=400, d=20, s=3, noise=3.0)
    r = cross_validated_r(X, Y, lambda: Readout(alphas=[0.1, 10.0, 1000.0]), n_splits=10, seed=0)
    expected = np.sqrt(np.var(signal, 0) / (np.var(signal, 0) + 9.0))
    np.testing.assert_allclose(r, expected, atol=0.05)


@pytest.mark.parametrize("X_shape,Y_shape,match", [
    ((10, 5), (9, 2), "X has 10 rows .* Y has 9"),
    ((10, 5), (10,), r"Y\[:, None\]"),
    ((10,), (10, 2), "X must be 2-D"),
])
def test_bad_shapes(X_shape, Y_shape, match):
    with pytest.raises(ValueError, match=match):
        Readout().fit(np.ones(X_shape), np.ones(Y_shape))


def test_bad_sites_and_params():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    Y = rng.normal(size=(30, 3))
    Y[:, 1] = 7.0
    with pytest.raises(ValueError, match=r"site\(s\) \[1\] have zero variance .*7\.0"):
        Readout().fit(X, Y)
    Y[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"site\(s\) \[1\] have no recorded responses \(all NaN\)"):
        Readout().fit(X, Y)
    Y[:, 1] = rng.normal(size=30)
    Y[3:, 2] = np.nan
    with pytest.raises(ValueError, match=r"site\(s\) \[2\] have fewer than 10 recorded images"):
        Readout().fit(X, Y)
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="X has 1 NaN or infinite"):
        Readout().fit(Xn, Y[:, :2])
    with pytest.raises(ValueError, match="method must be 'ridge' or 'pls'"):
        Readout(method="lasso").fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="alphas"):
        Readout(alphas=[0.0, 1.0]).fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="not fitted yet"):
        Readout().predict(X)
    r = Readout().fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="X has 3 features but the readout was fitted on 4"):
        r.predict(X[:, :3])
