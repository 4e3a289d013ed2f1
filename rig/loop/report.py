"""``itloop report DIR``: figures and a summary page for a whole experiment folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rig.loop.beyond_report import beyond_section
from rig.loop.analyze import DayResults, day_results
from rig.loop.headline import headline_table
from rig.config import Config
from rig.store.reader import DayCache, day_status
from rig.errors import UserError
from rig.paths import day_path
from analysis import plots
from analysis.summary import write_summary


def recorded_days(folder: Path) -> list[int]:
    """Closed-loop days (>= 1) whose day file is complete."""
    days = []
    for p in sorted(folder.glob("day_*.h5")):
        stem = p.name[len("day_"):-len(".h5")]
        if stem.isdigit() and int(stem) >= 1:
            try:
                if day_status(p) == "complete":
                    days.append(int(stem))
            except Exception:  # a damaged file is reported by `day check`, not here
                continue
    return days


def _examples(res: DayResults, n: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clean / perturbed pairs at the largest epsilon for a few sites (largest predicted change)."""
    ss = res.data.stimuli
    t = ss.kind == "targeted"
    g = int(ss.epsilon_index[t][np.argmax(ss.epsilon_requested[t])])  # the planned-grid row of the largest epsilon
    clean, pert, labels = [], [], []
    for s in res.sites[:n]:
        idx = np.flatnonzero(t & (ss.site == s) & (ss.epsilon_index == g))
        if not len(idx):
            continue
        k = idx[np.argmax(np.abs(ss.predicted_change[idx]))]
        clean.append(ss.pixels[ss.parent[k]])
        pert.append(ss.pixels[k])
        labels.append(f"site {s}, direction {int(ss.direction[k]):+d}, model predicts {ss.predicted_change[k]:+.1f} spikes")
    return np.stack(clean), np.stack(pert), labels


def signed_changes_by_image(res: DayResults) -> dict[float, dict[tuple, float]]:
    """{eps: {(site, clean parent id, direction): bias-corrected change / sigma}} of one day's
    targeted stimuli; the key identifies the same problem on another day (parents by stimulus id)."""
    d = res.data
    ss = d.stimuli
    resp = d.mean_responses().astype(float)
    sig = {int(s): float(v) for s, v in zip(res.sites, res.sigma)}
    out: dict[float, dict[tuple, float]] = {}
    for k in np.flatnonzero(ss.kind == "targeted"):
        s = int(ss.site[k])
        if s not in sig or not np.isfinite(ss.predicted_change[k]) or ss.predicted_change[k] == 0:
            continue
        e = float(ss.epsilons[ss.epsilon_index[k]])  # the stored grid value labels it on every day
        v = np.sign(ss.predicted_change[k]) * (resp[k, s] - resp[ss.parent[k], s]) / sig[s]
        out.setdefault(e, {})[(s, str(d.stim_ids[ss.parent[k]]), int(ss.direction[k]))] = float(v)
    return out


def paired_day_change(first: DayResults, last: DayResults, seed: int = 0) -> dict:
    """{eps: PairedDifference of last - first} over the problems (site, clean image, direction)
    both days perturbed, units of sigma (bias-corrected); images averaged over directions."""
    from analysis.stats import paired_difference

    a_all, b_all = signed_changes_by_image(first), signed_changes_by_image(last)
    out = {}
    for e in sorted(set(a_all) & set(b_all)):
        a, b = a_all[e], b_all[e]
        units: dict[tuple, list] = {}
        for key in set(a) & set(b):
            units.setdefault(key[:2], []).append((a[key], b[key]))
        if not units:
            continue
        va = np.array([np.mean([x for x, _ in v]) for v in units.values()])
        vb = np.array([np.mean([y for _, y in v]) for v in units.values()])
        out[e] = paired_difference(va, vb, seed=seed)
    return out


