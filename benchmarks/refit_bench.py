"""Readout refit time: 5,000 images x 2,048 features x 200 sites (ridge, per-site alpha by 5-fold CV).

Data: features with a decaying spectrum; each site a random linear map of them plus noise,
10% of the responses missing for half the sites (two missing-value patterns). Optionally
compares scikit-learn's RidgeCV(alpha_per_target=True) (efficient leave-one-out) on the
complete-data sites.

    python benchmarks/refit_bench.py [--n 5000] [--d 2048] [--s 200] [--sklearn]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from modelfit.readout import DEFAULT_ALPHAS, Readout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="images")
    ap.add_argument("--d", type=int, default=2048, help="features")
    ap.add_argument("--s", type=int, default=200, help="sites")
    ap.add_argument("--sklearn", action="store_true", help="also time sklearn RidgeCV(alpha_per_target=True)")
    ap.add_argument("--complete", action="store_true", help="no missing responses (one shared decomposition)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((a.n, a.d)) * (1.0 / np.sqrt(1 + np.arange(a.d)))).astype(np.float32)
    W = rng.standard_normal((a.s, a.d)) / np.sqrt(a.d)
    Y = X @ W.T * 10 + rng.standard_normal((a.n, a.s))
    miss = rng.random(a.n) < 0.1
    if not a.complete:
        Y[np.ix_(miss, np.arange(a.s // 2))] = np.nan
    rows = []
    t = time.perf_counter()
    r = Readout(alphas=DEFAULT_ALPHAS, cv_folds=5).fit(X, Y)
    rows.append(("itloop Readout ridge, 5-fold CV, 9 alphas, per-site", time.perf_counter() - t,
                 float(np.nanmedian(r.score(X, Y)))))
    if a.sklearn:
        from sklearn.linear_model import RidgeCV

        keep = np.arange(a.s // 2, a.s)
        Z = (X - X.mean(0)) / X.std(0)
        t = time.perf_counter()
        RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True).fit(Z, Y[:, keep])
        el = time.perf_counter() - t
        rows.append((f"sklearn RidgeCV LOO, 9 alphas, {len(keep)} complete sites only", el, float("nan")))
    what = "no missing responses" if a.complete else "half the sites missing 10% of images"
    print(f"{a.n} images x {a.d} features x {a.s} sites ({what})\n")
    print(f"{'method':<58} {'seconds':>8} {'median in-sample r':>19}")
    for name, sec, med in rows:
        print(f"{name:<58} {sec:>8.2f} {med:>19.3f}")


if __name__ == "__main__":
    main()
