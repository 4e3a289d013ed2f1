"""Per-site linear readout from features to recorded responses (scikit-learn style).

Model of site i: ``f_i(x) = coef_[i] . z(phi(x)) + intercept_[i]`` with
``z(phi) = (phi - mean_) / scale_`` the features z-scored with the training statistics
(``coef_`` is on z-scored features; :meth:`Readout.raw_weights` gives the same map in
original feature units). Responses are in the unit given (spikes per window).

``method="ridge"``: each site's penalty is chosen from ``alphas`` by ``cv_folds``-fold
cross-validation (minimum held-out squared error). All sites and all penalties share one
eigendecomposition per fold (of the Gram matrix ``X'X`` or the kernel ``XX'``, whichever
is smaller), as ``RidgeCV(alpha_per_target=True)`` does for leave-one-out.
``method="pls"``: scikit-learn ``PLSRegression`` with ``pls_components`` components.

Missing responses (NaN: a site not recorded on a day, no valid presentation) are allowed:
each site is fitted on its own non-NaN rows; sites sharing the same rows share the work.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from threadpoolctl import threadpool_limits  # a scikit-learn dependency
from torch import nn

DEFAULT_ALPHAS = tuple(float(10.0**k) for k in range(-2, 7))


def _as_2d_float(name: str, a, allow_nan: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        hint = f"; for a single site pass {name}[:, None]" if name == "Y" and a.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_images, n_{'features' if name == 'X' else 'sites'}); "
                         f"got shape {a.shape}{hint}")
    bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "infinite" if allow_nan else "NaN or infinite"
        raise ValueError(f"{name} has {int(bad.sum())} {what} entries (first at row {r}, column {c})"
                         + ("" if allow_nan else "; features must be finite"))
    return a


def pearson_r_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of a and b (n, S), each over rows where both are finite.

    NaN where fewer than 3 such rows or either column is constant there.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(0)
    a0 = np.where(ok, a, 0.0)
    b0 = np.where(ok, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = a0.sum(0) / n
        mb = b0.sum(0) / n
        da = np.where(ok, a - ma, 0.0)
        db = np.where(ok, b - mb, 0.0)
        den = np.sqrt((da**2).sum(0) * (db**2).sum(0))
        r = (da * db).sum(0) / den
    r[(n < 3) | ~(den > 0)] = np.nan
    return r


class _RidgeSolver:
    """Ridge on centred rows of X for many targets and penalties from one eigendecomposition.

    ``coef(alpha) = C diag(1/(s + alpha)) B``; predictions on new centred rows ``Xn`` are
    ``(Xn C) diag(1/(s + alpha)) B``. Primal (n >= D): ``X'X = V s V'``, C = V, B = V'X'y.
    Dual (n < D): ``XX' = U s U'``, C = X'U, B = U'y.
    """

    def __init__(self, Xc: np.ndarray, yc: np.ndarray) -> None:
        n, d = Xc.shape
        G = Xc.T @ Xc if n >= d else Xc @ Xc.T
        # LAPACK's eigh gains little from threads and loses up to 8x when cores are
        # contended (measured on 2 shared cores, 2048 x 2048), so run it single-threaded
        with threadpool_limits(1, user_api="blas"):
            s, vecs = np.linalg.eigh(G)
        if n >= d:
            self.C = vecs
            self.B = vecs.T @ (Xc.T @ yc)
        else:
            self.C = Xc.T @ vecs
            self.B = vecs.T @ yc
        self.s = np.clip(s, 0.0, None)

    def coef(self, alpha: np.ndarray) -> np.ndarray:
        """(D, S) weights; ``alpha`` is one penalty per target (S,)."""
        return self.C @ (self.B / (self.s[:, None] + alpha[None, :]))

    def predict_all(self, Xn: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """(n_alphas, n_new, S) predictions (centred) for every penalty."""
        P = Xn @ self.C
        return np.stack([P @ (self.B / (self.s[:, None] + a)) for a in alphas])


class Readout:
    """Linear readout from features (N, D) to site responses (N, S); see module docstring.

    Parameters are only stored here and validated in :meth:`fit`. Learned state:
    ``coef_`` (S, D) on z-scored features, ``intercept_`` (S,), ``alpha_`` (S,) (NaN for
    PLS), ``mean_`` / ``scale_`` (D,) the training feature statistics, ``n_train_`` (S,)
    rows each site was fitted on, ``n_features_in_``.
    """

    def __init__(self, method: str = "ridge", alphas: Sequence[float] = DEFAULT_ALPHAS, cv_folds: int = 5,
                 pls_components: int = 25, seed: int = 0) -> None:
        self.method = method
        self.alphas = alphas
        self.cv_folds = cv_folds
        self.pls_components = pls_components
        self.seed = seed

    # -- fitting -------------------------------------------------------------------------
    def _check_params(self) -> np.ndarray:
        if self.method not in ("ridge", "pls"):
            raise ValueError(f"Readout method must be 'ridge' or 'pls'; got {self.method!r}")
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or not np.all(alphas > 0):
            raise ValueError(f"Readout alphas must be a non-empty list of penalties > 0; got {list(self.alphas)}")
        if int(self.cv_folds) < 2:
            raise ValueError(f"Readout cv_folds must be an integer >= 2; got {self.cv_folds}")
        if int(self.pls_components) < 1:
            raise ValueError(f"Readout pls_components must be >= 1; got {self.pls_components}")
        return alphas

    def fit(self, X, Y) -> Readout:
        """Fit every site on its non-NaN rows of ``Y``; ``X`` (N, D) finite features, ``Y`` (N, S)."""
        alphas = self._check_params()
        X = _as_2d_float("X", X, allow_nan=False)
        Y = _as_2d_float("Y", Y, allow_nan=True)
        if len(X) != len(Y):
            raise ValueError(f"X has {len(X)} rows (images) but Y has {len(Y)}; they must be the same "
                             "images in the same order")
        n, d = X.shape
        seen = np.isfinite(Y)
        counts = seen.sum(0)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"site(s) {empty.tolist()} have no recorded responses (all NaN); drop those "
                             "columns of Y before fitting")
        min_rows = 2 * int(self.cv_folds) if self.method == "ridge" else 3
        few = np.flatnonzero(counts < min_rows)
        if few.size:
            raise ValueError(f"site(s) {few.tolist()} have fewer than {min_rows} recorded images "
                             f"(counts {counts[few].tolist()}); a {self.method} readout needs at least "
                             f"{min_rows} — drop those sites or record more images")
        with np.errstate(invalid="ignore"):
            sd = np.array([np.std(Y[seen[:, j], j]) for j in range(Y.shape[1])])
        flat = np.flatnonzero(~(sd > 1e-12 * np.maximum(1.0, np.nanmax(np.abs(Y), axis=0))))
        if flat.size:
            vals = [float(Y[seen[:, j], j][0]) for j in flat[:5]]
            raise ValueError(f"site(s) {flat.tolist()} have zero variance over their recorded images "
                             f"(constant responses {vals}); nothing to fit — drop them (e.g. select sites "
                             "by split-half reliability first)")

        self.mean_ = X.mean(0)
        sc = X.std(0)
        self.scale_ = np.where(sc > 0, sc, 1.0)
        Z = (X - self.mean_) / self.scale_
        S = Y.shape[1]
        self.coef_ = np.zeros((S, d))
        self.intercept_ = np.zeros(S)
        self.alpha_ = np.full(S, np.nan)
        self.n_train_ = counts.astype(np.int64)
        self.n_features_in_ = d
        # group sites by their set of recorded rows: one decomposition per group (and fold)
        patterns, group = np.unique(seen.T, axis=0, return_inverse=True)
        for g, rows_mask in enumerate(patterns):
            sites = np.flatnonzero(group.ravel() == g)
            rows = np.flatnonzero(rows_mask)
            Zg, Yg = Z[rows], Y[np.ix_(rows, sites)]
            if self.method == "ridge":
                coef, icpt, alpha = self._fit_ridge(Zg, Yg, alphas)
                self.alpha_[sites] = alpha
            else:
                coef, icpt = self._fit_pls(Zg, Yg)
            self.coef_[sites] = coef
            self.intercept_[sites] = icpt
        return self

    def _fit_ridge(self, Z: np.ndarray, Y: np.ndarray, alphas: np.ndarray):
        n = len(Z)
        rng = np.random.default_rng(self.seed)
        fold_of = rng.permutation(n) % int(self.cv_folds)
        sse = np.zeros((len(alphas), Y.shape[1]))
        for k in range(int(self.cv_folds)):
            tr, te = fold_of != k, fold_of == k
            zm, ym = Z[tr].mean(0), Y[tr].mean(0)
            solver = _RidgeSolver(Z[tr] - zm, Y[tr] - ym)
            pred = solver.predict_all(Z[te] - zm, alphas) + ym
            sse += ((pred - Y[te][None]) ** 2).sum(1)
        best = alphas[np.argmin(sse, axis=0)]
        zm, ym = Z.mean(0), Y.mean(0)
        coef = _RidgeSolver(Z - zm, Y - ym).coef(best).T  # (S, D)
        return coef, ym - coef @ zm, best

    def _fit_pls(self, Z: np.ndarray, Y: np.ndarray):
        from sklearn.cross_decomposition import PLSRegression

        k = int(min(self.pls_components, Z.shape[1], len(Z) - 1))
        pls = PLSRegression(n_components=k, scale=False).fit(Z, Y)
        coef = np.asarray(pls.coef_, dtype=np.float64)
        if coef.shape != (Y.shape[1], Z.shape[1]):  # older scikit-learn: (D, S)
            coef = coef.T
        icpt = Y.mean(0) - coef @ Z.mean(0)
        return coef, icpt

    # -- using ---------------------------------------------------------------------------
    def _check_fitted(self, X) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ValueError("this Readout is not fitted yet; call fit(X, Y) first")
        X = _as_2d_float("X", X, allow_nan=False)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the readout was fitted on "
                             f"{self.n_features_in_}; use the same backbone and layer")
        return X

    def predict(self, X) -> np.ndarray:
        """Predicted responses (N, S) for features (N, D)."""
        X = self._check_fitted(X)
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def score(self, X, Y) -> np.ndarray:
        """Per-site Pearson r (S,) between ``predict(X)`` and ``Y`` over each site's non-NaN rows.

        (Unlike scikit-learn's R^2 this is a correlation per site; take ``np.nanmean`` for one number.)
        """
        X = self._check_fitted(X)
        Y = _as_2d_float("Y", Y, allow_nan=True)
        if len(X) != len(Y) or Y.shape[1] != len(self.coef_):
            raise ValueError(f"score needs Y of shape ({len(X)}, {len(self.coef_)}); got {Y.shape}")
        return pearson_r_columns(self.predict(X), Y)

    def raw_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (S, D), b (S,))`` with ``f(x) = W @ phi(x) + b`` on unscaled features."""
        if not hasattr(self, "coef_"):
            raise ValueError("this Readout is not fitted yet; call fit(X, Y) first")
        W = self.coef_ / self.scale_
        return W, self.intercept_ - W @ self.mean_

    def to_torch(self, backbone: nn.Module) -> SiteModel:
        """Torch module: images (B, 3, H, W) in [0, 1] -> all sites' f(x) (B, S), float32."""
        if not hasattr(self, "coef_"):
            raise ValueError("this Readout is not fitted yet; call fit(X, Y) first")
        dim = getattr(backbone, "feature_dim", None)
        if dim is not None and dim != self.n_features_in_:
            raise ValueError(f"backbone gives {dim} features but the readout was fitted on "
                             f"{self.n_features_in_}; use the backbone and layer it was fitted with")
        return SiteModel(backbone, self.mean_, self.scale_, self.coef_, self.intercept_)


class SiteModel(nn.Module):
    """``f(x) = ((phi(x) - mean) / scale) @ weight.T + bias``: images in [0, 1] -> (B, S) predicted responses.

    ``backbone`` is the feature network; ``weight`` (S, D) is on z-scored features.
    """

    feat_mean: torch.Tensor
    feat_scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: npt.ArrayLike, scale: npt.ArrayLike, weight: npt.ArrayLike,
                 bias: npt.ArrayLike) -> None:
        super().__init__()
        self.backbone = backbone
        f32 = torch.float32
        self.register_buffer("feat_mean", torch.as_tensor(np.asarray(mean), dtype=f32))
        self.register_buffer("feat_scale", torch.as_tensor(np.asarray(scale), dtype=f32))
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight), dtype=f32))
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias), dtype=f32))
        self.eval()

    @property
    def n_sites(self) -> int:
        return int(self.weight.shape[0])

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, D) -> responses (B, S)."""
        z = (features.float() - self.feat_mean) / self.feat_scale
        return torch.nn.functional.linear(z, self.weight, self.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
