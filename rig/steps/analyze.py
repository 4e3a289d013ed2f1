"""Analyse a recorded closed-loop day: the paper's estimators, baselines and controls.

``day_results(cfg, folder, day)`` computes, from the day files alone (plus, in simulation,
the simulated monkey's ground truth):

- sensitivity vs epsilon of the targeted sites: absolute and bias-corrected estimators,
  normalised by each site's s.d. over the screening day's clean images;
- the model-free random-direction control at the same epsilons; floor-corrected magnitudes (the
  mean split-half cross-product), targeted - random with a two-level (sites, images random) CI, a permutation test
  of "random above the noise floor" (Holm across epsilons) and the ratio only where estimable;
- the random-image-pair baseline (screening day) and the split-half measurement-noise floor;
- the same curve on the designing model's own units; predicted vs measured change;
- in simulation: the white-box (true) sensitivity and the fraction of it the loop reached.

``analyze_day`` writes the numbers to ``day_DDD.analysis.json``; the report draws them.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from analysis import (
    clean_sigma,
    fraction_of_true,
    predicted_vs_measured,
    random_direction_control,
    random_pair_baseline,
    sensitivity_curve,
    split_half_noise_floor,
)
from analysis.baselines import SiteLevel
from analysis.inference import (
    DayHeadline,
    day_headline,
    fraction_of_truth,
    site_image_table,
)
from analysis.provenance import perturbation_pairs
from analysis.sensitivity import PredictedVsMeasured, SensitivityCurve, model_unit_curve
from modelfit.features import images_to_tensor
from modelfit.files import write_atomic
from modelfit.store import load_fitted
from rig.backends.factory import build_sim_monkey
from rig.config import Config
from rig.errors import UserError
from rig.paths import day_path
from rig.results.analysis_file import (
    analysis_identity,
    curve_json,
    est_json,
    headline_numbers,
    predictivity_numbers,
    pvm_json,
    site_level_json,
)
from rig.steps.dayoverday import day_over_day
from rig.store.reader import DayCache, DayData
from rig.truth.whitebox import TrueCountModule, cached_whitebox
from stimuli.params import TRANSFER_OFF
from stimuli.perturb import PerturbParams

log = logging.getLogger(__name__)

N_BOOT = 1000


@dataclass
class DayResults:
    day: int
    sites: np.ndarray
    sigma: np.ndarray
    targeted: SensitivityCurve              # |.| estimator, normalised by sigma
    signed: SensitivityCurve                # bias-corrected, normalised by sigma
    random: SensitivityCurve | None         # random-direction controls
    headline: DayHeadline                   # floor-corrected magnitudes, targeted - random, tests (two-level CIs)
    pairs: SiteLevel                        # random-pair baseline (screening day)
    noise: SiteLevel                        # split-half noise floor
    model_units: SensitivityCurve | None    # the designing model's own units
    pvm: PredictedVsMeasured                # predicted vs measured change per stimulus
    model_scores: dict[str, np.ndarray]     # cv_r, ceiling, noise_ceiled of the designing model
    random_init_model: bool
    truth: dict = field(default_factory=dict)   # simulation only
    data: DayData | None = None
    day_over_day: dict = field(default_factory=dict)        # paired change vs the first closed-loop day
    pvm_extra: dict = field(default_factory=dict)           # spearman, pearson through the site's rate nonlinearity
    sim_info: dict = field(default_factory=dict)            # simulation: model_alignment etc., printed with results

    def numbers(self) -> dict:
        """Headline numbers with CIs, JSON-ready."""
        def est(e):
            return {"value": _f(e.value), "lo": _f(e.lo), "hi": _f(e.hi), "n": int(e.n)}
        eps = [float(e) for e in self.targeted.epsilons]  # every per-epsilon list below is aligned with this

        def aligned(values: dict, conv=est) -> list:
            """One entry per epsilon of ``eps`` (None where ``values``, keyed by grid value, has none)."""
            return [conv(values[e]) if e in values else None for e in eps]

        def curve(c: SensitivityCurve) -> list:
            return aligned({float(e): c.population_estimate(e) for e in c.epsilons})

        out = {
            "day": self.day, "sites": self.sites.tolist(), "random_init_model": self.random_init_model,
            "epsilons": eps,
            "epsilon_shown": [float(e) for e in self.targeted.epsilon_shown],
            "targeted_abs": curve(self.targeted),
            "targeted_signed": curve(self.signed),
            "random_pairs": est(self.pairs.population), "noise_floor": est(self.noise.population),
            "predicted_vs_measured_r": est(self.pvm.r),
            "predicted_vs_measured_spearman": _f(self.pvm_extra.get("spearman", np.nan)),
            "predicted_vs_measured_r_through_rate_nonlinearity": _f(self.pvm_extra.get("pearson_nonlinear", np.nan)),
            "simulation": self.sim_info,
            "predictivity": predictivity_numbers(self.model_scores),
        }
        out.update(headline_numbers(self.headline, eps))
        if self.day_over_day:
            out["day_over_day"] = self.day_over_day
        if self.random is not None:
            out["random_abs"] = curve(self.random)
        if self.model_units is not None:
            out["model_units_abs"] = curve(self.model_units)
        out["figure_data"] = self.figure_data()
        if self.truth:
            t = self.truth
            out["truth"] = {
                "whitebox_spikes": aligned(dict(zip(map(float, t["epsilons"]), t["whitebox_population"])), _f),
                "fraction_true_achieved": aligned(t["fraction_true"]),
                "fraction_measured": aligned(t["fraction_measured"]),
                "saturation_share_within_5pct": aligned(t.get("saturation", {}), _f),
                "saturation_share_clean_images": _f(t.get("saturation", {}).get(0.0, np.nan)),
                "whitebox_budget": {"restarts": t["restarts"], "steps": t["steps"],
                                    "relative_change_on_doubling": _f(t["relative_change_on_doubling"]),
                                    "problems_converged": t.get("problems_converged"), "problems": t.get("problems"),
                                    "history": t["history"]},
            }
        return out


    def figure_data(self) -> dict:
        """What the report's figures draw (curves without bootstrap replicates), JSON-ready."""
        fd = {"targeted": curve_json(self.targeted), "signed": curve_json(self.signed), "random": curve_json(self.random),
              "model_units": curve_json(self.model_units), "pairs": site_level_json(self.pairs),
              "noise": site_level_json(self.noise), "pvm": pvm_json(self.pvm), "sigma": self.sigma.tolist(),
              "model_scores": {k: [_f(x) for x in np.ravel(v)] for k, v in self.model_scores.items()},
              "image_scaling": str(self.data.attrs.get("image_scaling", "smooth")) if self.data is not None else "smooth"}
        if self.truth:
            fd["whitebox_site_normalised"] = [[_f(x) for x in row] for row in self.truth["whitebox_site_normalised"]]
            fd["fraction_true"] = [[e, est_json(v)] for e, v in self.truth["fraction_true"].items()]
            fd["saturation"] = [[float(e), _f(v)] for e, v in self.truth.get("saturation", {}).items()]
        return fd