def write_report(cfg: Config, folder: str | Path, out: str | Path | None = None, progress: bool = True,
                 cache: DayCache | None = None) -> Path:
    """Analyse every complete closed-loop day of ``folder`` and write ``out`` (default
    ``<folder>/report``): PNG figures and ``summary.md``. Returns the summary's path.
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
    results = {d: day_results(cfg, folder, d, progress=progress, days=cache) for d in days}
    last = results[days[-1]]
    truth = bool(last.truth)
    gt = last.truth["whitebox_site_normalised"] if truth else None
    random_init = any(r.random_init_model for r in results.values())
    figs = [
        plots.plot_sensitivity_vs_epsilon(
            out / "sensitivity_vs_epsilon.png", last.targeted, bias_corrected=last.signed, model_curve=last.model_units,
            random_control=last.random, random_pairs=last.pairs, noise_floor=last.noise,
            ground_truth=np.nanmean(gt, axis=0) if gt is not None else None,
            title=f"Day {last.day}: IT sensitivity to model-designed perturbations"),
        plots.plot_sensitivity_by_day(
            out / "sensitivity_by_day.png", {d: r.signed for d, r in results.items()},
            fraction_of_true_by_day={d: r.truth["fraction_true"] for d, r in results.items()} if truth else None,
            title="Bias-corrected sensitivity per closed-loop day"),
        plots.plot_predicted_vs_measured(out / "predicted_vs_measured.png", last.pvm,
                                         title=f"Day {last.day}: model-predicted vs measured change per stimulus"),
        plots.plot_site_panels(out / "site_panels.png", last.targeted, bias_corrected=last.signed,
                               random_control=last.random, noise_floor=last.noise, random_pairs=last.pairs,
                               ground_truth_sites=gt,
                               title=f"Day {last.day}: sensitivity per site"),
        plots.plot_example_stimuli(out / "example_stimuli.png", *_examples(last)),
    ]
    fig1a, fig1a_notes = _figure1a(cfg, folder, out, last, cache)
    if fig1a is not None:
        figs.insert(0, fig1a)
    scored = {d: r for d, r in results.items() if "cv_r" in r.model_scores}
    if scored:
        figs.append(plots.plot_predictivity_vs_ceiling(
            out / "predictivity_vs_ceiling.png", {d: r.model_scores["cv_r"] for d, r in scored.items()},
            {d: r.model_scores["ceiling"] for d, r in scored.items()},
            title="Predictivity of the model that designed each day's stimuli"))
    numbers, checks = _numbers(results, days)
    sources = _spike_sources(folder, days)
    notes = [
        f"Spikes: {sources}",
        f"Experiment folder `{folder}`; closed-loop days {days[0]}..{days[-1]}; {len(last.sites)} targeted sites; "
        "sensitivities are in units of each site's s.d. over the screening day's clean images (sigma).",
    ]
    if last.sim_info:
        si = last.sim_info
        notes.append(f"Simulated monkey: **model_alignment = {si['model_alignment']:g}** (the share of the sites' linear "
                     f"drive that lives in the designing model's feature space; 0 = the truth is hidden from the "
                     f"controller), linear_fraction {si['linear_fraction']:g}, input_px {si['input_px']}, "
                     f"smoothing_px {si['smoothing_px']:g}, drive_gain {si['drive_gain']:g}, seed {si['seed']}.")
    if random_init:
        notes.append("**The model backbone had RANDOM weights** (no weights file was configured): the model is a "
                     "random-feature readout, not an ImageNet-trained network.")
    scalings = {d: str(r.data.attrs.get("image_scaling", "smooth")) for d, r in results.items()}
    notes.append("On-screen image scaling: " + ", ".join(f"day {d}: {v}" for d, v in scalings.items())
                 + " (smooth: bilinear to the configured size in degrees, so the perturbation that reaches the eye is "
                 "not exactly epsilon_shown; integer: nearest neighbour by a whole factor, pixels shown exactly).")
    notes += checks
    notes += fig1a_notes
    if truth:
        h = last.truth
        notes.append(f"Ground truth: a white-box attack on the simulated sites' expected counts (the loop's step "
                     f"rules, no pruning), final budget {h['restarts']} restarts x {h['steps']} steps after doubling "
                     f"both; the last doubling changed the mean answer by {100 * h['relative_change_on_doubling']:.2g}%, "
                     f"and {h.get('problems_converged', 0)} of {h.get('problems', 0)} problems moved by < 2% "
                     f"(converged; the rest are lower bounds).")
        sat = h.get("saturation", {})
        if sat:
            notes.append("Saturation (true rates of the targeted stimuli within 5% of the site's floor or the "
                         "ceiling): " + ", ".join(("clean images" if e == 0 else f"eps {e:g}") + f" {100 * v:.0f}%"
                                                  for e, v in sorted(sat.items())) + ".")
    notes += beyond_section(cfg, folder, out, last.day, cache, figs, progress)   # issue 23: universal / subspace / geometry
    summary = write_summary(out / "summary.md", numbers, title="itloop experiment report", notes=notes, figures=figs)
    (out / "headline.md").write_text(headline_table(folder))  # the README's demo table is pasted from this
    return summary


def _figure1a(cfg: Config, folder: Path, out: Path, last: DayResults, cache: DayCache) -> tuple[Path | None, list[str]]:
    """Figure 1A: IT (white-box truth in simulation, else measured bias-corrected) beside the
    white-box sensitivity of every configured backbone's units on the same clean images."""
    from rig.loop.figure1a import figure1a_curves, plot_figure1a

    ss = last.data.stimuli
    t = np.flatnonzero(ss.kind == "targeted")
    parents = list(dict.fromkeys(int(p) for p in ss.parent[t]))[:cfg.report.figure1a_images]
    if not parents:
        return None, []
    d0 = cache.read(day_path(folder, 0))
    screening = d0.stimuli.pixels[d0.stimuli.kind == "clean"]
    eps = [float(e) for e in last.targeted.epsilons]
    units = figure1a_curves(cfg, screening, ss.pixels[parents], eps, seed=cfg.experiment.seed)
    if last.truth:
        site_curves = np.asarray(last.truth["whitebox_site_normalised"], float)     # (sites, eps)
        rng = np.random.default_rng(0)
        ok = np.all(np.isfinite(site_curves), axis=1)
        sc = site_curves[ok]
        boot = sc[rng.integers(0, len(sc), size=(1000, len(sc)))].mean(axis=1)
        it = (np.asarray(eps), sc.mean(0), np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0))
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
    try:
        from modelfit.store import load_fitted
        from rig.loop.quantloss import quantisation_loss

        mfile = folder / str(last.data.model.get("model_file", ""))
        if last.data.model.get("model_file") and mfile.exists():
            fitted = load_fitted(mfile)
            module = fitted.module(weights=cfg.model.weights or None).eval()
            cols = [int(np.flatnonzero(np.asarray(fitted.site_channels) == s)[0]) for s in last.sites[:3]
                    if s in set(np.asarray(fitted.site_channels).tolist())]
            loss = quantisation_loss(module, ss.pixels[parents], cols, eps)
            notes.append(f"uint8 quantisation loss of a linear objective at {size} px (designing model, "
                         f"{len(parents)} images x {len(cols)} sites): "
                         + ", ".join(f"eps {e:g} {100 * v:.1f}%" for e, v in loss.items()) + ".")
    except Exception as exc:  # a report must not fail on this extra number
        notes.append(f"uint8 quantisation loss: not computed ({type(exc).__name__}: {exc}).")
    for u in units:
        notes.append(f"Figure 1A, {u.label}: " + ", ".join(f"eps {e:g} {m:.2f} [{lo:.2f}, {hi:.2f}]"
                                                         for e, m, lo, hi in zip(u.epsilons, u.mean, u.lo, u.hi))
                     + f"; random image pairs {u.pairs:.2f} ({u.n_units} units x {u.n_images} images).")
    return path, notes


