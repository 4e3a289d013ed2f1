"""Model-quality scores: cross-validated r, split-half noise ceiling, site selection.

- :func:`split_half_reliability`: for each random split of every image's repeats into two
  halves, Pearson r across images between the half means; r averaged over splits, then
  Spearman-Brown corrected ``2r / (1 + r)``. This estimates the reliability of the mean over
  all repeats: ``var(true) / var(observed mean)``.
- :func:`grouped_cross_validated_r`: the score the loop reports. K folds over a fixed
  held-out set (the screening day's clean images), grouped by clean parent: a clean image
  and every stimulus made from it are never split between train and test (a perturbed
  image predicts its parent almost perfectly, so a split that separates them inflates r),
  and the folds of a fixed held-out set are the same on every day, so days are comparable.
- :func:`cross_validated_r`: Brain-Score style — ``n_splits`` shuffled splits with
  ``train_fraction`` of the images for training, Pearson r on the held-out images, mean
  over splits. Ungrouped: only honest when the images are independent (no parent/child pairs).
- Predictivity under three explicit names (:data:`PREDICTIVITY_DEFINITIONS`): ``r``; ``r /
  sqrt(ceiling)`` (:func:`brain_score_predictivity`, Brain-Score's convention: r over the
  ceiling of r); and ``sign(r) r^2 / ceiling`` (:func:`noise_ceiled_predictivity`, the
  explainable-variance fraction: 1 for a perfect model, in expectation). Never compare one
  with another: r = 0.5 against a ceiling of 0.8 is 0.56 by the second and 0.31 by the third.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from modelfit.progressbars import bar

from .readout import pearson_r_columns


class Estimator(Protocol):
    """A scikit-learn-style regressor: ``fit`` returns the fitted estimator, ``predict`` (n, S)."""

    def fit(self, X: np.ndarray, Y: np.ndarray) -> Estimator: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


def split_half_reliability(reps: np.ndarray, n_splits: int = 50, seed: int = 0) -> np.ndarray:
    """Spearman-Brown corrected split-half reliability per site.

    ``reps``: (n_repeats, n_images, n_sites) responses, NaN where a repeat is missing. For
    each image and site its valid repeats are shuffled and split in two halves (the
    second gets the odd one); images with < 2 valid repeats are left out. Returns (n_sites,)
    (NaN for a site with fewer than 3 usable images or a constant half).
    """
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim != 3:
        raise ValueError(f"reps must be (n_repeats, n_images, n_sites); got shape {reps.shape}")
    if reps.shape[0] < 2:
        raise ValueError(f"split halves need at least 2 repeats; reps has {reps.shape[0]}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1; got {n_splits}")
    valid = np.isfinite(reps)
    k = valid.sum(0)  # (n_images, n_sites) valid repeats
    half = k // 2
    filled = np.where(valid, reps, 0.0)
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        keys = np.where(valid, rng.random(reps.shape), np.inf)
        rank = np.empty_like(keys, dtype=np.int64)
        np.put_along_axis(rank, np.argsort(keys, axis=0), np.arange(reps.shape[0])[:, None, None], axis=0)
        in_a = rank < half
        in_b = valid & ~in_a
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (filled * in_a).sum(0) / half
            b = (filled * in_b).sum(0) / (k - half)
        a[half < 1] = np.nan
        b[half < 1] = np.nan
        rs.append(pearson_r_columns(a, b))
    r = np.nanmean(np.array(rs), axis=0) if n_splits > 1 else rs[0]
    return spearman_brown(r)


def spearman_brown(r: np.ndarray) -> np.ndarray:
    """Reliability of the full set from the split-half correlation r: ``2r / (1 + r)``."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * r / (1 + r)


def cross_validated_r(X: np.ndarray, Y: np.ndarray, make_readout: Callable[[], Estimator], n_splits: int = 10,
                      train_fraction: float = 0.9, seed: int = 0) -> np.ndarray:
    """Mean held-out Pearson r per site (n_sites,) over ``n_splits`` shuffled train/test splits.

    ``make_readout()`` returns a fresh unfitted estimator with ``fit``/``predict``
    (e.g. ``lambda: Readout(alphas=...)``). ``Y`` may contain NaN (each site scored on its
    non-NaN held-out rows).
    """
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} rows (images) but Y has {len(Y)}; they must be the same images")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction}")
    n = len(X)
    n_train = round(train_fraction * n)
    if n_train < 2 or n - n_train < 3:
        raise ValueError(f"{n} images are too few for {train_fraction:.0%} train splits with >= 3 test images")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in bar(range(n_splits), desc="cross-validated r", leave=False):
        perm = rng.permutation(n)
        tr, te = perm[:n_train], perm[n_train:]
        model = make_readout().fit(X[tr], Y[tr])
        rs.append(pearson_r_columns(model.predict(X[te]), Y[te]))
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.array(rs), axis=0)