def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _responses(d: DayData) -> np.ndarray:
    return d.mean_responses().astype(float)


def day_results(cfg: Config, folder: str | Path, day: int, truth: bool | None = None,
                n_boot: int = N_BOOT, days: DayCache | None = None) -> DayResults:
    """Everything the report needs about closed-loop day ``day`` (see the module docstring);
    ``days``: the process's day cache (each day file is read once).

    ``cfg`` gives only where to compute (``model.device``); everything about the experiment
    (seeds, weights, the simulated monkey, the perturbation budget) comes from the
    configuration stored in the day file (``recorded``), the one the day was made with."""
    folder = Path(folder)
    days = days if days is not None else DayCache()
    path = day_path(folder, day)
    if day < 1:
        raise UserError("day 0 is the screening day: it has no perturbations to analyse; analyse days >= 1")
    if not path.exists():
        raise UserError(f"{path} does not exist; record it with `itloop day run --day {day} --out {folder}`")
    d = days.read(path)
    if not d.complete:
        raise UserError(f"{path} is not complete; finish it with `itloop day run --day {day} --out {folder} --resume`")
    d0 = days.read(day_path(folder, 0))
    if "units" in (d.attrs.get("sites_are"), d0.attrs.get("sites_are")) and list(d.channel_names) != list(d0.channel_names):
        raise UserError(f"day {day} and day 0 of {folder} have different sites (sorted units are matched by row): "
                        "import both with `itloop day units` from one sorting of the same units")
    recorded = replace(d.config, model=replace(d.config.model, device=cfg.model.device))
    resp = _responses(d)
    prov = d.stimuli
    sites = np.asarray(d.model.get("target_channels", np.unique(prov.site[prov.site >= 0])), np.int64)
    # ascending (the estimators' tables and sigma follow that order); on a units day (`itloop day units`)
    # the units standing for the targeted channels need not be, and -1 is a targeted channel with no unit
    sites = np.unique(sites[sites >= 0])
    resp0 = _responses(d0)
    sigma = clean_sigma(resp0, d0.stimuli, sites)
    seed = recorded.day_seed(day)
    kw: dict[str, Any] = {"sites": sites, "n_boot": n_boot, "seed": seed}
    targeted = sensitivity_curve(resp, prov, estimator="abs", sigma=sigma, **kw)
    signed = sensitivity_curve(resp, prov, estimator="signed", sigma=sigma, **kw)
    has_random = bool(np.any(prov.kind == "random"))
    random = random_direction_control(resp, prov, sigma=sigma, **kw) if has_random else None
    pairs = random_pair_baseline(resp0, d0.stimuli, sigma=sigma, **kw)
    noise = split_half_noise_floor(d.responses_by_repeat(), sites=sites, sigma=sigma, n_boot=n_boot, seed=seed)
    pvm = predicted_vs_measured(resp, prov, **kw)
    headline = day_headline(d.responses_by_repeat(), perturbation_pairs(prov, "targeted", sites),
                            perturbation_pairs(prov, "random", sites) if has_random else None, sites, sigma,
                            n_resamples=n_boot, seed=seed, trials=d.trials_by_repeat())

    model_units, scores, random_init = None, {}, bool(d.model.get("random_init", False))
    pvm_extra: dict = {}
    mfile = folder / str(d.model.get("model_file", ""))
    if d.model.get("model_file") and mfile.exists():
        fitted = load_fitted(mfile)
        scores = {k: np.asarray(v) for k, v in fitted.scores.items()}
        pred = _model_predictions(fitted, prov.pixels, np.asarray(d.model.get("site_channels", fitted.site_channels)),
                                  d.n_channels, recorded)
        model_units = model_unit_curve(pred, prov, **kw)
        pvm_extra["pearson_nonlinear"] = _pearson_through_rate_nonlinearity(pred, resp, prov, sites)
    from analysis.stats import spearman

    pvm_extra["spearman"] = spearman(pvm.predicted, pvm.measured)
    res = DayResults(day, sites, sigma, targeted, signed, random, headline, pairs, noise, model_units, pvm, scores,
                     random_init, data=d, pvm_extra=pvm_extra)
    is_sim = d.origin.simulated   # sim, presenter+sim, or a replay of either
    if is_sim:
        res.sim_info = {k: getattr(recorded.sim, k) for k in ("model_alignment", "linear_fraction", "input_px", "smoothing_px",
                                                          "drive_gain", "seed")}
    units_day = d.attrs.get("sites_are") == "units"   # sorted units: the simulated monkey's truth is per channel
    if truth or (truth is None and is_sim and not units_day):
        res.truth = _truth(recorded, folder, d, resp, sites, sigma, n_boot, seed)
        res.truth.update(_truth_fractions(res, n_boot, seed))
    if day > 1:
        res.day_over_day = day_over_day(folder, res, days, seed=seed, n_boot=n_boot)
    return res


