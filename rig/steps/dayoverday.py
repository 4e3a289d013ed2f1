"""Day-over-day change of the bias-corrected sensitivity, paired over the same problems.

A problem is (site, clean image); its value on a day is the bias-corrected change
``sign(predicted) * (r(x+delta) - r(x)) / sigma`` averaged over both directions. Day D is
compared with the first closed-loop day on the problems both perturbed, preferably on clean
images that neither day's designing model was trained on (a model fitted through day D-1
pools every image shown on days 0..D-1). With today's protocol that never happens: day 1
itself shows every shared clean image, so the later model always trained on them; the
comparison then uses them all and says it is not out-of-sample. (A protocol that withholds
some clean images from fitting would get the out-of-sample comparison automatically.) Each epsilon gets a BCa CI, a sign-flip p, its Holm adjustment across
epsilons and the minimum detectable effect (80 % power at the Bonferroni level alpha / k).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.inference import holm
from analysis.stats import paired_difference
from rig.paths import day_path

FIRST_DAY = 1
MIN_UNSEEN = 6   # fewer unseen problems than this: compare on all and say so


def signed_changes_by_image(data, sites: np.ndarray, sigma: np.ndarray) -> dict[float, dict[tuple, float]]:
    """{eps: {(site, clean parent id, direction): bias-corrected change / sigma}} of one day's
    targeted stimuli; the key identifies the same problem on another day (parents by stimulus id)."""
    ss = data.stimuli
    resp = data.mean_responses().astype(float)
    sig = {int(s): float(v) for s, v in zip(sites, sigma)}
    out: dict[float, dict[tuple, float]] = {}
    for k in np.flatnonzero(ss.kind == "targeted"):
        s = int(ss.site[k])
        if s not in sig or not np.isfinite(ss.predicted_change[k]) or ss.predicted_change[k] == 0:
            continue
        e = float(ss.epsilons[ss.epsilon_index[k]])  # the stored grid value labels it on every day
        v = np.sign(ss.predicted_change[k]) * (resp[k, s] - resp[ss.parent[k], s]) / sig[s]
        out.setdefault(e, {})[(s, str(data.stim_ids[ss.parent[k]]), int(ss.direction[k]))] = float(v)
    return out


def trained_image_ids(folder: Path, days, through: int) -> set[str]:
    """Stimulus ids of every image shown on days 0..``through`` (what a model fitted through it saw)."""
    ids: set[str] = set()
    for d in range(through + 1):
        p = day_path(folder, d)
        if p.exists():
            ids.update(str(x) for x in days.read(p).stim_ids)
    return ids


def _paired_units(a: dict, b: dict, keep) -> tuple[np.ndarray, np.ndarray]:
    units: dict[tuple, list] = {}
    for key in sorted(set(a) & set(b)):   # a fixed order: string hashes vary between processes
        if keep(key[1]):
            units.setdefault(key[:2], []).append((a[key], b[key]))
    va = np.array([np.mean([x for x, _ in v]) for v in units.values()])
    vb = np.array([np.mean([y for _, y in v]) for v in units.values()])
    return va, vb


def day_over_day(folder: str | Path, last, days, seed: int = 0, n_boot: int = 1999) -> dict:
    """JSON-ready comparison of ``last`` (a DayResults) with the first closed-loop day (see module doc)."""
    folder = Path(folder)
    first_path = day_path(folder, FIRST_DAY)
    if last.day <= FIRST_DAY or not first_path.exists():
        return {}
    first = days.read(first_path)
    a_all = signed_changes_by_image(first, last.sites, last.sigma)
    b_all = signed_changes_by_image(last.data, last.sites, last.sigma)
    seen = trained_image_ids(folder, days, last.day - 1)
    eps = sorted(set(a_all) & set(b_all))
    rows, pvals = [], []
    for e in eps:
        va, vb = _paired_units(a_all[e], b_all[e], lambda pid: pid not in seen)
        out_of_sample = len(va) >= MIN_UNSEEN
        if not out_of_sample:
            va, vb = _paired_units(a_all[e], b_all[e], lambda pid: True)
        p = paired_difference(va, vb, n_boot=n_boot, seed=seed, alpha=0.05 / max(len(eps), 1))
        rows.append((e, p, out_of_sample))
        pvals.append(p.p_value)
    adj = holm(pvals)
    by_eps: dict[str, dict] = {}
    out = {"first_day": FIRST_DAY, "last_day": int(last.day), "units": "bias-corrected change / sigma", "epsilons": by_eps}
    for (e, p, oos), q in zip(rows, adj):
        by_eps[f"{e:g}"] = {
            "difference": {"value": _f(p.estimate.value), "lo": _f(p.estimate.lo), "hi": _f(p.estimate.hi), "n": p.n},
            "p": _f(p.p_value), "p_holm": _f(q), "mde": _f(p.mde), "significant": bool(np.isfinite(q) and q < 0.05),
            "out_of_sample": oos,
            "images": ("clean images neither day's model was trained on" if oos else
                       f"all shared problems: the day-{last.day} model was trained on these clean images "
                       "(fewer than 6 unseen), so this is not an out-of-sample comparison")}
    return out


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
