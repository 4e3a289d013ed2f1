"""Per-site and population sensitivity to perturbations, with bootstrap CIs over images.

Formulas (DESIGN section 1), for site i, clean image x, perturbation delta of size e:

- absolute estimator: ``s_i(x,e) = |r_i(x+delta) - r_i(x)|`` (biased up by noise)
- bias-corrected estimator: ``sign(predicted_change) * (r_i(x+delta) - r_i(x))``, the sign
  predicted by the model that designed delta (a lower bound; unbiased when signs are right)
- ``s_i(e)`` = mean over clean images x; normalised ``s_i(e) / sigma_i`` with ``sigma_i`` the
  s.d. of ``r_i`` over clean images; population curve = mean over sites.

Responses are mean spike counts per stimulus in the 70-170 ms window, ``(n_stimuli,
n_channels)``, rows in stimulus-set order, NaN where a stimulus was not measured. Model
predictions of the same shape can be passed instead, giving the curve on model units.

Unit of analysis: the clean image. Stimuli of one parent at one epsilon (e.g. the +1 and -1
directions) are averaged into one value; ``sigma_i`` is held fixed. Intervals: a site's band is
a BCa interval over that site's images (the same images for every epsilon; NaN with fewer than
3 images); the population band is the two-level interval of ``analysis.inference`` (sites AND
images random: :func:`analysis.inference.two_level_estimate`, as for the headline).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    Estimate,
    all_equal,
    bca_mean_interval,
    bca_pearson_by_cluster,
    check_n_boot,
)
from analysis.inference import two_level_estimate
from analysis.provenance import Pairs, check_responses, perturbation_pairs, provenance_columns

ESTIMATORS = ("abs", "signed")


@dataclass(frozen=True)
class ImageTable:
    """Per-image values of one estimator, grouped by site and epsilon.

    ``values``: (n_sites, n_images_max, n_eps), spikes, NaN-padded; row j of site k is clean
    image ``parents[k, j]`` (stimulus index, -1 = padding). ``n_images``: (n_sites,) rows used.
    ``epsilon_index``: (n_eps,) rows of the planned grid present among the pairs, ascending;
    ``epsilons``: (n_eps,) their requested L2 norms; ``epsilon_shown``: (n_sites, n_eps) mean shown.
    """

    values: np.ndarray
    parents: np.ndarray
    n_images: np.ndarray
    sites: np.ndarray
    epsilons: np.ndarray
    epsilon_shown: np.ndarray
    epsilon_index: np.ndarray


@dataclass(frozen=True)
class SensitivityCurve:
    """Sensitivity versus epsilon per site and for the population, with CIs.

    Shapes: ``epsilons`` (n_eps,) requested L2 norm (pixels in [0,1]), the planned grid's
    values at rows ``epsilon_index`` (n_eps,); ``epsilon_shown``
    (n_eps,) mean displayed norm; ``sites`` (n_sites,) channel indices; ``site_mean``,
    ``site_lo``, ``site_hi`` (BCa over the site's images), ``n_images`` (n_sites, n_eps);
    ``population``, ``population_lo``, ``population_hi`` (n_eps,; two-level: sites and images
    random); ``sigma`` (n_sites,) spikes.
    Unit: multiples of sigma_i if ``normalised`` else spikes per window.
    ``estimator``: "abs" or "signed" (bias-corrected); ``kind``: "targeted" or "random".
    """

    epsilons: np.ndarray
    epsilon_shown: np.ndarray
    sites: np.ndarray
    site_mean: np.ndarray
    site_lo: np.ndarray
    site_hi: np.ndarray
    n_images: np.ndarray
    population: np.ndarray
    population_lo: np.ndarray
    population_hi: np.ndarray
    sigma: np.ndarray
    normalised: bool
    estimator: str
    kind: str
    level: float
    epsilon_index: np.ndarray

    @property
    def unit(self) -> str:
        return "multiples of the site's clean-image s.d." if self.normalised else "spikes per window"

    def population_estimate(self, epsilon: float) -> Estimate:
        """Population value at one requested epsilon (a value of the planned grid), with its CI."""
        k = self.column(epsilon)
        return Estimate(float(self.population[k]), float(self.population_lo[k]), float(self.population_hi[k]),
                        self.level, int(self.n_images[:, k].sum()))

    def column(self, epsilon: float) -> int:
        """The column of ``epsilon``: an exact value of :attr:`epsilons` (the stored grid labels)."""
        hit = np.flatnonzero(self.epsilons == epsilon)
        if hit.size == 0:
            raise ValueError(f"epsilon {epsilon} not in this curve; available: {self.epsilons.tolist()}")
        return int(hit[0])


def clean_sigma(responses: np.ndarray, prov, sites: np.ndarray | None = None) -> np.ndarray:
    """S.d. (ddof=1) of each site's response over the clean images, (n_sites,) spikes.

    ``sites`` default: all channels. NaN rows (unmeasured stimuli) are ignored.
    """
    kind = provenance_columns(prov, ("kind",))["kind"]
    r = check_responses(responses, len(kind))
    sites = np.arange(r.shape[1]) if sites is None else np.asarray(sites, dtype=np.int64)
    clean = r[kind == "clean"][:, sites]
    n_ok = np.isfinite(clean).sum(axis=0)
    if np.any(n_ok < 2):
        bad = sites[n_ok < 2].tolist()
        raise ValueError(f"sites {bad} have fewer than 2 measured clean images, so their s.d. is undefined; "
                         "measure more clean images or pass sigma= explicitly")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(clean, axis=0, ddof=1)


def pair_values(responses: np.ndarray, pairs: Pairs, estimator: str) -> np.ndarray:
    """Per-pair estimator value, (n_pairs,) spikes: |change| or sign(predicted) * change."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    change = pairs.change(responses)
    if estimator == "abs":
        return np.abs(change)
    sign = np.sign(pairs.predicted_change)
    if len(pairs) and (np.any(~np.isfinite(sign)) or np.any(sign == 0)):
        raise ValueError("the bias-corrected ('signed') estimator needs a nonzero predicted_change for every "
                         "stimulus; model-free controls have none: use estimator='abs' for them")
    return sign * change


def image_table(values: np.ndarray, pairs: Pairs, sites: np.ndarray) -> ImageTable:
    """Average per-pair ``values`` (n_pairs,) over stimuli sharing (site, parent, epsilon)."""
    sites = np.asarray(sites, dtype=np.int64)
    used = np.unique(pairs.epsilon_index)  # planned-grid rows present, ascending
    eps_idx = np.searchsorted(used, pairs.epsilon_index)
    epsilons = pairs.epsilons[used]
    n_eps = len(used)
    per_site_parents = [np.unique(pairs.parent[pairs.site == s]) for s in sites]
    n_images = np.array([len(p) for p in per_site_parents], dtype=np.int64)
    n_max = int(n_images.max()) if len(sites) else 0
    sums = np.zeros((len(sites), n_max, n_eps))
    counts = np.zeros((len(sites), n_max, n_eps))
    shown_sum = np.zeros((len(sites), n_eps))
    shown_n = np.zeros((len(sites), n_eps))
    parents = np.full((len(sites), n_max), -1, dtype=np.int64)
    ok = np.isfinite(values)
    for k, s in enumerate(sites):
        parents[k, :n_images[k]] = per_site_parents[k]
        m = (pairs.site == s) & ok
        row = np.searchsorted(per_site_parents[k], pairs.parent[m])
        np.add.at(sums[k], (row, eps_idx[m]), values[m])
        np.add.at(counts[k], (row, eps_idx[m]), 1.0)
        np.add.at(shown_sum[k], eps_idx[m], pairs.epsilon_shown[m])
        np.add.at(shown_n[k], eps_idx[m], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        shown = np.where(shown_n > 0, shown_sum / np.maximum(shown_n, 1), np.nan)
    return ImageTable(table, parents, n_images, sites, epsilons, shown, used)


def population_table(table: ImageTable, values: np.ndarray) -> tuple[np.ndarray, bool]:
    """``values`` (n_sites, n_images_max, n_eps), laid out as ``table``, as the table
    :func:`analysis.inference.two_level_estimate` resamples, and whether the design is nested.

    Nested (no clean image used by two sites, the loop's targeted design): the rows are each
    site's own images in slots, as they are. Crossed (e.g. random controls that count for every
    site): one column per distinct clean image, shared by the sites that used it.
    """
    used = table.parents[table.parents >= 0]
    images = np.unique(used)
    if len(images) == len(used):
        return values, True
    out = np.full((values.shape[0], len(images), values.shape[2]), np.nan)
    for k in range(values.shape[0]):
        n = int(table.n_images[k])
        out[k, np.searchsorted(images, table.parents[k, :n])] = values[k, :n]
    return out, False


def population_interval(table: ImageTable, values: np.ndarray, n_boot: int, level: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-level interval (sites and images random) of the population curve, (n_eps,) each:
    :func:`analysis.inference.two_level_estimate` (resamples held in bounded batches).

    A column whose finite values are all equal gets ``[value, value]`` (no resample changes it)."""
    pop, nested = population_table(table, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = np.nanmean(np.nanmean(pop, axis=1), axis=0)
        cells = pop.reshape(-1, pop.shape[2])
        flat = all_equal(cells, np.nanmax(cells, axis=0) - np.nanmin(cells, axis=0))
    est = two_level_estimate([pop], np.asarray, n_resamples=n_boot, level=level, seed=seed, nested=nested)
    lo, hi = np.array([e.lo for e in est.estimates]), np.array([e.hi for e in est.estimates])
    return np.where(flat, value, lo), np.where(flat, value, hi)


def curve_from_table(table: ImageTable, sigma: np.ndarray | None, n_boot: int, level: float, seed: int,
                     estimator: str, kind: str) -> SensitivityCurve:
    """Means over images per site, population mean over sites, and their intervals.

    Site bands: BCa over the site's images (:func:`analysis.bootstrap.bca_mean_interval`);
    population band: :func:`population_interval` (sites and images random)."""
    check_n_boot(n_boot)
    n_sites, _, n_eps = table.values.shape
    normalised = sigma is not None
    scale = np.ones(n_sites) if sigma is None else np.asarray(sigma, dtype=float)
    if scale.shape != (n_sites,):
        raise ValueError(f"sigma must have one entry per site, shape ({n_sites},); got {scale.shape}")
    if np.any(~np.isfinite(scale) | (scale <= 0)):
        bad = table.sites[~np.isfinite(scale) | (scale <= 0)].tolist()
        raise ValueError(f"sites {bad} have a clean-image s.d. of zero or NaN, so normalised sensitivity is "
                         "undefined; drop those sites or pass normalise=False")
    vals = table.values / scale[:, None, None]
    site_lo, site_hi = np.full((n_sites, n_eps), np.nan), np.full((n_sites, n_eps), np.nan)
    for k in range(n_sites):
        site_lo[k], site_hi[k] = bca_mean_interval(vals[k, :int(table.n_images[k])], 0, n_boot, level, seed + k)
    n_images = np.isfinite(vals).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        site_mean = np.nanmean(vals, axis=1)
        population = np.nanmean(site_mean, axis=0)
        shown = np.nanmean(table.epsilon_shown, axis=0)
    pop_lo, pop_hi = (population_interval(table, vals, n_boot, level, seed) if n_sites
                      else (np.full(n_eps, np.nan), np.full(n_eps, np.nan)))
    return SensitivityCurve(epsilons=table.epsilons, epsilon_shown=shown, sites=table.sites, site_mean=site_mean,
                            site_lo=site_lo, site_hi=site_hi, n_images=n_images, population=population,
                            population_lo=pop_lo, population_hi=pop_hi,
                            sigma=scale if normalised else np.full(n_sites, np.nan),
                            normalised=normalised, estimator=estimator, kind=kind, level=level,
                            epsilon_index=table.epsilon_index)


def sensitivity_curve(responses: np.ndarray, prov, *, estimator: str = "abs", kind: str = "targeted",
                      sites: np.ndarray | None = None, normalise: bool = True, sigma: np.ndarray | None = None,
                      n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> SensitivityCurve:
    """Sensitivity ``s_i(e)`` per site and for the population, with bootstrap CIs over images.

    responses: (n_stimuli, n_channels) mean spike counts (or model predictions, for the
        curve on model units), rows in the order of ``prov``.
    prov: StimulusSet or mapping with the provenance columns (see analysis.provenance).
    estimator: "abs" (|r(x+d) - r(x)|) or "signed" (bias-corrected, sign of predicted_change).
    kind: "targeted" (model-designed) or "random" (model-free control, same epsilons).
    sites: channels to analyse (default: those targeted in ``prov``).
    normalise: divide by sigma_i; ``sigma`` (n_sites,) spikes overrides the s.d. over the
        clean images of ``prov`` (e.g. pass the screening day's).
    """
    c = provenance_columns(prov)
    r = check_responses(responses, len(c["kind"]))
    pairs = perturbation_pairs(prov, kind=kind, sites=sites)
    use_sites = np.unique(pairs.site) if sites is None else np.unique(np.asarray(sites, dtype=np.int64))
    if len(pairs) == 0:
        raise ValueError(f"no {kind} stimuli with a clean parent for sites {use_sites.tolist()}; "
                         "check the stimulus set's kind/parent/site columns")
    if np.any(use_sites >= r.shape[1]):
        raise ValueError(f"sites {use_sites[use_sites >= r.shape[1]].tolist()} exceed the {r.shape[1]} "
                         "response channels")
    table = image_table(pair_values(r, pairs, estimator), pairs, use_sites)
    if normalise and sigma is None:
        sigma = clean_sigma(r, prov, use_sites)
    return curve_from_table(table, sigma if normalise else None, n_boot, level, seed, estimator, kind)


def model_unit_curve(predictions: np.ndarray, prov, *, sites: np.ndarray | None = None, normalise: bool = True,
                     n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> SensitivityCurve:
    """The sensitivity curve on model units, for plotting next to IT.

    predictions: (n_stimuli, n_channels) a model's predicted spike counts f_i for every
    stimulus of ``prov`` (clean and perturbed), e.g. the designing readout, or a standard
    vs an adversarially trained network's readout. Same estimator (|f_i(x+d) - f_i(x)|),
    images and normalisation (by the s.d. of f_i over clean images) as the IT curve.
    """
    return sensitivity_curve(predictions, prov, estimator="abs", kind="targeted", sites=sites, normalise=normalise,
                             n_boot=n_boot, level=level, seed=seed)


@dataclass(frozen=True)
class PredictedVsMeasured:
    """Model-predicted vs measured change per perturbed stimulus; arrays (n_pairs,), spikes.

    ``epsilon_index``: row of the planned grid ``epsilons`` (n_eps,); ``epsilon``: its value.
    ``r``: Pearson correlation over stimuli with a BCa interval resampling clean images (the
    parents: see :func:`predicted_vs_measured`); ``r_by_epsilon``: the same per requested
    epsilon (keys: grid values). The ``n`` of each is its number of clean images.
    """

    predicted: np.ndarray
    measured: np.ndarray
    site: np.ndarray
    epsilon: np.ndarray
    stimulus: np.ndarray
    r: Estimate
    r_by_epsilon: dict[float, Estimate]
    epsilon_index: np.ndarray
    epsilons: np.ndarray


def predicted_vs_measured(responses: np.ndarray, prov, *, sites: np.ndarray | None = None,
                          n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
                          seed: int = 0) -> PredictedVsMeasured:
    """Predicted (``predicted_change``) vs measured ``r_i(x+d) - r_i(x)`` per targeted stimulus.

    responses: (n_stimuli, n_channels) mean spike counts. Stimuli whose response or
    prediction is missing are dropped.

    Interval: BCa resampling the clean PARENT images, not the stimuli. The points are not
    independent: every measured change ``r(x+d) - r(x)`` of one parent (both directions, every
    epsilon, and every site that used the image) subtracts the same measured ``r(x)``, so they
    share its noise and its image effect; treating them as independent pairs would make the
    interval too narrow. The parents are the independent unit of the design.
    """
    check_n_boot(n_boot)
    c = provenance_columns(prov)
    r = check_responses(responses, len(c["kind"]))
    pairs = perturbation_pairs(prov, kind="targeted", sites=sites)
    measured = pairs.change(r)
    ok = np.isfinite(measured) & np.isfinite(pairs.predicted_change)
    pred, meas = pairs.predicted_change[ok], measured[ok]
    parent = pairs.parent[ok]
    by_eps = {}
    index = pairs.epsilon_index[ok]
    for g in np.unique(index):
        m = index == g
        by_eps[float(pairs.epsilons[g])] = bca_pearson_by_cluster(pred[m], meas[m], parent[m], n_boot, level,
                                                                  seed + 1 + int(g))
    return PredictedVsMeasured(pred, meas, pairs.site[ok], pairs.epsilon[ok], pairs.stimulus[ok],
                               bca_pearson_by_cluster(pred, meas, parent, n_boot, level, seed), by_eps, index,
                               pairs.epsilons)
