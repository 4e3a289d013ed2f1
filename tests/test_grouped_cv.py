"""Cross-validated r grouped by clean parent, on a fixed held-out clean set: a known answer.

Synthetic readout problem: each clean image has a few informative features (a linear site
explains half of its response variance: r = 1/sqrt(2) on new images) plus an image-specific
part -- a high-dimensional "identity" code and an idiosyncratic response u that no feature
predicts across images. Its perturbed children repeat the parent's identity code and u (a
perturbed image is nearly the same image). A split that trains on a child and tests on its
parent lets a linear readout memorise u through the identity code: r is inflated. The known
answer is the r the same readouts (trained on the same folds' families) reach on thousands of
fresh images from the same generator: grouped folds must match it, ungrouped splits exceed it."""
from __future__ import annotations

import numpy as np
import pytest

from modelfit.readout import Readout, pearson_r_columns
from modelfit.scores import cross_validated_r, group_folds, grouped_cross_validated_r

N_PARENTS, N_CHILDREN, D_INFO, D_ID = 500, 3, 4, 150


def _families(seed: int = 0, n_fresh: int = 4000):
    """(X, Y, groups, clean) of parents and their children, plus (X, Y) of ``n_fresh`` new clean images."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D_INFO)

    def images(n):
        info, ident = rng.normal(size=(n, D_INFO)), rng.normal(size=(n, D_ID))
        lin = info @ w / np.linalg.norm(w)             # unit variance, predictable from features
        u = rng.normal(size=n)                         # unit variance, image-specific
        return info, ident, lin + u

    info, ident, y = images(N_PARENTS)
    X, Y, groups, clean = [], [], [], []
    for p in range(N_PARENTS):
        for c in range(N_CHILDREN + 1):                # c = 0: the clean parent
            jitter = 0.0 if c == 0 else 0.05
            X.append(np.r_[info[p] + jitter * rng.normal(size=D_INFO), ident[p] + jitter * rng.normal(size=D_ID)])
            Y.append(y[p] + jitter * rng.normal())
            groups.append(f"img{p}")
            clean.append(c == 0)
    f_info, f_ident, f_y = images(n_fresh)
    return np.asarray(X), np.asarray(Y)[:, None], groups, np.asarray(clean), np.c_[f_info, f_ident], f_y[:, None]


def _make() -> Readout:
    return Readout(alphas=[0.1, 1.0, 10.0, 100.0, 1000.0], cv_folds=5, seed=0)


def test_grouped_cv_is_not_inflated_by_parent_child_leakage_and_ungrouped_is():
    X, Y, groups, clean, X_new, Y_new = _families()
    fold = group_folds(groups, clean, 5, seed=0)
    # the known answer: the r on 4000 fresh images of the readouts fitted on each fold's training families
    known = np.mean([pearson_r_columns(_make().fit(X[fold != k], Y[fold != k]).predict(X_new), Y_new)[0]
                     for k in range(5)])
    assert 0.3 < known < 1.0 / np.sqrt(2.0)            # below the best linear answer (memorised u adds noise)
    grouped = grouped_cross_validated_r(X, Y, groups, clean, _make, n_folds=5, seed=0)[0]
    assert abs(grouped - known) < 0.08, (grouped, known)
    ungrouped = cross_validated_r(X, Y, _make, n_splits=5, train_fraction=0.8, seed=0)[0]
    assert ungrouped > known + 0.12, (ungrouped, known)
    # scoring only clean images is not what protects: folds that split families leak as much
    own = [f"row{i}" for i in range(len(Y))]
    leaky = grouped_cross_validated_r(X, Y, own, clean, _make, n_folds=5, seed=0)[0]
    assert leaky > known + 0.12, (leaky, known)


def test_group_folds_keep_families_together_balanced_and_stable_across_days():
    X, Y, groups, clean, *_ = _families(n_fresh=0)
    fold = group_folds(groups, clean, 5, seed=3)
    for g in set(groups):
        assert len({int(f) for f, h in zip(fold, groups) if h == g}) == 1   # a family never straddles folds
    counts = np.bincount(fold[clean], minlength=5)
    assert counts.min() >= N_PARENTS // 5 - 1 and counts.max() <= N_PARENTS // 5 + 1
    # a later day adds perturbed images of some parents and new train-only images: the held-out
    # set's folds do not move, so days are scored on the same folds
    more_groups = list(groups) + ["img3", "img7", "new0", "new1"]
    more_clean = np.r_[clean, [False, False, True, True]]
    held = np.r_[clean, [False, False, False, False]]
    later = group_folds(more_groups, held, 5, seed=3)
    np.testing.assert_array_equal(later[:len(groups)], fold)
    assert later[-4] == fold[groups.index("img3")] and later[-2] == -1 and later[-1] == -1
    assert more_clean.sum() == clean.sum() + 2
    # another seed deals other folds
    assert not np.array_equal(group_folds(groups, clean, 5, seed=4), fold)


def test_grouped_cv_needs_enough_held_out_images():
    X, Y, groups, clean, *_ = _families(n_fresh=0)
    few = np.zeros(len(Y), bool)
    few[np.flatnonzero(clean)[:5]] = True
    with pytest.raises(ValueError, match="5 held-out images are too few"):
        grouped_cross_validated_r(X, Y, groups, few, _make, n_folds=5)
