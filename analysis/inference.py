"""Population inference a reviewer accepts: floor-corrected magnitudes, two-level intervals,
permutation tests, Holm correction, minimum detectable effects.

Floor-corrected magnitude. A measured change ``d = mean(r(x')) - mean(r(x))`` over m' and m
repeats has ``E[d^2] = D^2 + var(r(x'))/m' + var(r(x))/m``: |d| and d^2 carry the noise
floor. Two independent halves A and B of the repeats give ``E[d_A d_B] = D^2`` (the noise of
A and B is independent); averaged over every split of the repeats this cross-product
becomes, in closed form, ``d^2 - s'^2/m' - s^2/m`` (s^2: the unbiased variance of the
repeats), an unbiased estimate of D^2 for any noise distribution with independent repeats.
Its mean over images and sites estimates the mean squared true change; the reported
magnitude is its signed square root (an RMS change, in multiples of sigma), beside the raw
mean |d|.

Population claims treat sites and images as random. Tables are (n_sites, n_images, n_eps),
NaN where a site has no value for an image; a statistic is a function of population means
(the mean over sites of each site's mean over images). Its interval is a variance-corrected
two-level bootstrap (:func:`two_level_estimate`): the SHAPE comes from a BCa interval of the
pigeonhole bootstrap (sites and images resampled independently, ``scipy.stats.bootstrap``),
the WIDTH from an unbiased random-effects (moment) estimate of the statistic's variance with
a t quantile. The pigeonhole bootstrap alone counts the cell (site x image) variance three
times (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1:386) and uses normal
quantiles with plug-in variances, so it is too wide where cell noise dominates and too
narrow with few sites. When every image belongs to one site (the loop's design), the image
axis holds each site's own images in slots (:func:`site_slots`) and the design is "nested".

In the nested design a population MEAN (the floor-corrected mean squares, the raw |d|) is the
mean of i.i.d. site means, whose distribution over sites is right-skewed (a few sites move
a lot): its interval is Hall's skewness-corrected t interval over the site means
(:func:`skew_corrected_mean_interval`, :func:`nested_mean_estimate`), which keeps the t
interval's small-sample width and moves the limits up where the site means are skewed.
The fraction of the truth (a ratio of two population means) gets Fieller's interval over
the site means (:func:`fieller_interval`); other nonlinear statistics keep the
variance-corrected two-level bootstrap.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from scipy import stats

from analysis.bootstrap import DEFAULT_LEVEL, Estimate, bca_limits

DEFAULT_RESAMPLES = 1999
ALPHA = 0.05
POWER = 0.8
BATCH_ELEMENTS = 4_000_000  # resampled table cells held in memory at once


def signed_sqrt(x):
    """``sign(x) * sqrt(|x|)``: maps a mean square (sigma^2) to an RMS magnitude (sigma), monotone."""
    x = np.asarray(x, dtype=float)
    return np.sign(x) * np.sqrt(np.abs(x))


def floor_corrected_square(pert: np.ndarray, clean: np.ndarray, pert_trials: np.ndarray | None = None,
                           clean_trials: np.ndarray | None = None) -> np.ndarray:
    """Unbiased estimate of the squared true change, per column, from per-repeat responses.

    pert, clean: (n_repeats, n) spike counts of the perturbed stimulus and its clean parent,
    NaN for a missing repeat. Returns (n,) spikes^2; NaN where either has < 2 repeats.
    Without trial ids: ``d^2 - s'^2/m' - s^2/m`` (the mean over all splits of the split-half
    cross-product ``d_A d_B``), unbiased when every presentation's noise is independent.
    With ``pert_trials``, ``clean_trials`` ((n_repeats, n) trial ids of those repeats): the
    U-statistic ``mean_{j!=j'} p_j p_j' - 2 mean_{trial(j)!=trial(k)} p_j c_k +
    mean_{k!=k'} c_k c_k'``, unbiased when noise is independent between TRIALS (a trial's
    images may share a gain: the cross term skips perturbed/parent pairs shown in one trial,
    whose covariance would otherwise be subtracted as if it were noise). Identical to the
    first form when no parent shares a trial with its perturbed image.
    """
    p, c = np.asarray(pert, float), np.asarray(clean, float)
    moments = []
    for r in (p, c):
        m = np.isfinite(r).sum(axis=0)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(r, axis=0)
            var = np.nanvar(r, axis=0, ddof=1)
        moments.append((np.where(m >= 2, mean, np.nan), np.where(m >= 2, var / np.maximum(m, 1), np.nan)))
    (mp, vp), (mc, vc) = moments
    if pert_trials is None or clean_trials is None:
        return (mp - mc) ** 2 - vp - vc
    ok_p, ok_c = np.isfinite(p), np.isfinite(c)
    same = ((np.asarray(pert_trials)[:, None, :] == np.asarray(clean_trials)[None, :, :])
            & ok_p[:, None, :] & ok_c[None, :, :])                       # (R, R', n)
    prod = np.where(ok_p, p, 0.0)[:, None, :] * np.where(ok_c, c, 0.0)[None, :, :]
    n_pairs = ok_p.sum(0) * ok_c.sum(0) - same.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = np.where(n_pairs > 0, ((prod.sum(axis=(0, 1)) - (prod * same).sum(axis=(0, 1)))
                                       / np.maximum(n_pairs, 1)), np.nan)
    return mp ** 2 - vp + mc ** 2 - vc - 2 * cross


def floor_corrected_square_noise_variance(pert: np.ndarray, clean: np.ndarray,
                                          true_square: np.ndarray | float | None = None) -> np.ndarray:
    """Measurement-noise variance of :func:`floor_corrected_square` per column, spikes^4.

    Normal theory for d = mean(pert) - mean(clean) ~ N(D, V) and the variance estimates
    s'^2, s^2 on m' - 1, m - 1 df: Var = 4 D^2 V + 2 V^2 + W, V = s'^2/m' + s^2/m,
    W = Var(V_hat) = 2 (s'^2/m')^2/(m'-1) + 2 (s^2/m)^2/(m-1). Estimated as
    ``4 D^2 V_hat + 2 V_hat^2 - W_hat`` (E[2 V_hat^2] = 2 V^2 + 2 W). ``true_square``: the D^2
    to use (spikes^2; e.g. a population mean square, clipped at 0 — one cell's own square is
    too noisy), default each column's floor-corrected square clipped at 0 (biased upward).
    The part of a population mean's variance that repeats alone create: a floor for it.
    """
    vs, ws = [], []
    for r in (np.asarray(pert, float), np.asarray(clean, float)):
        m = np.isfinite(r).sum(axis=0)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            v = np.where(m >= 2, np.nanvar(r, axis=0, ddof=1) / np.maximum(m, 1), np.nan)
        vs.append(v)
        ws.append(2 * v ** 2 / np.maximum(m - 1, 1))
    v, w = vs[0] + vs[1], ws[0] + ws[1]
    d2 = np.maximum(floor_corrected_square(pert, clean) if true_square is None else true_square, 0.0)
    return np.maximum(4 * d2 * v + 2 * v ** 2 - w, 0.0)


def split_half_products(pert: np.ndarray, clean: np.ndarray, rng: np.random.Generator,
                        pert_trials: np.ndarray | None = None, clean_trials: np.ndarray | None = None) -> np.ndarray:
    """One random split-half cross-product ``d_A * d_B`` per column, spikes^2 (NaN with < 2 repeats).

    Each stimulus's valid repeats are split at random into halves A and B (sizes differing by
    at most one). Under "no effect" (x' and x evoke the same rate, repeats independent),
    swapping x' and x within half A flips the sign of d_A, so the product is symmetric about
    zero: the basis of :func:`above_floor_test`. With trial ids ((n_repeats, n), as in
    :func:`floor_corrected_square`), whole trials go to A or B (a coin per trial), so A and B
    stay independent when a trial's images share a gain; NaN where a half is empty.
    """
    if pert_trials is not None and clean_trials is not None:
        pt, ct = np.asarray(pert_trials), np.asarray(clean_trials)
        ids = np.unique(np.concatenate([pt.ravel(), ct.ravel()]))
        coin = rng.random(len(ids)) < 0.5
        halves = []
        for r, tr in ((np.asarray(pert, float), pt), (np.asarray(clean, float), ct)):
            valid = np.isfinite(r)
            in_a = valid & coin[np.searchsorted(ids, tr)]
            in_b = valid & ~in_a
            x = np.where(valid, r, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                halves.append(((x * in_a).sum(0) / in_a.sum(0), (x * in_b).sum(0) / in_b.sum(0)))
        (pa, pb), (ca, cb) = halves
        return (pa - ca) * (pb - cb)
    halves = []
    for r in (np.asarray(pert, float), np.asarray(clean, float)):
        valid = np.isfinite(r)
        keys = np.where(valid, rng.random(r.shape), np.inf)
        rank = np.argsort(np.argsort(keys, axis=0), axis=0)
        m = valid.sum(axis=0)
        n1 = m // 2
        in_a = valid & (rank < n1[None])
        in_b = valid & ~in_a
        x = np.where(valid, r, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(m >= 2, (x * in_a).sum(0) / n1, np.nan)
            b = np.where(m >= 2, (x * in_b).sum(0) / (m - n1), np.nan)
        halves.append((a, b))
    (pa, pb), (ca, cb) = halves
    return (pa - ca) * (pb - cb)


def site_image_table(values: np.ndarray, site: np.ndarray, image: np.ndarray, eps_index: np.ndarray,
                     sites: np.ndarray, n_eps: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` (n,) into a (n_sites, n_images, n_eps) table, NaN where empty.

    ``image``: any id per value (e.g. the clean parent's row); images are the union over sites,
    so the image axis is shared by every site (crossed design). Returns (table, image ids).
    """
    sites = np.asarray(sites, dtype=np.int64)
    if np.any(np.diff(sites) <= 0):
        raise ValueError(f"sites must be strictly ascending (rows follow them); got {sites.tolist()}")
    ok = np.isfinite(values) & np.isin(site, sites)
    images = np.unique(np.asarray(image)[ok])
    si = np.searchsorted(sites, np.asarray(site)[ok])
    ii = np.searchsorted(images, np.asarray(image)[ok])
    ei = np.asarray(eps_index)[ok]
    sums = np.zeros((len(sites), len(images), n_eps))
    counts = np.zeros_like(sums)
    np.add.at(sums, (si, ii, ei), np.asarray(values)[ok])
    np.add.at(counts, (si, ii, ei), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), images


def site_slots(tables: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Tables of a nested design (each image used by one site only) as (n_sites, slots, n_eps):
    slot j of a site is its j-th image, so resampling slots resamples every site's own images.

    tables: (n_sites, n_images, n_eps) sharing axes; an image is used by a site if any table
    has a finite value there. Crossed designs (an image shared by sites) are returned as is.
    """
    used = np.zeros(tables[0].shape[:2], bool)
    for t in tables:
        used |= np.isfinite(t).any(axis=2)
    if np.any(used.sum(axis=0) > 1) or not used.any():
        return list(tables)
    n_slots = int(used.sum(axis=1).max())
    out = []
    for t in tables:
        slotted = np.full((t.shape[0], n_slots, t.shape[2]), np.nan)
        for k in range(t.shape[0]):
            cols = np.flatnonzero(used[k])
            slotted[k, :len(cols)] = t[k, cols]
        out.append(slotted)
    return out


def population_mean(table: np.ndarray, s_idx=None, i_idx=None) -> np.ndarray:
    """Mean over sites of each site's mean over images, (..., n_eps); optional index resamples.

    s_idx: (..., n_sites') site rows, i_idx: (..., n_images') image columns (same leading shape).
    """
    t = table
    if s_idx is not None:
        s = np.asarray(s_idx, dtype=np.int64)
        i = np.asarray(i_idx, dtype=np.int64)
        t = table[s[..., :, None], i[..., None, :]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(t, axis=-2), axis=-2)


@dataclass(frozen=True)
class PopulationEstimate:
    """A population statistic per epsilon with two-level intervals (:func:`two_level_estimate`).

    ``estimates``: one :class:`Estimate` per column (epsilon); ``n`` of each = sites x images.
    ``n_sites``, ``n_images``: the resampled units.
    """

    estimates: list[Estimate]
    n_sites: int
    n_images: int


MIN_UNITS = 3   # fewer sites (or images) than this: that level is held fixed, not resampled


def _bca(statistic: Callable, n_sites: int, n_images: int, n_resamples: int, level: float, seed: int,
         cells: int) -> tuple[float, float]:
    """BCa interval of ``statistic(site_idx, image_idx)`` resampling sites and images independently.

    A level with fewer than :data:`MIN_UNITS` units is held fixed (all of its units in every
    resample); with both below, there is no interval (NaN)."""
    sites, images = np.arange(n_sites, dtype=float), np.arange(n_images, dtype=float)
    free_s, free_i = n_sites >= MIN_UNITS, n_images >= MIN_UNITS
    if not (free_s or free_i):
        return float("nan"), float("nan")
    data: tuple[np.ndarray, ...]
    if free_s and free_i:
        data, stat = (sites, images), statistic
    else:
        fixed = images if free_s else sites

        def stat(x, axis=-1):
            x = np.asarray(x)
            held = np.broadcast_to(fixed, x.shape[:-1] + fixed.shape)
            return statistic(x, held) if free_s else statistic(held, x)
        data = (sites if free_s else images,)
    lo, hi = bca_limits(data, stat, n_resamples, level, seed, cells=cells, max_elements=BATCH_ELEMENTS)
    return float(lo), float(hi)


def _gradient(combine: Callable[..., np.ndarray], means: list[float]) -> np.ndarray:
    """Central-difference gradient of a scalar ``combine(*means)`` (each mean shaped (1,))."""
    g = np.zeros(len(means))
    for j, m in enumerate(means):
        h = 1e-6 * max(1.0, abs(m))
        up = [np.array([x + (h if i == j else 0.0)]) for i, x in enumerate(means)]
        dn = [np.array([x - (h if i == j else 0.0)]) for i, x in enumerate(means)]
        g[j] = (float(np.asarray(combine(*up))[0]) - float(np.asarray(combine(*dn))[0])) / (2 * h)
    return g


def random_effects_variance(z: np.ndarray, nested: bool) -> tuple[float, float]:
    """Unbiased moment estimate of Var(population mean of ``z``) with random sites and images,
    and its degrees of freedom. z: (n_sites, n_images) values, NaN = missing.

    Assumes z_si = mu + a_s + b_i + e_si with independent zero-mean site, image and cell
    effects. Nested (each image seen by one site; the image axis holds slots): the site means
    are i.i.d., Var = s^2(site means) / S on S - 1 df. Crossed (images shared by sites):
    two-way ANOVA mean squares give Var = (MS_sites + MS_images - MS_cells) / (S I) (each cell
    counted once), floored at max(MS_sites, MS_images) / (S I) (each unbiased for a part of
    the variance), Satterthwaite df. A level with < :data:`MIN_UNITS` units is held fixed
    (conditional on those sites or images): only the other level's variance counts.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        site_means = np.nanmean(z, axis=1)
        ok = np.isfinite(site_means)
        S = int(ok.sum())
        n_per_site = np.isfinite(z[ok]).sum(axis=1)
        if nested or z.shape[1] < MIN_UNITS:
            if S >= MIN_UNITS:
                return float(np.var(site_means[ok], ddof=1) / S), float(S - 1)
            # sites held fixed: the images within each site are the sample (stratified mean)
            within = np.array([np.nanvar(r, ddof=1) / n if n >= 2 else np.nan for r, n in zip(z[ok], n_per_site)])
            return float(np.nansum(within) / max(S, 1) ** 2), float(np.sum(np.maximum(n_per_site - 1, 0)))
        img_means = np.nanmean(z[ok], axis=0)
        keep = np.isfinite(img_means)
        zz = z[ok][:, keep]
        S, I = zz.shape
        grand = np.nanmean(zz)
        r, c = np.nanmean(zz, axis=1), np.nanmean(zz, axis=0)
        ms_r = I * np.sum((r - r.mean()) ** 2) / max(S - 1, 1)
        ms_c = S * np.sum((c - c.mean()) ** 2) / max(I - 1, 1)
        resid = zz - r[:, None] - c[None, :] + grand
        ms_e = np.nansum(resid ** 2) / max((S - 1) * (I - 1), 1)
    if S < MIN_UNITS:
        return float(ms_c / (S * I)), float(I - 1)
    parts = np.array([ms_r, ms_c, -ms_e])
    dfs = np.array([S - 1, I - 1, (S - 1) * (I - 1)], float)
    total = parts.sum()
    if total < max(ms_r, ms_c):   # the subtraction went below a part that is unbiased for less
        return (float(ms_r / (S * I)), float(S - 1)) if ms_r >= ms_c else (float(ms_c / (S * I)), float(I - 1))
    return float(total / (S * I)), float(total ** 2 / np.sum(parts ** 2 / dfs))


def _pigeonhole_variance(z: np.ndarray, n_resamples: int, seed: int) -> float:
    """Variance of the population mean of ``z`` (n_sites, n_images) under the resampling
    :func:`_bca` does (sites and images independently; a level with < MIN_UNITS units fixed)."""
    S, I = z.shape
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, S, (n_resamples, S)) if S >= MIN_UNITS else np.broadcast_to(np.arange(S), (n_resamples, S))
    i_idx = rng.integers(0, I, (n_resamples, I)) if I >= MIN_UNITS else np.broadcast_to(np.arange(I), (n_resamples, I))
    batch = max(1, BATCH_ELEMENTS // max(S * I, 1))     # resampled cells held at once, as in _bca
    reps = np.concatenate([population_mean(z[:, :, None], s_idx[b:b + batch], i_idx[b:b + batch])[:, 0]
                           for b in range(0, n_resamples, batch)])
    return float(np.nanvar(reps, ddof=1))


def corrected_interval(value: float, lo: float, hi: float, z: np.ndarray, nested: bool, level: float,
                       seed: int, variance_floor: float = 0.0) -> tuple[float, float]:
    """Rescale a pigeonhole BCa interval ``[lo, hi]`` about ``value`` to the random-effects width.

    z: the statistic's linearisation per cell (gradient-weighted tables, (n_sites, n_images)).
    Each side's distance from the estimate is multiplied by
    ``sqrt(V_re / V_boot) * t_{df, (1+level)/2} / z_{(1+level)/2}``: V_re and df from
    :func:`random_effects_variance`, V_boot the variance the pigeonhole bootstrap gives the same
    linear statistic. The BCa shape (skew, the signed square root near 0) is kept; its scale
    becomes an unbiased variance with a small-sample t quantile. ``variance_floor``: a known
    part of the variance (e.g. the measurement noise's), used where V_re falls below it (with
    few sites V_re can by chance come out smaller than the noise alone). Unchanged if either
    variance is not positive and finite.
    """
    v_re, df = random_effects_variance(z, nested)
    if np.isfinite(variance_floor) and variance_floor > v_re:
        v_re = variance_floor
    v_boot = _pigeonhole_variance(z, 4000, seed)
    if not (np.isfinite(v_re) and np.isfinite(v_boot) and v_re > 0 and v_boot > 0 and df > 0):
        return lo, hi
    q = (1 + level) / 2
    c = np.sqrt(v_re / v_boot) * stats.t.ppf(q, df) / stats.norm.ppf(q)
    return value - c * (value - lo), value + c * (hi - value)


def noise_share(noise_variances: Sequence[np.ndarray], tables: Sequence[np.ndarray], grad: np.ndarray) -> float:
    """Variance of ``sum_j grad_j * population_mean(table_j)`` from independent cell noise alone.

    noise_variances, tables: (n_sites, n_images) per table; a cell's weight in the population
    mean is 1 / (n_sites * its site's number of cells)."""
    total = 0.0
    for nv, t, g in zip(noise_variances, tables, grad):
        ok = np.isfinite(t) & np.isfinite(nv)
        n_site = ok.sum(axis=1, keepdims=True)
        sites = int((n_site[:, 0] > 0).sum())
        if sites == 0:
            continue
        w = np.where(ok, 1.0 / (sites * np.maximum(n_site, 1)), 0.0)
        total += float(g ** 2 * np.sum(w ** 2 * np.where(ok, nv, 0.0)))
    return total


def two_level_estimate(tables: Sequence[np.ndarray], combine: Callable[..., np.ndarray], *,
                       n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                       seed: int = 0, nested: bool = False,
                       noise_variances: Sequence[np.ndarray] | None = None) -> PopulationEstimate:
    """``combine(*population means)`` per epsilon with a variance-corrected two-level interval.

    tables: (n_sites, n_images, n_eps) arrays on the same sites and images (paired: every
    resample draws the same sites and images from each table). ``combine`` maps the
    population means (..., n_eps) of each table to the statistic (..., n_eps), e.g.
    ``lambda t, r: signed_sqrt(t) - signed_sqrt(r)``; it must be smooth where the interval
    is built (its gradient linearises it). ``nested``: the image axis holds each site's own
    images (:func:`site_slots`), else images are shared by sites (crossed). ``noise_variances``:
    per table, each cell's measurement-noise variance (same shape; noise independent between
    cells and tables), whose share of the statistic's variance floors the random-effects one.

    Interval: the pigeonhole BCa interval (:func:`_bca`) rescaled by :func:`corrected_interval`
    to an unbiased random-effects variance and a t quantile. Assumes independent sites,
    independent images (within sites when nested), and independent noise between cells.
    """
    shape = tables[0].shape
    if any(t.shape != shape for t in tables):
        raise ValueError(f"tables must share (sites, images, eps); got {[t.shape for t in tables]}")
    n_sites, n_images, n_eps = shape
    value = np.asarray(combine(*(population_mean(t) for t in tables)), dtype=float)
    out = []
    for k in range(n_eps):
        cols = [t[:, :, k:k + 1] for t in tables]

        def statistic(s, i, axis=-1, cols=cols):
            return np.asarray(combine(*(population_mean(c, s, i) for c in cols)))[..., 0]

        lo, hi = (_bca(statistic, n_sites, n_images, n_resamples, level, seed + k, n_sites * n_images * len(cols))
                  if np.isfinite(value[k]) else (np.nan, np.nan))
        if np.isfinite(lo) and np.isfinite(hi):
            grad = _gradient(combine, [float(population_mean(c)[0]) for c in cols])
            if np.all(np.isfinite(grad)):
                z = sum(g * c[:, :, 0] for g, c in zip(grad, cols))
                floor = (0.0 if noise_variances is None else
                         noise_share([nv[:, :, k] for nv in noise_variances], [c[:, :, 0] for c in cols], grad))
                lo, hi = corrected_interval(float(value[k]), lo, hi, z, nested, level, seed + k, floor)
        out.append(Estimate(float(value[k]), lo, hi, level, int(np.isfinite(tables[0][:, :, k]).sum())))
    return PopulationEstimate(out, n_sites, n_images)


def skew_corrected_mean_interval(values: np.ndarray, level: float = DEFAULT_LEVEL,
                                 variance_floor: float = 0.0) -> tuple[float, float]:
    """Interval for the mean of n i.i.d. values from a skewed population: Hall's (1992)
    skewness-removing transformation of the studentized mean, with Student-t quantiles.

    Hall, "On the removal of skewness by transformation", J. R. Stat. Soc. B 54:221. With
    T = (mean - mu) / s and the sample skewness g, ``G(T) = T + g T^2/3 + g^2 T^3/27 + g/(6n)``
    is monotone and sqrt(n) G(T) has no O(n^-1/2) skewness term, so
    ``mu in [mean - s G^-1(q/sqrt(n)), mean - s G^-1(-q/sqrt(n))]``. q is the t quantile on n - 1
    df, so with g = 0 this is the t interval. Right-skewed values (a few strongly affected
    sites) stretch the upper limit, which is where a t interval misses.

    values: (n,) finite values (e.g. site means); ``variance_floor``: a known lower bound on
    the variance of ONE value (e.g. its measurement noise), used where s^2 falls below it
    (the skewness is then taken relative to the larger spread). NaN with n < 3.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < MIN_UNITS:
        return float("nan"), float("nan")
    mean = float(x.mean())
    s = float(np.sqrt(max(np.var(x, ddof=1), variance_floor)))
    if not s > 0:
        return mean, mean
    k3 = n * float(np.sum((x - mean) ** 3)) / ((n - 1) * (n - 2))     # unbiased third cumulant
    g = k3 / s ** 3
    q = float(stats.t.ppf((1 + level) / 2, n - 1)) / np.sqrt(n)

    def inverse(y: float) -> float:
        if abs(g) < 1e-12:
            return y
        return float(3.0 / g * (np.cbrt(1.0 + g * (y - g / (6 * n))) - 1.0))

    return mean - s * inverse(q), mean - s * inverse(-q)


def nested_mean_estimate(table: np.ndarray, *, level: float = DEFAULT_LEVEL,
                         noise_variances: np.ndarray | None = None) -> list[Estimate] | None:
    """Population mean (mean over sites of each site's mean over its own images) per epsilon,
    with a skew-corrected interval over sites (:func:`skew_corrected_mean_interval`).

    table: (n_sites, slots, n_eps) in the nested design (:func:`site_slots`: each site its own
    images), so the site means are i.i.d. and carry all of the variance (images and noise
    within). ``noise_variances`` (same shape): each cell's measurement-noise variance; the
    variance of a site mean it implies floors s^2. Returns None with fewer than
    :data:`MIN_UNITS` sites (then sites cannot be resampled: use :func:`two_level_estimate`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        site_means = np.nanmean(table, axis=1)                      # (n_sites, n_eps)
    out = []
    for k in range(table.shape[2]):
        m = site_means[:, k]
        ok = np.isfinite(m)
        if ok.sum() < MIN_UNITS:
            return None
        floor = 0.0
        if noise_variances is not None:
            floor = noise_share([noise_variances[:, :, k]], [table[:, :, k]], np.ones(1)) * int(ok.sum())
        lo, hi = skew_corrected_mean_interval(m[ok], level, floor)
        out.append(Estimate(float(m[ok].mean()), lo, hi, level, int(np.isfinite(table[:, :, k]).sum())))
    return out


def fieller_interval(num: np.ndarray, den: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Fieller's interval for ``mean(num) / mean(den)`` from n paired i.i.d. units (e.g. site
    means), with the t quantile on n - 1 df: the ratios rho for which ``mean(num) - rho mean(den)``
    is not significantly nonzero. NaN when the set is unbounded (the denominator's mean is not
    significantly nonzero) or n < 3."""
    ok = np.isfinite(num) & np.isfinite(den)
    a, b = np.asarray(num, float)[ok], np.asarray(den, float)[ok]
    n = len(a)
    if n < MIN_UNITS:
        return float("nan"), float("nan")
    cov = np.cov(a, b) / n                               # covariance matrix of the two means
    q = float(stats.t.ppf((1 + level) / 2, n - 1)) ** 2
    ma, mb = float(a.mean()), float(b.mean())
    qa, qb, qc = mb ** 2 - q * cov[1, 1], -2 * (ma * mb - q * cov[0, 1]), ma ** 2 - q * cov[0, 0]
    disc = qb ** 2 - 4 * qa * qc
    if not (qa > 0 and disc >= 0):
        return float("nan"), float("nan")
    root = float(np.sqrt(disc))
    return (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)


def nested_ratio_estimate(num: np.ndarray, den: np.ndarray, level: float = DEFAULT_LEVEL) -> list[Estimate] | None:
    """Ratio of population means ``mean(num) / mean(den)`` per epsilon in the nested design
    (tables (n_sites, slots, n_eps), :func:`site_slots`), Fieller's interval over the site
    means (:func:`fieller_interval`). None with fewer than :data:`MIN_UNITS` sites."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a, b = np.nanmean(num, axis=1), np.nanmean(den, axis=1)        # (n_sites, n_eps)
    out = []
    for k in range(num.shape[2]):
        ok = np.isfinite(a[:, k]) & np.isfinite(b[:, k])
        if ok.sum() < MIN_UNITS:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float(a[ok, k].mean() / b[ok, k].mean())
        lo, hi = fieller_interval(a[ok, k], b[ok, k], level)
        out.append(Estimate(value, lo, hi, level, int(np.isfinite(num[:, :, k]).sum())))
    return out


def above_floor_test(products: np.ndarray, *, seed: int = 0, n_resamples: int = 9999,
                     nested: bool = False) -> np.ndarray:
    """One-sided p-value per epsilon that the true change is nonzero ("above the noise floor").

    products: (n_sites, n_images, n_eps) split-half cross-products d_A d_B / sigma^2. Under
    "no effect" each independent unit's product is symmetric about 0, so the test is a
    sign-flip permutation test (``scipy.stats.permutation_test``, permutation_type "samples",
    exact up to 2^13 units) of the mean product > 0. Units: images (each image's mean over
    sites) in a crossed design, where sites share an image's noise; every (site, image) cell
    when ``nested`` (each site its own images: cells are independent, and averaging the slots
    over sites would leave so few units that p could never fall below 0.05).
    """
    p = np.full(products.shape[2], np.nan)
    for k in range(products.shape[2]):
        if nested:
            x = products[:, :, k].ravel()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                x = np.nanmean(products[:, :, k], axis=0)
        x = x[np.isfinite(x)]
        if len(x) < 2:
            continue
        res = stats.permutation_test((x,), lambda a, axis=-1: np.mean(a, axis=axis), permutation_type="samples",
                                     alternative="greater", vectorized=True,
                                     n_resamples=np.inf if len(x) <= 13 else n_resamples,
                                     random_state=np.random.default_rng(seed + k))
        p[k] = float(res.pvalue)
    return p


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family: the given tests; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok])]
    m = len(order)
    running = 0.0
    for rank, j in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[j]))
        out[j] = running
    return out


def minimum_detectable_effect(standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true effect a two-sided level-``alpha`` test detects with probability ``power``:
    ``(z_{1-alpha/2} + z_power) * SE`` (normal approximation; units of the SE)."""
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * standard_error)


@dataclass(frozen=True)
class RatioReport:
    """A ratio printed only when its denominator is significantly above zero.

    ``estimate`` is None and ``reason`` says why when it is not estimable.
    """

    estimate: Estimate | None
    reason: str = ""

    def text(self, fmt: str = ".2f") -> str:
        if self.estimate is None:
            return f"not estimable: {self.reason}"
        e = self.estimate
        return f"{format(e.value, fmt)}x [{format(e.lo, fmt)}, {format(e.hi, fmt)}]"


FLOOR_REASON = "random at the noise floor"


def ratio_if_estimable(num: np.ndarray, den: np.ndarray, den_interval: Estimate, den_p_adjusted: float,
                       eps_column: int, *, n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                       seed: int = 0, alpha: float = ALPHA, nested: bool = False) -> RatioReport:
    """Ratio of two floor-corrected RMS magnitudes at one epsilon, only when the denominator is
    significantly above 0 (Holm-adjusted permutation p < alpha and its interval above 0).

    num, den: (n_sites, n_images, n_eps) floor-corrected squares / sigma^2. The interval is the
    two-level interval of the ratio (:func:`two_level_estimate`); it is withheld (not estimable) if it is not finite or
    does not contain its own estimate.
    """
    if not (np.isfinite(den_p_adjusted) and den_p_adjusted < alpha and den_interval.lo > 0):
        return RatioReport(None, FLOOR_REASON)

    def ratio(t, r):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(r > 0, signed_sqrt(t) / signed_sqrt(np.maximum(r, 0)), np.nan)

    k = eps_column
    est = two_level_estimate([num[:, :, k:k + 1], den[:, :, k:k + 1]], ratio, n_resamples=n_resamples,
                             level=level, seed=seed, nested=nested).estimates[0]
    if not (np.isfinite(est.lo) and np.isfinite(est.hi) and est.lo <= est.value <= est.hi):
        return RatioReport(None, "the ratio's interval is unstable (random close to the noise floor)")
    return RatioReport(est)


def rms_estimate(mean_square: Estimate) -> Estimate:
    """The RMS magnitude (signed square root) of a mean-square estimate, interval endpoints mapped
    through the same monotone function (so it covers exactly when the mean square's does)."""
    e = mean_square
    return Estimate(float(signed_sqrt(e.value)), float(signed_sqrt(e.lo)), float(signed_sqrt(e.hi)), e.level, e.n)


def site_image_correlation(a: np.ndarray, b: np.ndarray, nested: bool) -> float:
    """Correlation of the population means of two (n_sites, n_images) tables over random sites and
    images, from :func:`random_effects_variance` of a, b and a + b (clipped to [-1, 1]; 0 if undefined)."""
    va, _ = random_effects_variance(a, nested)
    vb, _ = random_effects_variance(b, nested)
    vab, _ = random_effects_variance(a + b, nested)
    if not (np.isfinite(va) and np.isfinite(vb) and np.isfinite(vab) and va > 0 and vb > 0):
        return 0.0
    return float(np.clip((vab - va - vb) / (2 * np.sqrt(va * vb)), -1.0, 1.0))


def mover_difference(a: Estimate, b: Estimate, rho: float) -> Estimate:
    """Interval of ``a - b`` from the two estimates' own (possibly asymmetric) intervals: the
    method of variance estimates recovery (MOVER; Zou & Donner 2008, Stat. Med. 27:1693, with
    the correlation ``rho`` of the two estimates, Zou 2008 Am. J. Epidemiol. 168:212).

    Each side takes the distance to the limit of a on that side and of b on the other:
    ``lo = d - sqrt(da_lo^2 + db_hi^2 - 2 rho da_lo db_hi)``, ``hi`` likewise. It keeps each
    interval's shape, e.g. the steep signed square root of a mean square near 0, which a
    linearisation of the difference does not.
    """
    d = a.value - b.value
    if not all(np.isfinite(x) for x in (a.lo, a.hi, b.lo, b.hi)):
        return Estimate(float(d), np.nan, np.nan, a.level, min(a.n, b.n))
    a_lo, a_hi, b_lo, b_hi = a.value - a.lo, a.hi - a.value, b.value - b.lo, b.hi - b.value
    lo = d - np.sqrt(max(a_lo ** 2 + b_hi ** 2 - 2 * rho * a_lo * b_hi, 0.0))
    hi = d + np.sqrt(max(a_hi ** 2 + b_lo ** 2 - 2 * rho * a_hi * b_lo, 0.0))
    return Estimate(float(d), float(lo), float(hi), a.level, min(a.n, b.n))


@dataclass(frozen=True)
class DayHeadline:
    """One day's headline quantities per epsilon (``epsilons``), every one with a two-level CI.

    Units: multiples of sigma (the site's clean-image s.d.) for magnitudes and differences.
    ``targeted_rms`` / ``random_rms``: floor-corrected RMS change (signed sqrt of the mean
    floor-corrected square); ``targeted_abs`` / ``random_abs``: raw mean |d| (noise-biased);
    ``difference``: targeted_rms - random_rms (interval: :func:`mover_difference`); ``random_p`` /
    ``random_p_holm``: sign-flip permutation p of "random above the noise floor" and its Holm
    adjustment across epsilons;
    ``ratio``: targeted_rms / random_rms where estimable. ``targeted_sq`` / ``random_sq``:
    (n_sites, n_images, n_eps) floor-corrected squares / sigma^2, on shared site/image axes
    (image slots per site when each image belongs to one site: :func:`site_slots`).
    """

    epsilons: np.ndarray
    sites: np.ndarray
    targeted_rms: list[Estimate]
    random_rms: list[Estimate]
    targeted_abs: list[Estimate]
    random_abs: list[Estimate]
    difference: list[Estimate]
    random_p: np.ndarray
    random_p_holm: np.ndarray
    ratio: list[RatioReport]
    targeted_sq: np.ndarray
    random_sq: np.ndarray
    n_sites: int
    n_images: int
    nested: bool = True    # each site its own images (the loop's design): skew-corrected / Fieller intervals


def pair_tables(repeats: np.ndarray, pairs, sites: np.ndarray, sigma: np.ndarray, images: np.ndarray,
                rng: np.random.Generator, trials: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-(site, image, eps) tables of one kind of pairs, divided by sigma (squares by sigma^2).

    Keys: "sq" floor-corrected squares, "sq_var" their noise variance (sigma^4; with the mean
    square of the pairs at that eps as D^2),
    "product" one split-half cross-product, "abs" |d|,
    "signed" sign(predicted) * d. ``images``: the shared image axis (clean parent rows).
    ``trials``: (n_repeats, n_stimuli) trial id of each repeat (optional; see
    :func:`floor_corrected_square`).
    """
    sites = np.asarray(sites, dtype=np.int64)
    if np.any(np.diff(sites) <= 0):
        raise ValueError(f"sites must be strictly ascending (sigma in the same order); got {sites.tolist()}")
    k = np.searchsorted(sites, pairs.site)
    s = np.asarray(sigma, float)[np.clip(k, 0, len(sites) - 1)]
    pert = repeats[:, pairs.stimulus, pairs.site]
    clean = repeats[:, pairs.parent, pairs.site]
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        d = np.nanmean(pert, axis=0) - np.nanmean(clean, axis=0)
    sign = np.sign(pairs.predicted_change)
    tp = tc = None
    if trials is not None:
        tp, tc = np.asarray(trials)[:, pairs.stimulus], np.asarray(trials)[:, pairs.parent]
    sq = floor_corrected_square(pert, clean, tp, tc)
    eps_i = np.asarray(pairs.epsilon_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_sq = {e: np.nanmean(sq[eps_i == e] / s[eps_i == e] ** 2) for e in np.unique(eps_i)}
    d2 = np.array([mean_sq[e] for e in eps_i]) * s ** 2   # the population's D^2 at each pair's eps, spikes^2
    values = {"sq": sq / s ** 2,
              "sq_var": floor_corrected_square_noise_variance(pert, clean, np.nan_to_num(d2)) / s ** 4,
              "product": split_half_products(pert, clean, rng, tp, tc) / s ** 2,
              "abs": np.abs(d) / s, "signed": np.where(sign != 0, sign * d / s, np.nan)}
    n_eps = len(pairs.epsilons)
    out = {}
    for name, v in values.items():
        v = np.where(np.isin(pairs.parent, images), v, np.nan)
        table, ids = site_image_table(v, pairs.site, pairs.parent, pairs.epsilon_index, sites, n_eps)
        full = np.full((len(sites), len(images), n_eps), np.nan)
        full[:, np.searchsorted(images, ids)] = table
        out[name] = full
    # a cell averages its pairs (e.g. both directions): the variance of that mean is at least
    # the mean variance / count when the pairs' noise is not negatively correlated
    ok = np.isfinite(values["sq"]) & np.isin(pairs.parent, images) & np.isin(pairs.site, sites)
    count = np.zeros_like(out["sq"])
    np.add.at(count, (np.searchsorted(sites, pairs.site[ok]), np.searchsorted(images, pairs.parent[ok]),
                      np.asarray(pairs.epsilon_index)[ok]), 1.0)
    out["sq_var"] = out["sq_var"] / np.where(count > 0, count, np.nan)
    return out


class _BootstrapKw(TypedDict):
    """The bootstrap settings every estimate of one day's headline shares."""
    n_resamples: int
    level: float
    seed: int
    nested: bool


def population_mean_estimate(table: np.ndarray, noise_variances: np.ndarray | None,
                             kw: _BootstrapKw) -> list[Estimate]:
    """A day's population mean per epsilon: skew-corrected over sites in the nested design
    (:func:`nested_mean_estimate`), else (crossed, or < 3 sites) :func:`two_level_estimate`."""
    if kw["nested"]:
        est = nested_mean_estimate(table, level=kw["level"], noise_variances=noise_variances)
        if est is not None:
            return est
    nv = None if noise_variances is None else [noise_variances]
    return two_level_estimate([table], np.asarray, noise_variances=nv, **kw).estimates


def day_headline(repeats: np.ndarray, targeted, random, sites: np.ndarray, sigma: np.ndarray, *,
                 n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0,
                 trials: np.ndarray | None = None) -> DayHeadline:
    """Headline statistics of one day from per-repeat responses and the targeted / random pairs.

    repeats: (n_repeats, n_stimuli, n_channels) spikes, NaN = missing; targeted, random:
    :class:`analysis.provenance.Pairs` (random may be None); sigma: (n_sites,) spikes; trials:
    (n_repeats, n_stimuli) trial id of each repeat (optional, same layout as ``repeats``).
    Only the grid epsilons present among the targeted pairs are reported (``epsilons``).
    """
    order = np.argsort(np.asarray(sites, dtype=np.int64), kind="stable")   # tables index sites by searchsorted
    sites, sigma = np.asarray(sites, dtype=np.int64)[order], np.asarray(sigma, float)[order]
    used = np.unique(targeted.epsilon_index)
    rng = np.random.default_rng(seed)
    parents = targeted.parent if random is None else np.concatenate([targeted.parent, random.parent])
    images = np.unique(parents)
    t = {k: v[:, :, used] for k, v in pair_tables(repeats, targeted, sites, sigma, images, rng, trials).items()}
    r = ({k: v[:, :, used] for k, v in pair_tables(repeats, random, sites, sigma, images, rng, trials).items()}
         if random is not None and len(random) else None)
    names = list(t)
    unslotted = [t[k] for k in names] + ([r[k] for k in names] if r is not None else [])
    slotted = site_slots(unslotted)
    nested = slotted[0] is not unslotted[0]
    t = dict(zip(names, slotted[:len(names)]))
    r = dict(zip(names, slotted[len(names):])) if r is not None else None
    kw: _BootstrapKw = {"n_resamples": n_resamples, "level": level, "seed": seed, "nested": nested}
    t_ms = population_mean_estimate(t["sq"], t["sq_var"], kw)
    t_rms = [rms_estimate(e) for e in t_ms]
    t_abs = population_mean_estimate(t["abs"], None, kw)
    nan_list = [Estimate(np.nan, np.nan, np.nan, level, 0)] * len(used)
    if r is None:
        r_rms = r_abs = diff = nan_list
        p = p_holm = np.full(len(used), np.nan)
        ratios = [RatioReport(None, "no random controls were shown")] * len(used)
    else:
        r_ms = population_mean_estimate(r["sq"], r["sq_var"], kw)
        r_rms = [rms_estimate(e) for e in r_ms]
        r_abs = population_mean_estimate(r["abs"], None, kw)
        rho = [site_image_correlation(t["sq"][:, :, k], r["sq"][:, :, k], nested) for k in range(len(used))]
        diff = [mover_difference(a, b, c) for a, b, c in zip(t_rms, r_rms, rho)]
        p = above_floor_test(r["product"], seed=seed, nested=nested)
        p_holm = holm(p)
        ratios = [ratio_if_estimable(t["sq"], r["sq"], r_rms[k], p_holm[k], k, **kw) for k in range(len(used))]
    return DayHeadline(targeted.epsilons[used], sites, t_rms, r_rms, t_abs, r_abs, diff, p, p_holm, ratios,
                       t["sq"], r["sq"] if r is not None else np.full_like(t["sq"], np.nan),
                       len(sites), len(images), nested)


def fraction_of_truth(measured: np.ndarray, truth: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> list[Estimate]:
    """Population mean of ``measured`` over population mean of ``truth`` per epsilon, with
    Fieller's interval over sites in the nested design (:func:`nested_ratio_estimate`), else
    (crossed designs, and where few sites leave Fieller's set unbounded) the two-level interval.

    measured, truth: (n_sites, n_images, n_eps) on the same axes (e.g. bias-corrected change
    and the white-box sensitivity of the same problem, both / sigma); cells missing in either
    are dropped from both.
    """
    both = np.isfinite(measured) & np.isfinite(truth)
    unslotted = [np.where(both, measured, np.nan), np.where(both, truth, np.nan)]
    m, t = site_slots(unslotted)
    nested = m is not unslotted[0]
    fieller = nested_ratio_estimate(m, t, level) if nested else None
    if fieller is not None and all(np.isfinite(e.lo) for e in fieller):
        return fieller

    def ratio(a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return a / b

    boot = two_level_estimate([m, t], ratio, n_resamples=n_resamples, level=level, seed=seed, nested=nested).estimates
    if fieller is None:
        return boot
    return [f if np.isfinite(f.lo) else b for f, b in zip(fieller, boot)]