def _cells(values: np.ndarray, site: np.ndarray, parent: np.ndarray, eps_col: np.ndarray, sites: np.ndarray,
           images: np.ndarray, n_eps: int) -> np.ndarray:
    """(n_sites, len(images), n_eps) table of ``values`` averaged per (site, clean parent, epsilon column)."""
    table, ids = site_image_table(values, site, parent, eps_col, sites, n_eps)
    full = np.full((len(sites), len(images), n_eps), np.nan)
    keep = np.isin(ids, images)
    full[:, np.searchsorted(images, ids[keep])] = table[:, keep]
    return full


def _truth_fractions(res: DayResults, n_boot: int, seed: int) -> dict:
    """Fraction of the white-box truth reached, noise-free and measured (bias-corrected), per epsilon:
    population mean of the achieved change over that of the white-box change, both / sigma, with
    two-level (sites, images random) intervals. Keys: "fraction_true", "fraction_measured" ({eps: Estimate})."""
    from analysis.sensitivity import pair_values

    t, d = res.truth, res.data
    assert d is not None   # analyze_day sets it before asking for these
    order = np.argsort(res.sites, kind="stable")   # the tables index sites by searchsorted
    sites, sigma = res.sites[order], res.sigma[order]
    pairs = perturbation_pairs(d.stimuli, "targeted", sites)
    used = np.unique(pairs.epsilon_index)
    col = np.searchsorted(used, pairs.epsilon_index)
    images = np.unique(pairs.parent)
    sig = sigma[np.searchsorted(sites, pairs.site)]
    n_eps = len(used)
    wb = np.asarray(t["whitebox_problem"], float).mean(axis=2)            # (problems, eps)
    prob_site = np.array([s for _, s in t["problems_list"]], dtype=np.int64)
    wb_sig = wb / sigma[np.searchsorted(sites, prob_site)][:, None]
    truth = _cells(wb_sig.ravel(), np.repeat(prob_site, n_eps), np.repeat(t["problem_parent_rows"], n_eps),
                   np.tile(np.arange(n_eps), len(prob_site)), sites, images, n_eps)
    out = {}
    for key, responses in (("fraction_true", t["expected"]), ("fraction_measured", _responses(d))):
        signed = _cells(pair_values(responses, pairs, "signed") / sig, pairs.site, pairs.parent, col, sites, images, n_eps)
        est = fraction_of_truth(signed, truth, n_resamples=n_boot, seed=seed)
        out[key] = {float(e): v for e, v in zip(pairs.epsilons[used], est)}
    return out


