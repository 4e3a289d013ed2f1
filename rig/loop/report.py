"""``itloop report DIR``: figures and a summary page for a whole experiment folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
    eps = float(np.max(ss.epsilon_requested[ss.kind == "targeted"]))
    clean, pert, labels = [], [], []
    for s in res.sites[:n]:
        idx = np.flatnonzero((ss.kind == "targeted") & (ss.site == s) & np.isclose(ss.epsilon_requested, eps))
        if not len(idx):
            continue
        k = idx[np.argmax(np.abs(ss.predicted_change[idx]))]
        clean.append(ss.pixels[ss.parent[k]])
        pert.append(ss.pixels[k])
        labels.append(f"site {s}, direction {int(ss.direction[k]):+d}, model predicts {ss.predicted_change[k]:+.1f} spikes")
    return np.stack(clean), np.stack(pert), labels


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
    if random_init:
        notes.append("**The model backbone had RANDOM weights** (no weights file was configured): the model is a "
                     "random-feature readout, not an ImageNet-trained network.")
    scalings = {d: str(r.data.attrs.get("image_scaling", "smooth")) for d, r in results.items()}
    notes.append("On-screen image scaling: " + ", ".join(f"day {d}: {v}" for d, v in scalings.items())
                 + " (smooth: bilinear to the configured size in degrees, so the perturbation that reaches the eye is "
                 "not exactly epsilon_shown; integer: nearest neighbour by a whole factor, pixels shown exactly).")
    notes += checks
    if truth:
        h = last.truth
        notes.append(f"Ground truth: a white-box attack on the simulated sites' expected counts, "
                     f"{h['restarts']} restarts x {h['steps']} steps; doubling the budget changed the mean "
                     f"answer by {100 * h['relative_change_on_doubling']:.2g}% (the criterion is < 2%).")
    summary = write_summary(out / "summary.md", numbers, title="itloop experiment report", notes=notes, figures=figs)
    (out / "headline.md").write_text(headline_table(folder))  # the README's demo table is pasted from this
    return summary


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
            if r.model_units is not None:
                row["model units abs(df) / sigma_model"] = r.model_units.population_estimate(e)
            if r.truth:
                row["fraction of true sensitivity reached (noise-free)"] = r.truth["fraction_true"][float(e)]
                row["fraction of true sensitivity, measured bias-corrected"] = r.truth["fraction_measured"][float(e)]
            sec[f"epsilon {e:g} (L2, pixels in [0,1])"] = row
        sec["random-pair baseline / sigma"] = r.pairs.population
        sec["split-half noise floor / sigma"] = r.noise.population
        sec["predicted vs measured change, Pearson r"] = r.pvm.r
        if "cv_r" in r.model_scores:
            sec["designing model: median cross-validated r"] = float(np.nanmedian(r.model_scores["cv_r"]))
            sec["designing model: median noise-ceiled predictivity"] = float(np.nanmedian(r.model_scores["noise_ceiled"]))
        numbers[f"Day {d}"] = sec
    if last.random is not None:
        ratios = {float(e): last.ratio[float(e)] for e in last.targeted.epsilons}
        ok = [e for e, q in ratios.items() if q.value >= 10]
        checks.append(f"Targeted vs model-free random perturbations on day {last.day}: "
                      + ", ".join(f"eps {e:g}: {q.value:.1f}x [{q.lo:.1f}, {q.hi:.1f}]" for e, q in ratios.items())
                      + f" — at least 10x at {len(ok)} of {len(ratios)} epsilons.")
    if len(days) > 1:
        parts = []
        for e in last.signed.epsilons:
            a, b = first.signed.population_estimate(e), last.signed.population_estimate(e)
            parts.append(f"eps {e:g}: {a.value:.2f} [{a.lo:.2f}, {a.hi:.2f}] -> {b.value:.2f} [{b.lo:.2f}, {b.hi:.2f}]")
        better = sum(last.signed.population_estimate(e).value > first.signed.population_estimate(e).value
                     for e in last.signed.epsilons)
        checks.append(f"Bias-corrected sensitivity, day {days[0]} -> day {days[-1]}: " + "; ".join(parts)
                      + f" — higher on the last day at {better} of {len(last.signed.epsilons)} epsilons.")
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
