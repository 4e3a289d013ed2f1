"""A small simulated day at the measurement level, where every headline quantity's truth is known.

Sites and images are random draws from a superpopulation; the truth of a population
quantity is its superpopulation value (the expectation over sites and images), computed by
Monte Carlo on 4 x 10^6 independent noise-free (site, image) draws of the same generator. Spike counts use
the simulator's noise model (``sim/spikes.py``): per trial a Gamma gain G (mean 1,
cv ``gain_cv``) per site, then ``N ~ Poisson(G * mu)``, so ``Var N = mu + mu^2 cv^2``;
the rig's RSVP trials share that gain across a trial's images (``per_trial`` presentations).
The design is the loop's: each site has its own clean images (nested).

Per site s: baseline expected count b_s ~ U(10, 30) per window; clean image i evokes
``mu = b_s * exp(0.5 z)`` (z ~ N(0,1)), so sigma_s = b_s sqrt((e^0.25 - 1) e^0.25) is known.
At epsilon e, the targeted true change is ``dir * xi * e * a_s * u_si * sigma_s`` for both
directions dir (xi = -1 with probability 0.15: the model's sign is wrong), a_s ~ Gamma(4,
mean 0.25), u_si ~ Gamma(3, mean 1); a random direction (one per site, image and epsilon, counted
for that site) moves site s by ``e * a_s * 0.3 * v_si * sigma_s * (+-1)``, v ~ Gamma(3, mean 1);
the white-box truth is ``e * a_s * w_si * sigma_s``, w = 2.5 u. Null days: no change at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.inference import signed_sqrt
from analysis.provenance import perturbation_pairs

LOG_SD = 0.5
SIGMA_FACTOR = float(np.sqrt((np.exp(LOG_SD ** 2) - 1) * np.exp(LOG_SD ** 2)))
EPSILONS = (1.0, 2.0, 4.0)
WRONG_SIGN = 0.15


@dataclass
class TrueDay:
    mu: np.ndarray          # (S, I) clean expected counts
    sigma: np.ndarray       # (S,)
    targeted: np.ndarray    # (S, I, E, 2) true signed change (direction +1, -1), counts
    random: np.ndarray      # (S, I, E) true change, counts
    whitebox: np.ndarray    # (S, I, E) white-box magnitude, counts
    model_sign: np.ndarray  # (S, I, E, 2) the sign the designing model predicts


def draw_truth(rng: np.random.Generator, n_sites: int, n_images: int, null: bool = False,
               epsilons=EPSILONS) -> TrueDay:
    e = np.asarray(epsilons, float)
    b = rng.uniform(10, 30, size=n_sites)
    mu = b[:, None] * np.exp(LOG_SD * rng.standard_normal((n_sites, n_images)))
    sigma = b * SIGMA_FACTOR
    a = rng.gamma(4.0, 0.25 / 4.0, size=n_sites)
    u = rng.gamma(3.0, 1 / 3.0, size=(n_sites, n_images))
    v = rng.gamma(3.0, 1 / 3.0, size=(n_sites, n_images))
    scale = (a * sigma)[:, None, None] * e[None, None, :]
    mag = scale * u[:, :, None]
    xi = np.where(rng.random((n_sites, n_images, len(e), 2)) < WRONG_SIGN, -1.0, 1.0)
    direction = np.array([1.0, -1.0])
    targeted = mag[..., None] * direction * xi
    rand = scale * 0.3 * v[:, :, None] * rng.choice((-1.0, 1.0), size=(n_sites, n_images, len(e)))
    whitebox = 2.5 * mag
    if null:
        targeted, rand = np.zeros_like(targeted), np.zeros_like(rand)
    # keep every expected count positive (clip is the rare extreme draw; the truth uses the same clip)
    targeted = np.maximum(mu[:, :, None, None] + targeted, 0.05) - mu[:, :, None, None]
    rand = np.maximum(mu[:, :, None] + rand, 0.05) - mu[:, :, None]
    return TrueDay(mu, sigma, targeted, rand, whitebox, direction * np.ones_like(xi))


def superpopulation_truth(null: bool = False, n_pairs: int = 4_000_000, seed: int = 12345) -> dict:
    """Population truths per epsilon: floor-corrected RMS (targeted, random) / sigma, their difference,
    and the fraction of the white-box truth reached by the bias-corrected change.

    Expectations over (site, image) pairs, by Monte Carlo on ``n_pairs`` independent noise-free
    pairs (one image per drawn site: the expectation does not depend on how pairs are grouped,
    and independent pairs make it precise; relative Monte-Carlo SE about 0.1 %)."""
    rng = np.random.default_rng(seed)
    sums = np.zeros((4, len(EPSILONS)))
    chunk = 200_000
    for start in range(0, n_pairs, chunk):
        t = draw_truth(rng, min(chunk, n_pairs - start), 1, null)
        s = t.sigma[:, None, None]
        sums += np.stack([((t.targeted / s[..., None]) ** 2).sum(axis=(0, 1)).mean(axis=-1),
                          ((t.random / s) ** 2).sum(axis=(0, 1)),
                          (t.model_sign * t.targeted / s[..., None]).sum(axis=(0, 1)).mean(axis=-1),
                          (t.whitebox / s).sum(axis=(0, 1))])
    t_sq, r_sq, signed, wb = sums / n_pairs
    return {"targeted_rms": signed_sqrt(t_sq), "random_rms": signed_sqrt(r_sq),
            "difference": signed_sqrt(t_sq) - signed_sqrt(r_sq), "targeted_sq": t_sq,
            "fraction": signed / wb if not null else np.full(len(wb), np.nan)}


def _trial_schedule(rng: np.random.Generator, n_stim: int, n_repeats: int, per_trial: int,
                    family: np.ndarray | None) -> np.ndarray:
    """(n_repeats, n_stim) trial id of each presentation: each repeat is a block showing every
    stimulus once in random order, cut into RSVP trials of ``per_trial`` presentations. With
    ``family`` (n_stim,) ids, a family's stimuli are shown back to back (sharing trials: the
    worst case for within-trial correlation); else in random order, which keeps a perturbed
    image and its parent in different trials almost always, as the loop's schedule does."""
    trials = np.empty((n_repeats, n_stim), np.int64)
    n_trials = -(-n_stim // per_trial)
    for r in range(n_repeats):
        if family is None:
            order = rng.permutation(n_stim)
        else:
            fam_order = rng.permutation(int(family.max()) + 1)
            key = np.argsort(fam_order)[family] + 0.5 * rng.random(n_stim)
            order = np.argsort(key, kind="stable")
        trials[r, order] = r * n_trials + np.arange(n_stim) // per_trial
    return trials


def simulate_day(rng: np.random.Generator, n_sites: int = 8, n_images: int = 16, n_repeats: int = 8,
                 gain_cv: float = 0.2, null: bool = False, epsilons=EPSILONS, per_trial: int = 5,
                 family_trials: bool = False):
    """One measured day in the loop's design: each site has ``n_images`` clean images of its own
    (nested), each perturbed at every epsilon in both directions (targeted, for that site) and
    by one random direction per epsilon (the random control of that site and image).

    Noise: the rig's RSVP trials of ``per_trial`` presentations share one Gamma gain per site
    (mean 1, cv ``gain_cv``; sim/monkey.py draws one per trial), then Poisson counts.
    ``family_trials``: show each clean image with its perturbed images in the same trials.
    Returns (repeats (R, n_stim, S), prov dict, sigma (S,), truth TrueDay, whitebox table
    (S, S * I, E) / sigma on the clean-stimulus axis, NaN off each site's own images,
    trials (R, n_stim) trial id of each repeat)."""
    t = draw_truth(rng, n_sites, n_images, null, epsilons)
    n_eps = len(epsilons)
    S, Ii = n_sites, n_images
    n_clean = S * Ii
    base = t.mu.mean(axis=1)
    clean_mu = np.repeat(base[None], n_clean, axis=0)          # other sites: their mean rate (unused)
    for s in range(S):
        clean_mu[s * Ii:(s + 1) * Ii, s] = t.mu[s]
    rows_mu = [clean_mu]
    kind, parent, site, eidx, direction, pred = (["clean"] * n_clean, list(range(n_clean)), [-1] * n_clean,
                                                 [0] * n_clean, [0] * n_clean, [np.nan] * n_clean)

    def add(row_mu, k, par, st, e, dr, pr):
        rows_mu.append(row_mu[None])
        kind.append(k)
        parent.append(par)
        site.append(st)
        eidx.append(e)
        direction.append(dr)
        pred.append(pr)

    for s in range(S):
        for i in range(Ii):
            c = s * Ii + i
            for k in range(n_eps):
                for j, dr in enumerate((1, -1)):
                    m = clean_mu[c].copy()
                    m[s] += t.targeted[s, i, k, j]
                    add(m, "targeted", c, s, k, dr, float(dr))
                m = clean_mu[c].copy()
                m[s] += t.random[s, i, k]
                add(m, "random", c, s, k, 0, np.nan)
    mu = np.concatenate(rows_mu)                        # (n_stim, S)
    family = np.asarray(parent) if family_trials else None
    trials = _trial_schedule(rng, len(mu), n_repeats, per_trial, family)
    shape = 1.0 / gain_cv ** 2 if gain_cv > 0 else 0.0
    gain = (rng.gamma(shape, 1.0 / shape, size=(int(trials.max()) + 1, S)) if gain_cv > 0
            else np.ones((int(trials.max()) + 1, S)))
    repeats = rng.poisson(gain[trials] * mu[None]).astype(float)
    eps = np.asarray(epsilons, float)
    ei = np.asarray(eidx)
    k_arr = np.asarray(kind)
    prov = {"kind": k_arr, "parent": np.asarray(parent), "site": np.asarray(site),
            "epsilon_index": ei, "epsilon_requested": np.where(k_arr == "clean", 0.0, eps[ei]),
            "epsilon_shown": np.where(k_arr == "clean", 0.0, eps[ei]), "direction": np.asarray(direction),
            "predicted_change": np.asarray(pred), "epsilons": eps}
    whitebox = np.full((S, n_clean, n_eps), np.nan)
    for s in range(S):
        whitebox[s, s * Ii:(s + 1) * Ii] = t.whitebox[s] / t.sigma[s]
    return repeats, prov, t.sigma, t, whitebox, trials


def day_pairs(prov, n_sites: int):
    sites = np.arange(n_sites)
    return perturbation_pairs(prov, "targeted", sites), perturbation_pairs(prov, "random", sites)