def _without_zero_prediction(prov):
    """The stimulus set with random controls whose model prediction is 0 or NaN (unchanged after
    quantisation) relabelled so that no estimator counts them."""
    import copy

    out = copy.copy(prov)
    kind = np.array(prov.kind, dtype=object).copy()
    bad = (kind == "random") & ~(np.isfinite(prov.predicted_change) & (prov.predicted_change != 0))
    kind[bad] = "dropped"
    out.kind = kind.astype(str)
    return out


def _pearson_through_rate_nonlinearity(pred: np.ndarray, resp: np.ndarray, prov, sites: np.ndarray) -> float:
    """Pearson r of measured vs predicted change after passing the model's prediction f(x)
    through each site's fitted rate nonlinearity: a monotone (isotonic) map from f to the
    measured response, fitted on the day's clean images, so a readout predicting a change the
    site cannot make (beyond its range) is capped where the site caps."""
    from sklearn.isotonic import IsotonicRegression

    t = prov.kind == "targeted"
    clean = np.flatnonzero(prov.kind == "clean")
    xs, ys = [], []
    for s in sites:
        rows = np.flatnonzero(t & (prov.site == s))
        ok = np.isfinite(pred[clean, s]) & np.isfinite(resp[clean, s])
        if len(rows) == 0 or ok.sum() < 5:
            continue
        iso = IsotonicRegression(out_of_bounds="clip").fit(pred[clean[ok], s], resp[clean[ok], s])
        g_pert = iso.predict(pred[rows, s])
        g_par = iso.predict(pred[prov.parent[rows], s])
        xs.append(g_pert - g_par)
        ys.append(resp[rows, s] - resp[prov.parent[rows], s])
    if not xs:
        return float("nan")
    x, y = np.concatenate(xs), np.concatenate(ys)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def _model_predictions(fitted, pixels: np.ndarray, columns: np.ndarray, n_channels: int, cfg: Config) -> np.ndarray:
    """The designing model's f(x) for every stimulus, its readout column k in the day's site column
    ``columns[k]`` (the day's /model/site_channels: a channel, or on a units day the unit standing
    for it; -1 = none), NaN elsewhere."""
    import torch

    module = fitted.module(weights=cfg.model.weights or None, device=cfg.model.device).eval()
    out = np.full((len(pixels), n_channels), np.nan)
    columns = np.asarray(columns, np.int64)
    keep = columns >= 0
    with torch.no_grad():
        for i in range(0, len(pixels), 64):
            x = images_to_tensor(pixels[i:i + 64]).to(cfg.model.device)
            out[i:i + 64][:, columns[keep]] = module(x).double().cpu().numpy()[:, keep]
    return out


