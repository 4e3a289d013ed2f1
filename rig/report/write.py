"""``itloop report DIR``: figures and a summary page for a whole experiment folder."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from analysis import plots
from analysis.bootstrap import bca_mean_interval
from analysis.summary import write_summary
from rig.config import Config
from rig.errors import UserError
from rig.paths import day_path
from rig.report.beyond import beyond_section
from rig.results.analysis_file import (
    analysis_path,
    curve_from_json,
    est_from_json,
    pvm_from_json,
    read_current,
    required_curve_from_json,
    site_level_from_json,
)
from rig.results.headline import describe_day, headline_table
from rig.steps.analyze import N_BOOT, analyze_day
from rig.store.reader import DayCache, day_status

log = logging.getLogger(__name__)


def recorded_days(folder: Path) -> list[int]:
    """Closed-loop days (>= 1) whose day file is complete."""
    days = []
    for p in sorted(folder.glob("day_*.h5")):
        stem = p.name[len("day_"):-len(".h5")]
        if stem.isdigit() and int(stem) >= 1:
            try:
                if day_status(p) == "complete":
                    days.append(int(stem))
            except (OSError, KeyError, ValueError) as exc:  # a damaged file is reported by `day check`, not here
                log.info("skipping %s: %s", p, exc)
    return days


def _examples(data, sites, n: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clean / perturbed pairs at the largest epsilon for a few sites (largest predicted change)."""
    ss = data.stimuli
    t = ss.kind == "targeted"
    g = int(ss.epsilon_index[t][np.argmax(ss.epsilon_requested[t])])  # the planned-grid row of the largest epsilon
    clean, pert, labels = [], [], []
    for s in sites[:n]:
        idx = np.flatnonzero(t & (ss.site == s) & (ss.epsilon_index == g))
        if not len(idx):
            continue
        k = idx[np.argmax(np.abs(ss.predicted_change[idx]))]
        clean.append(ss.pixels[ss.parent[k]])
        pert.append(ss.pixels[k])
        labels.append(f"site {s}, direction {int(ss.direction[k]):+d}, model predicts {ss.predicted_change[k]:+.1f} spikes")
    return np.stack(clean), np.stack(pert), labels


def day_analyses(cfg: Config, folder: Path, days: list[int], cache: DayCache) -> dict[int, dict]:
    """Each day's analysis.json: read when current (:func:`read_current`), else analysed now and written."""
    out = {}
    for d in days:
        a = read_current(folder, d, N_BOOT)
        if a is None:
            analyze_day(cfg, folder, d, days=cache)
            a = json.loads(analysis_path(folder, d).read_text())
        out[d] = a
    return out


class _Figures:
    """One day's figure data (from its analysis.json) as the plotting functions' objects."""

    def __init__(self, a: dict) -> None:
        fd = a["figure_data"]
        self.day = int(a["day"])
        self.sites = np.asarray(a["sites"], np.int64)
        self.targeted, self.signed = required_curve_from_json(fd["targeted"]), required_curve_from_json(fd["signed"])
        self.random, self.model_units = curve_from_json(fd.get("random")), curve_from_json(fd.get("model_units"))
        self.pairs, self.noise = site_level_from_json(fd["pairs"]), site_level_from_json(fd["noise"])
        self.pvm = pvm_from_json(fd["pvm"])
        self.scores = {k: np.asarray([np.nan if x is None else x for x in v], float)
                       for k, v in fd.get("model_scores", {}).items()}
        wb = fd.get("whitebox_site_normalised")
        self.whitebox = None if wb is None else np.asarray([[np.nan if x is None else x for x in r] for r in wb], float)
        self.fraction_true = {float(e): est_from_json(v) for e, v in fd.get("fraction_true", [])}
        self.simulated = bool(a.get("simulation"))
        self.sigma = np.asarray(fd.get("sigma", []), float)

    def sigma_by_site(self) -> dict[int, float]:
        """{site channel: sigma (spikes)}."""
        return {int(s): float(v) for s, v in zip(self.sites, self.sigma)}