def group_folds(groups, test: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold (0..n_folds-1) per row for :func:`grouped_cross_validated_r`; -1 for rows whose
    group has no test row (they are never held out: always in training).

    Every row of a group gets its group's fold. The test groups are ranked by a seeded sha256
    of their key and dealt round-robin, so the folds are balanced and depend only on the set
    of test groups and ``seed`` -- not on row order or on train-only rows added later."""
    import hashlib

    keys = [str(g) for g in groups]
    test = np.asarray(test, bool)
    if len(test) != len(keys):
        raise ValueError(f"{len(keys)} group keys but {len(test)} test flags; give one of each per row")
    tgroups = sorted({k for k, t in zip(keys, test) if t},
                     key=lambda k: hashlib.sha256(f"{int(seed)}:{k}".encode()).hexdigest())
    fold_of = {k: i % n_folds for i, k in enumerate(tgroups)}
    return np.array([fold_of.get(k, -1) for k in keys], dtype=np.int64)


def grouped_cross_validated_r(X: np.ndarray, Y: np.ndarray, groups, test: np.ndarray,
                              make_readout: Callable[[], Estimator], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Mean held-out Pearson r per site (n_sites,) over ``n_folds`` folds grouped by ``groups``.

    ``groups`` (N,): one key per row; rows sharing a key (a clean image and every stimulus made
    from it) are never split between train and test. ``test`` (N,) bool: the rows that are
    scored, a fixed held-out set (the screening day's clean images); the other rows only train.
    Fold k (:func:`group_folds`) fits ``make_readout()`` on every row whose group is not in fold
    k and scores Pearson r on fold k's test rows; NaN in ``Y`` is skipped per site. Fewer folds
    are used when the held-out set has fewer than 3 images per fold.
    """
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    test = np.asarray(test, bool)
    if len(X) != len(Y) or len(test) != len(Y):
        raise ValueError(f"X ({len(X)} rows), Y ({len(Y)}) and test ({len(test)}) must describe the same images")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2; got {n_folds}")
    n_test_groups = len({str(g) for g, t in zip(groups, test) if t})
    if n_test_groups < 6:
        raise ValueError(f"{n_test_groups} held-out images are too few for grouped cross-validation (>= 2 folds "
                         "of >= 3 test images need 6)")
    n_folds = min(n_folds, n_test_groups // 3)   # every fold scores >= 3 held-out images
    fold = group_folds(groups, test, n_folds, seed)
    rs = []
    for k in bar(range(n_folds), desc="grouped cross-validated r", leave=False):
        te = np.flatnonzero(test & (fold == k))
        tr = np.flatnonzero(fold != k)
        model = make_readout().fit(X[tr], Y[tr])
        rs.append(pearson_r_columns(model.predict(X[te]), Y[te]))
    import warnings

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array(rs), axis=0)


def noise_ceiled_predictivity(r: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """``sign(r) * r^2 / ceiling`` per site: the fraction of explainable variance explained.

    The sign is kept so a model that anti-correlates with a site never scores as a good one.
    NaN where the ceiling is <= 0 or NaN.
    """
    r = np.asarray(r, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    if r.shape != ceiling.shape:
        raise ValueError(f"r {r.shape} and ceiling {ceiling.shape} must have one entry per site each")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling > 0, np.sign(r) * r**2 / ceiling, np.nan)


PREDICTIVITY_DEFINITIONS = {
    "r": "cross-validated Pearson r between predicted and recorded responses (folds grouped by clean parent)",
    "r / sqrt(ceiling)": "Brain-Score's noise-ceiled predictivity: r divided by the ceiling of r, the square root "
                         "of the split-half (Spearman-Brown) reliability",
    "r^2 / ceiling": "explainable-variance fraction: sign(r) r^2 divided by the split-half (Spearman-Brown) "
                     "reliability, the share of the explainable variance the model explains",
}


def brain_score_predictivity(r: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """``r / sqrt(ceiling)`` per site (Brain-Score's convention); NaN where the ceiling is <= 0 or NaN."""
    r = np.asarray(r, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    if r.shape != ceiling.shape:
        raise ValueError(f"r {r.shape} and ceiling {ceiling.shape} must have one entry per site each")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling > 0, r / np.sqrt(np.where(ceiling > 0, ceiling, 1.0)), np.nan)


def select_sites(reliability: np.ndarray, threshold: float) -> np.ndarray:
    """Indices (int64, ascending) of sites whose reliability is >= threshold (NaN never selected)."""
    reliability = np.asarray(reliability, dtype=np.float64)
    if reliability.ndim != 1:
        raise ValueError(f"reliability must be one value per site (1-D); got shape {reliability.shape}")
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(reliability >= threshold).astype(np.int64)


def summarize(r: np.ndarray, ceiling: np.ndarray) -> dict[str, float]:
    """Median over sites of r, ceiling, r / sqrt(ceiling) and r^2 / ceiling (NaN-ignoring).

    ``median_noise_ceiled`` (kept for older readers) is the explainable-variance fraction."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ev = float(np.nanmedian(noise_ceiled_predictivity(r, ceiling)))
        return {"median_r": float(np.nanmedian(r)), "median_ceiling": float(np.nanmedian(ceiling)),
                "median_r_over_sqrt_ceiling": float(np.nanmedian(brain_score_predictivity(r, ceiling))),
                "median_explainable_variance_fraction": ev, "median_noise_ceiled": ev}