def _truth(cfg: Config, folder: Path, d: DayData, resp: np.ndarray, sites: np.ndarray, sigma: np.ndarray,
           n_boot: int, seed: int) -> dict:
    """White-box ground truth and the fraction of it the loop reached (simulation only)."""
    prov = d.stimuli
    monkey = build_sim_monkey(cfg)
    window = (d.window_ms[0] / 1000.0, d.window_ms[1] / 1000.0)
    module = TrueCountModule(monkey, window, cfg.rsvp.stim_on_ms / 1000.0).eval()
    # noise-free: the true expected counts of the very stimuli the loop showed
    true_rates = monkey.true_rates(prov.pixels)
    expected = monkey.expected_counts(true_rates, window, cfg.rsvp.stim_on_ms / 1000.0)
    # saturation: share of targeted stimuli whose true rate (at their site) is within 5% of floor or ceiling
    from analysis.stats import saturation_share

    tg = np.flatnonzero(prov.kind == "targeted")
    saturation = {}
    for g in np.unique(prov.epsilon_index[tg]):  # per planned epsilon (grid row), labelled with its value
        rows = tg[prov.epsilon_index[tg] == g]
        st = prov.site[rows]
        saturation[float(prov.epsilons[g])] = saturation_share(true_rates[rows, st][:, None], monkey.baseline_hz[st][:, None],
                                                cfg.sim.peak_hz)
    cl = np.flatnonzero(prov.kind == "clean")
    saturation[0.0] = saturation_share(true_rates[np.ix_(cl, sites)], monkey.baseline_hz[sites], cfg.sim.peak_hz)
    achieved = sensitivity_curve(expected, prov, estimator="signed", sites=sites, normalise=False, n_boot=n_boot, seed=seed)
    measured = sensitivity_curve(resp, prov, estimator="signed", sites=sites, normalise=False, n_boot=n_boot, seed=seed)
    # the white-box problems: every (clean parent, target site) the loop perturbed
    t = prov.kind == "targeted"
    pairs = sorted({(int(p), int(s)) for p, s in zip(prov.parent[t], prov.site[t]) if s in set(sites.tolist())})
    parents = sorted({p for p, _ in pairs})
    local = {p: i for i, p in enumerate(parents)}
    clean = prov.pixels[parents]
    problems = [(local[p], s) for p, s in pairs]
    eps = [float(e) for e in achieved.epsilons]
    # at least the loop's budget (restarts and steps, without pruning), then both doubled until every
    # problem's answer moves by < 2%
    base = replace(_loop_params(cfg), restarts=max(4, cfg.perturb.restarts), steps=max(16, cfg.perturb.steps), prune=False,
                   random_controls_per_image=0, **TRANSFER_OFF)   # the truth is attacked plainly (issue 19)
    # per-problem cache (clean pixels, site, eps): later days, the report and a resumed run reuse answers
    rules = {k: v for k, v in asdict(base).items() if k != "max_batch_rows"}   # batching does not change answers
    key = {"sim": json.dumps(cfg.to_dict()["sim"], sort_keys=True), "window": list(window),
           "on_s": cfg.rsvp.stim_on_ms / 1000.0, "params": json.dumps(rules, sort_keys=True)}

    def announce(n_new: int) -> None:
        log.info(f"ground truth: white-box attack on the simulated sites ({n_new} new of {len(problems)} problems x "
                 f"{len(eps)} epsilons x 2 directions: {base.restarts} restarts x {base.steps} steps, then both doubled "
                 f"until no problem's answer changes by 2% or more)")

    wb = cached_whitebox(folder / "groundtruth.npz", key, module, clean, problems, eps, base, seed=7,
                         on_compute=announce)
    # (n_sites, n_eps): mean over that site's images of the mean over both directions
    true_site = np.full((len(sites), len(eps)), np.nan)
    for k, s in enumerate(sites):
        rows = [i for i, (_, ps) in enumerate(problems) if ps == s]
        if rows:
            true_site[k] = wb.best[rows].mean(axis=(0, 2))
    frac_true = fraction_of_true(achieved, true_site)
    frac_meas = fraction_of_true(measured, true_site)
    return {"epsilons": eps, "whitebox_site": true_site, "whitebox_population": np.nanmean(true_site, axis=0),
            "achieved_curve": achieved, "fraction_true": frac_true.population, "fraction_measured": frac_meas.population,
            "fraction_true_site": frac_true.site_fraction, "restarts": wb.restarts, "steps": wb.steps,
            "relative_change_on_doubling": wb.relative_change_on_doubling, "history": wb.history,
            "problems_converged": wb.n_converged, "problems": len(problems), "saturation": saturation,
            "whitebox_problem": wb.best, "problems_list": problems,
            "problem_parent_rows": np.array([parents[p] for p, _ in problems], dtype=np.int64), "expected": expected,
            "whitebox_site_normalised": true_site / sigma[:, None]}