def write_report(cfg: Config, folder: str | Path, out: str | Path | None = None,
                 cache: DayCache | None = None) -> Path:
    """Write ``out`` (default ``<folder>/report``) for every complete closed-loop day of ``folder``:
    PNG figures and ``summary.md``, drawn from each day's ``day_DDD.analysis.json`` (analysed
    first where the file is missing or not current). Returns the summary's path.
    ``cache``: the process's day cache (each day file is read once)."""
    folder = Path(folder)
    if not day_path(folder, 0).exists():
        raise UserError(f"{folder} holds no screening day (day_000.h5); is it an itloop experiment folder?")
    days = recorded_days(folder)
    if not days:
        raise UserError(f"{folder} has no complete closed-loop day (day_001.h5 or later) to report on")
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else DayCache()
    analyses = day_analyses(cfg, folder, days, cache)
    figs_by_day = {d: _Figures(a) for d, a in analyses.items()}
    last = figs_by_day[days[-1]]
    last_data = cache.read(day_path(folder, days[-1]))
    figs = _draw(out, figs_by_day, last, last_data)
    fig1a, fig1a_notes = _figure1a(cfg, folder, out, last, last_data, analyses[days[-1]], cache)
    if fig1a is not None:
        figs.insert(0, fig1a)
    numbers, checks = _numbers(analyses, days)
    notes = _notes(folder, days, analyses, last, cache) + checks + fig1a_notes
    notes += beyond_section(cfg, folder, out, last.day, cache, figs)   # issue 23: universal / subspace / geometry
    summary = write_summary(out / "summary.md", numbers, title="itloop experiment report", notes=notes, figures=figs)
    (out / "headline.md").write_text(headline_table(folder))  # the README's demo table is pasted from this
    return summary


def _draw(out: Path, by_day: dict[int, _Figures], last: _Figures, last_data) -> list[Path]:
    """The per-experiment figures from the days' figure data (no recomputation)."""
    it = "simulated IT" if last.simulated else "IT"
    gt = last.whitebox
    figs = [
        plots.plot_sensitivity_vs_epsilon(
            out / "sensitivity_vs_epsilon.png", last.targeted, bias_corrected=last.signed, model_curve=last.model_units,
            random_control=last.random, random_pairs=last.pairs, noise_floor=last.noise,
            ground_truth=np.nanmean(gt, axis=0) if gt is not None else None, it_label=it,
            title=f"Day {last.day}: {it} sensitivity to model-designed perturbations"),
        plots.plot_sensitivity_by_day(
            out / "sensitivity_by_day.png", {d: r.signed for d, r in by_day.items()},
            fraction_of_true_by_day={d: r.fraction_true for d, r in by_day.items()} if gt is not None else None,
            title=f"{it}: bias-corrected sensitivity per closed-loop day"),
        plots.plot_predicted_vs_measured(out / "predicted_vs_measured.png", last.pvm, sigma=last.sigma_by_site(),
                                         title=f"Day {last.day}: model-predicted vs measured change per stimulus ({it})"),
        plots.plot_site_panels(out / "site_panels.png", last.targeted, bias_corrected=last.signed,
                               random_control=last.random, noise_floor=last.noise, random_pairs=last.pairs,
                               ground_truth_sites=gt, title=f"Day {last.day}: {it} sensitivity per site"),
        plots.plot_example_stimuli(out / "example_stimuli.png", *_examples(last_data, last.sites)),
    ]
    scored = {d: r for d, r in by_day.items() if "cv_r" in r.scores and "ceiling" in r.scores}
    if scored:
        figs.append(plots.plot_predictivity_vs_ceiling(
            out / "predictivity_vs_ceiling.png", {d: r.scores["cv_r"] for d, r in scored.items()},
            {d: r.scores["ceiling"] for d, r in scored.items()},
            title=f"Predictivity of the model that designed each day's stimuli ({it})"))
    return figs