def _numbers(results: dict[int, DayResults], days: list[int]) -> tuple[dict, list[str]]:
    first, last = results[days[0]], results[days[-1]]
    numbers: dict = {}
    checks = []
    for d, r in results.items():
        sec: dict = {}
        for e in r.targeted.epsilons:
            row = {"targeted abs(dr) / sigma": r.targeted.population_estimate(e),
                   "bias-corrected / sigma": r.signed.population_estimate(e)}
            if r.random is not None:
                row["random-direction abs(dr) / sigma"] = r.random.population_estimate(e)
                row["targeted / random (ratio)"] = r.ratio[float(e)]
                if float(e) in r.ratio_signed:
                    row["targeted / random, bias-corrected (ratio)"] = r.ratio_signed[float(e)]
                row["random control indistinguishable from noise floor"] = bool(r.random_at_floor.get(float(e), False))
            if r.model_units is not None:
                row["model units abs(df) / sigma_model"] = r.model_units.population_estimate(e)
            if r.truth:
                row["fraction of true sensitivity reached (noise-free)"] = r.truth["fraction_true"][float(e)]
                row["fraction of true sensitivity, measured bias-corrected"] = r.truth["fraction_measured"][float(e)]
            sec[f"epsilon {e:g} (L2, pixels in [0,1])"] = row
        sec["random-pair baseline / sigma"] = r.pairs.population
        sec["split-half noise floor / sigma"] = r.noise.population
        sec["predicted vs measured change, Pearson r"] = r.pvm.r
        sec["predicted vs measured change, Spearman rho"] = r.pvm_extra.get("spearman", float("nan"))
        sec["predicted vs measured change, Pearson r through the site's rate nonlinearity"] = r.pvm_extra.get(
            "pearson_nonlinear", float("nan"))
        if "cv_r" in r.model_scores:
            sec["designing model: median cross-validated r (folds grouped by clean parent, scored on the "
                "screening day's clean images)"] = float(np.nanmedian(r.model_scores["cv_r"]))
            if "cv_r_ungrouped" in r.model_scores:
                sec["designing model: median r of ungrouped shuffle splits (parents and children split: leaky, "
                    "for reference)"] = float(np.nanmedian(r.model_scores["cv_r_ungrouped"]))
            sec["designing model: median noise-ceiled predictivity"] = float(np.nanmedian(r.model_scores["noise_ceiled"]))
        numbers[f"Day {d}"] = sec
    if last.random is not None:
        ratios = {float(e): last.ratio[float(e)] for e in last.targeted.epsilons}
        ok = [e for e, q in ratios.items() if q.value >= 10]
        floor = [e for e in ratios if last.random_at_floor.get(e)]
        checks.append(f"Targeted vs model-free random perturbations on day {last.day}: "
                      + ", ".join(f"eps {e:g}: {q.value:.1f}x [{q.lo:.1f}, {q.hi:.1f}]" for e, q in ratios.items())
                      + f" — at least 10x at {len(ok)} of {len(ratios)} epsilons; bias-corrected: "
                      + (", ".join(f"eps {e:g}: {q.value:.1f}x [{q.lo:.1f}, {q.hi:.1f}]" for e, q in last.ratio_signed.items())
                         or "n/a")
                      + (f". The random control is indistinguishable from the noise floor at eps "
                         f"{', '.join(f'{e:g}' for e in floor)}: the ratio there is unstable." if floor else "."))
    if len(days) > 1:
        paired = paired_day_change(first, last)
        parts = [f"eps {e:g}: {p.estimate.value:+.2f} [{p.estimate.lo:+.2f}, {p.estimate.hi:+.2f}] "
                 f"(n = {p.n} images, sign-flip p = {p.p_value:.2g})" for e, p in paired.items()]
        checks.append(f"Day-over-day change of the bias-corrected sensitivity (x sigma), day {days[-1]} minus day "
                      f"{days[0]}, paired over the same (site, clean image) problems, 95% paired-bootstrap CI: "
                      + ("; ".join(parts) if parts else "no problem was perturbed on both days") + ".")
        for e, p in paired.items():
            numbers.setdefault("Day-over-day (paired)", {})[f"epsilon {e:g}: day {days[-1]} - day {days[0]} (x sigma)"] = p.estimate
            numbers["Day-over-day (paired)"][f"epsilon {e:g}: sign-flip p"] = p.p_value
    if last.truth:
        checks.append(f"Fraction of the true (white-box) sensitivity reached on day {last.day} (noise-free): "
                      + ", ".join(f"eps {e:g}: {v.value:.2f} [{v.lo:.2f}, {v.hi:.2f}]"
                                  for e, v in last.truth["fraction_true"].items()) + ".")
    return numbers, checks


def _spike_sources(folder: Path, days: list[int]) -> str:
    """The spike provenance of the reported days (and day 0), one phrase; SIMULATED says so first."""
    import h5py

    seen: dict[str, list[int]] = {}
    for d in [0, *days]:
        try:
            with h5py.File(day_path(folder, d), "r") as h5:
                src = h5.attrs.get("spike_source")
        except OSError:
            src = None
        seen.setdefault(str(src) if src else "unknown (written before spike provenance was stored)", []).append(d)
    return "; ".join(f"days {', '.join(map(str, ds))}: {src}" for src, ds in seen.items())