def _loop_params(cfg: Config):
    """The loop's PerturbParams (same step rules), from ``cfg.perturb``."""
    return PerturbParams.from_config_section(asdict(cfg.perturb))


def analyze_day(cfg: Config, folder: str | Path, day: int, days: DayCache | None = None) -> tuple[DayResults, Path]:
    """Compute :func:`day_results` and write ``day_DDD.analysis.json``."""
    res = day_results(cfg, folder, day, days=days)
    out = Path(folder) / f"day_{day:03d}.analysis.json"
    numbers = res.numbers()
    numbers["identity"] = analysis_identity(folder, day, N_BOOT)
    write_atomic(out, json.dumps(numbers, indent=1))
    return res, out


def describe(res: DayResults) -> str:
    """A few lines for the terminal (the same wording as the report, from the same numbers)."""
    from rig.results.headline import describe_day

    lines = [f"day {res.day}: {len(res.sites)} targeted sites" + (" (model backbone had RANDOM weights)" if res.random_init_model else "")
             + (f"; simulated monkey: model_alignment {res.sim_info['model_alignment']:g}" if res.sim_info else "")]
    lines += ["  " + x for x in describe_day(res.numbers())]
    lines.append(f"  random-pair baseline {res.pairs.population.value:.2f}, noise floor {res.noise.population.value:.2f} (x sigma); "
                 f"predicted vs measured r = {res.pvm.r.value:.2f} [{res.pvm.r.lo:.2f}, {res.pvm.r.hi:.2f}]")
    return "\n".join(lines)