def _notes(folder: Path, days: list[int], analyses: dict[int, dict], last: _Figures, cache: DayCache) -> list[str]:
    a = analyses[days[-1]]
    notes = [
        f"Spikes: {_spike_sources(folder, days, cache)}",
        (f"Experiment folder `{folder}`; closed-loop days {days[0]}..{days[-1]}; {len(last.sites)} targeted sites; "
         "sensitivities are in units of each site's s.d. over the screening day's clean images (sigma)."),
        ("Estimators: raw |dr| carries the measurement-noise floor; the floor-corrected magnitude is the signed square "
        "root of the mean split-half cross-product d_A d_B (an unbiased estimate of the mean squared true change, "
        "so an RMS change in sigma; split halves by trial, so images sharing a trial's gain do not bias it). "
        "Headline: targeted - random of the floor-corrected magnitudes. Intervals treat sites and images as random. "
        "Each site has its own images, so the site means are independent and carry all of the variance: a mean's "
        "interval is Hall's (1992) skew-corrected t interval over them (a few strongly affected sites make them "
        "right-skewed, where a t interval misses low), never narrower than the measurement noise alone implies; "
        "the fraction of the truth, a ratio of two means, has Fieller's interval over them; other statistics take "
        "the shape of a BCa interval resampling sites and images (scipy.stats.bootstrap) and the width of an "
        "unbiased random-effects variance with a t quantile; "
        "targeted - random combines the two magnitudes' intervals (MOVER). 'Random above the noise "
        "floor' is a one-sided sign-flip permutation test of the split-half cross-products over images "
        "(scipy.stats.permutation_test), Holm-corrected across epsilons; a targeted/random ratio is printed only "
        "where that test rejects at 0.05 and random's interval is above 0, otherwise 'not estimable'."),
    ]
    si = a.get("simulation") or {}
    if si:
        notes.append(f"Simulated monkey: **model_alignment = {si['model_alignment']:g}** (the share of the sites' linear "
                     f"drive that lives in the designing model's feature space; 0 = the truth is hidden from the "
                     f"controller), linear_fraction {si['linear_fraction']:g}, input_px {si['input_px']}, "
                     f"smoothing_px {si['smoothing_px']:g}, drive_gain {si['drive_gain']:g}, seed {si['seed']}.")
    if any(x.get("random_init_model") for x in analyses.values()):
        notes.append("**The model backbone had RANDOM weights** (no weights file was configured): the model is a "
                     "random-feature readout, not an ImageNet-trained network.")
    notes.append("On-screen image scaling: " + ", ".join(f"day {d}: {x['figure_data'].get('image_scaling', 'smooth')}"
                                                       for d, x in analyses.items())
                 + " (smooth: bilinear to the configured size in degrees, so the perturbation that reaches the eye is "
                 "not exactly epsilon_shown; integer: nearest neighbour by a whole factor, pixels shown exactly).")
    pred = a.get("predictivity") or {}
    if pred:
        notes.append("Predictivity of the designing model (median over sites): " + "; ".join(
            f"**{k}** = {pred[k]:.3f} ({pred['definitions'][k]})" for k in ("r", "r / sqrt(ceiling)", "r^2 / ceiling")
            if pred.get(k) is not None) + ".")
    t = a.get("truth")
    if t:
        h = t["whitebox_budget"]
        notes.append(f"Ground truth: a white-box attack on the simulated sites' expected counts (the loop's step "
                     f"rules, no pruning), final budget {h['restarts']} restarts x {h['steps']} steps after doubling "
                     f"both; the last doubling changed the mean answer by {100 * (h['relative_change_on_doubling'] or 0):.2g}%, "
                     f"and {h.get('problems_converged', 0)} of {h.get('problems', 0)} problems moved by < 2% "
                     f"(converged; the rest are lower bounds).")
        sat = {float(e): v for e, v in a["figure_data"].get("saturation", []) if v is not None}
        if sat:
            notes.append("Saturation (true rates of the targeted stimuli within 5% of the site's floor or the "
                         "ceiling): " + ", ".join(("clean images" if e == 0 else f"eps {e:g}") + f" {100 * v:.0f}%"
                                                  for e, v in sorted(sat.items())) + ".")
    return notes


def _figure1a_key(cfg: Config, a: dict) -> dict:
    keys = ("backbone", "weights", "layer")
    ident = {k: v for k, v in (a.get("identity") or {}).items() if k not in ("analysis_version", "n_boot")}
    return {"identity": ident, "model": {k: str(getattr(cfg.model, k, "")) for k in keys},
            "report": json.dumps(cfg.to_dict().get("report", {}), sort_keys=True),
            "perturb": json.dumps(cfg.to_dict().get("perturb", {}), sort_keys=True), "seed": cfg.experiment.seed,
            "bands": "bca"}   # the network curves' bands (a cache of percentile bands is recomputed)


def _figure1a(cfg: Config, folder: Path, out: Path, last: _Figures, data, a: dict,
              cache: DayCache) -> tuple[Path | None, list[str]]:
    """Figure 1A: IT (white-box truth in simulation, else measured bias-corrected) beside the
    white-box sensitivity of every configured backbone's units on the same clean images. The
    backbone curves are cached in ``out/figure1a.json`` for the last day's current analysis."""
    from rig.report.figure1a import UnitCurve, plot_figure1a

    ss = data.stimuli
    t = np.flatnonzero(ss.kind == "targeted")
    parents = list(dict.fromkeys(int(p) for p in ss.parent[t]))[:cfg.report.figure1a_images]
    if not parents:
        return None, []
    eps = [float(e) for e in last.targeted.epsilons]
    key = _figure1a_key(cfg, a)
    cached = out / "figure1a.json"
    stored = json.loads(cached.read_text()) if cached.exists() else {}
    if stored.get("key") == key:
        units = [UnitCurve.from_json(u) for u in stored["units"]]
        loss_note = stored.get("loss_note", "")
    else:
        units, loss_note = _figure1a_compute(cfg, folder, last, data, parents, eps, cache)
        cached.write_text(json.dumps({"key": key, "loss_note": loss_note, "units": [
            {"label": u.label, "epsilons": u.epsilons.tolist(), "mean": u.mean.tolist(), "lo": u.lo.tolist(),
             "hi": u.hi.tolist(), "pairs": u.pairs, "n_units": u.n_units, "n_images": u.n_images} for u in units]}))
    if last.whitebox is not None:
        sc = last.whitebox[np.all(np.isfinite(last.whitebox), axis=1)]
        it = (np.asarray(eps), sc.mean(0), *bca_mean_interval(sc, 0, 1000, 0.95, 0))   # BCa over sites
        label = f"simulated IT: white-box truth ({len(sc)} sites, CI over sites)"
    else:
        c = last.signed
        it = (c.epsilons, c.population, c.population_lo, c.population_hi)
        label = "IT: measured, bias-corrected (a lower bound)"
    size = int(ss.pixels.shape[1])
    path = plot_figure1a(out / "figure1a.png", it, label, float(last.pairs.population.value), units, size)
    notes = ["Figure 1A (white-box, same engine and clean images; x sigma of each unit/site over clean images): "
             + label + ": " + ", ".join(f"eps {e:g} {m:.2f} [{lo:.2f}, {hi:.2f}]" for e, m, lo, hi in zip(*it))
             + f"; random image pairs {last.pairs.population.value:.2f}."]
    if loss_note:
        notes.append(loss_note)
    for u in units:
        notes.append(f"Figure 1A, {u.label}: " + ", ".join(f"eps {e:g} {m:.2f} [{lo:.2f}, {hi:.2f}]"
                                                         for e, m, lo, hi in zip(u.epsilons, u.mean, u.lo, u.hi))
                     + f"; random image pairs {u.pairs:.2f} ({u.n_units} units x {u.n_images} images).")
    return path, notes


def _figure1a_compute(cfg: Config, folder: Path, last: _Figures, data, parents: list[int], eps: list[float],
                      cache: DayCache) -> tuple[list, str]:
    """The backbones' unit curves and the quantisation-loss note (forward and backward passes)."""
    from rig.report.figure1a import figure1a_curves

    ss = data.stimuli
    d0 = cache.read(day_path(folder, 0))
    screening = d0.stimuli.pixels[d0.stimuli.kind == "clean"]
    units = figure1a_curves(cfg, screening, ss.pixels[parents], eps, seed=cfg.experiment.seed)
    size = int(ss.pixels.shape[1])
    try:
        from modelfit.store import load_fitted
        from rig.report.quantloss import quantisation_loss

        mfile = folder / str(data.model.get("model_file", ""))
        if not (data.model.get("model_file") and mfile.exists()):
            return units, ""
        fitted = load_fitted(mfile)
        module = fitted.module(weights=cfg.model.weights or None).eval()
        cols = [int(np.flatnonzero(np.asarray(fitted.site_channels) == s)[0]) for s in last.sites[:3]
                if s in set(np.asarray(fitted.site_channels).tolist())]
        loss = quantisation_loss(module, ss.pixels[parents], cols, eps)
        return units, (f"uint8 quantisation loss of a linear objective at {size} px (designing model, "
                       f"{len(parents)} images x {len(cols)} sites): "
                       + ", ".join(f"eps {e:g} {100 * v:.1f}%" for e, v in loss.items()) + ".")
    except (RuntimeError, ValueError, OSError, KeyError, IndexError) as exc:  # a report must not fail on this extra number
        return units, f"uint8 quantisation loss: not computed ({type(exc).__name__}: {exc})."


def _numbers(analyses: dict[int, dict], days: list[int]) -> tuple[dict, list[str]]:
    """The summary's tables (one section per day) and the checks printed under the title."""
    numbers: dict = {}
    for d, a in analyses.items():
        numbers[f"Day {d}"] = _day_section(a)
    last = analyses[days[-1]]
    units = last.get("headline_units", {})
    checks = [f"Day {last['day']}, per epsilon (x sigma; {units.get('interval', '95% CI')}): "
              + "; ".join(describe_day(last)) + "."]
    dod = last.get("day_over_day") or {}
    if dod.get("epsilons"):
        parts = []
        for e, v in dod["epsilons"].items():
            x = v["difference"]
            verdict = ("significant" if v["significant"] else
                       f"no significant change (minimum detectable effect {v['mde']:.2f} sigma at 80% power)"
                       if v.get("mde") is not None else "no significant change")
            parts.append(f"eps {e}: {_fmt(x)} (n = {x['n']} images, Holm p = {v['p_holm']:.2g}; {verdict}; {v['images']})")
        checks.append(f"Day-over-day change of the bias-corrected sensitivity (x sigma), day {dod['last_day']} minus day "
                      f"{dod['first_day']}, paired over the same (site, clean image) problems, 95% BCa CI: "
                      + "; ".join(parts) + ".")
        numbers["Day-over-day (paired)"] = {f"epsilon {e}: day {dod['last_day']} - day {dod['first_day']} (x sigma)":
                                            est_from_json(v["difference"]) for e, v in dod["epsilons"].items()}
    return numbers, checks


def _fmt(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "n/a"
    lo = "n/a" if v.get("lo") is None else f"{v['lo']:+.2f}"
    hi = "n/a" if v.get("hi") is None else f"{v['hi']:+.2f}"
    return f"{v['value']:+.2f} [{lo}, {hi}]"


def _day_section(a: dict) -> dict:
    sec: dict = {}
    for k, e in enumerate(a["epsilons"]):
        def at(key, sub=None, k=k):
            src = a.get(key, {}).get(sub) if sub else a.get(key)
            return src[k] if isinstance(src, list) and k < len(src) else None
        row = {"targeted - random, floor-corrected RMS / sigma": est_from_json(at("targeted_minus_random")),
               "floor-corrected targeted sensitivity, RMS / sigma": est_from_json(at("floor_corrected_targeted")),
               "targeted raw abs(dr) / sigma (noise-biased)": est_from_json(at("targeted_abs")),
               "bias-corrected / sigma": est_from_json(at("targeted_signed"))}
        if at("floor_corrected_random") is not None:
            row["floor-corrected random-direction, RMS / sigma"] = est_from_json(at("floor_corrected_random"))
            row["random-direction raw abs(dr) / sigma"] = est_from_json(at("random_abs"))
            row["random above the noise floor: permutation p (Holm across epsilons)"] = at("random_above_floor_p_holm")
            row["targeted / random (floor-corrected)"] = at("targeted_over_random_text")
        if at("model_units_abs") is not None:
            row["model units abs(df) / sigma_model"] = est_from_json(at("model_units_abs"))
        if a.get("truth"):
            row["fraction of true sensitivity reached (noise-free)"] = est_from_json(at("truth", "fraction_true_achieved"))
            row["fraction of true sensitivity, measured bias-corrected"] = est_from_json(at("truth", "fraction_measured"))
        sec[f"epsilon {e:g} (L2, pixels in [0,1])"] = row
    sec["random-pair baseline / sigma"] = est_from_json(a["random_pairs"])
    sec["split-half noise floor of raw abs(dr) / sigma"] = est_from_json(a["noise_floor"])
    sec["predicted vs measured change, Pearson r"] = est_from_json(a["predicted_vs_measured_r"])
    sec["predicted vs measured change, Spearman rho"] = a.get("predicted_vs_measured_spearman")
    sec["predicted vs measured change, Pearson r through the site's rate nonlinearity"] = a.get(
        "predicted_vs_measured_r_through_rate_nonlinearity")
    pred = a.get("predictivity") or {}
    for name in ("r", "r / sqrt(ceiling)", "r^2 / ceiling"):
        if pred.get(name) is not None:
            sec[f"designing model, median {name}: {pred['definitions'][name]}"] = pred[name]
    return sec


def _spike_sources(folder: Path, days: list[int], cache: DayCache) -> str:
    """The origin of the reported days' spikes (and day 0's), one phrase; SIMULATED says so."""
    words = {"sim": "SIMULATED monkey (sim backend)", "presenter+sim": "SIMULATED monkey behind the real presenter",
             "live": "RECORDED by a live acquisition system", "unknown": "unknown (not stored in the day file)"}
    seen: dict[str, list[int]] = {}
    for d in [0, *days]:
        data = cache.read(day_path(folder, d))
        origin = data.origin
        text = words[origin.kind] + (f", replayed from day file {origin.replayed_from}" if origin.replayed else "")
        if data.attrs.get("sites_are") == "units":
            text += "; sites are offline-sorted units (`itloop day units`), no white-box truth"
        seen.setdefault(text, []).append(d)
    return "; ".join(f"days {', '.join(map(str, ds))}: {src}" for src, ds in seen.items())
