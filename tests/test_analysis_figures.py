"""Every report figure renders from synthetic data, is a real PNG and is not blank."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from analysis import plots
from analysis.baselines import random_direction_control, random_pair_baseline
from analysis.groundtruth import fraction_of_true
from analysis.noise import split_half_noise_floor
from analysis.sensitivity import clean_sigma, predicted_vs_measured, sensitivity_curve
from analysis.summary import curve_numbers, write_summary
from tests.test_analysis_synthetic import closed_loop_day, example_images, poisson_repeats

EPS = (0.25, 0.5, 1.0, 2.0, 4.0)


def day_results(seed: int, gain: float):
    prov, rates, model = closed_loop_day(n_sites=6, n_images=20, epsilons=EPS, n_channels=8, gain=gain, seed=seed)
    reps = poisson_repeats(rates, 8, seed=seed, missing=0.1)
    resp = np.nanmean(reps, axis=0)
    sites = np.arange(6)
    sigma = clean_sigma(resp, prov, sites)
    kw = dict(n_boot=300, seed=seed)
    return dict(
        prov=prov, rates=rates,
        abs=sensitivity_curve(resp, prov, **kw),
        signed=sensitivity_curve(resp, prov, estimator="signed", **kw),
        signed_raw=sensitivity_curve(resp, prov, estimator="signed", normalise=False, **kw),
        model=sensitivity_curve(model, prov, **kw),
        random=random_direction_control(resp, prov, sites=sites, **kw),
        pairs=random_pair_baseline(resp, prov, sites=sites, **kw),
        noise=split_half_noise_floor(reps, sites=sites, sigma=sigma, **kw),
        pvm=predicted_vs_measured(resp, prov, **kw),
        sigma=sigma)


def render_all(outdir) -> list[Path]:
    out = Path(outdir)
    days = {d: day_results(seed=d, gain=0.6 + 0.25 * d) for d in (1, 2, 3)}
    last = days[3]
    true = np.outer(np.ones(6), np.array(EPS)) * 1.6  # spikes: a white-box attack finds gain 1.6
    frac = {d: fraction_of_true(r["signed_raw"], true).population for d, r in days.items()}
    gt_norm = (true / last["sigma"][:, None]).mean(axis=0)
    clean, pert = example_images(3, size=96)
    labels = [f"site {s}\nε = 1.0, +1\npredicted +1.5\nmeasured +1.1 spikes" for s in (0, 2, 5)]
    rng = np.random.default_rng(0)
    model_r = {d: np.clip(0.3 + 0.08 * d + 0.1 * rng.standard_normal(6), 0, 1) for d in (1, 2, 3)}
    ceiling = {d: np.clip(0.8 + 0.05 * rng.standard_normal(6), 0, 1) for d in (1, 2, 3)}
    paths = [
        plots.plot_sensitivity_vs_epsilon(out / "sensitivity_vs_epsilon.png", last["abs"],
                                          bias_corrected=last["signed"], model_curve=last["model"],
                                          random_control=last["random"], random_pairs=last["pairs"],
                                          noise_floor=last["noise"], ground_truth=gt_norm),
        plots.plot_sensitivity_by_day(out / "sensitivity_by_day.png", {d: r["signed"] for d, r in days.items()},
                                      fraction_of_true_by_day=frac),
        plots.plot_predicted_vs_measured(out / "predicted_vs_measured.png", last["pvm"]),
        plots.plot_site_panels(out / "site_panels.png", last["abs"], bias_corrected=last["signed"],
                               random_control=last["random"], noise_floor=last["noise"],
                               random_pairs=last["pairs"], model_curve=last["model"],
                               ground_truth_sites=true / last["sigma"][:, None]),
        plots.plot_example_stimuli(out / "example_stimuli.png", clean, pert, labels),
        plots.plot_predictivity_vs_ceiling(out / "predictivity_vs_ceiling.png", model_r, ceiling),
    ]
    numbers = {"targeted |Δr| (s.d. units)": curve_numbers(last["abs"]),
               "random pairs (s.d. units)": last["pairs"].population,
               "fraction of true sensitivity, last day, ε = 1": frac[3][1.0]}
    paths.append(write_summary(out / "summary.md", numbers, figures=paths))
    return paths


def test_every_figure_renders_and_is_not_blank(tmp_path):
    paths = render_all(tmp_path)
    for p in paths[:-1]:
        assert p.suffix == ".png" and p.stat().st_size > 20_000, p
        img = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert img.shape[0] > 300 and img.shape[1] > 300, (p, img.shape)
        assert img.std() > 20, f"{p.name} looks blank (pixel s.d. {img.std():.1f})"
    text = paths[-1].read_text()
    assert "[" in text and "95% CI" in text and "![sensitivity_vs_epsilon](sensitivity_vs_epsilon.png)" in text


def _captured_figures(tmp_path, monkeypatch) -> dict:
    """Render every figure, keeping the matplotlib Figure objects (by file stem) as they are saved."""
    from matplotlib.figure import Figure

    figs: dict = {}
    real_savefig = Figure.savefig

    def keep(self, fname, *a, **kw):
        figs[Path(fname).stem] = self
        return real_savefig(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    render_all(tmp_path)
    return figs


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_lines() or ax.collections or ax.images or ax.patches]


def test_figures_have_labelled_axes_and_the_data_they_were_given(tmp_path, monkeypatch):
    figs = _captured_figures(tmp_path, monkeypatch)
    assert {"sensitivity_vs_epsilon", "sensitivity_by_day", "predicted_vs_measured", "site_panels",
            "example_stimuli", "predictivity_vs_ceiling"} <= set(figs)
    for name, fig in figs.items():
        axes = _data_axes(fig)
        assert axes, f"{name} draws nothing"
        if name == "example_stimuli":
            assert sum(len(ax.images) for ax in fig.axes) >= 2 * 3  # clean + perturbed for 3 sites
            continue
        # each panel is labelled, or the figure labels all panels at once (supxlabel / supylabel)
        sup = [getattr(fig, "_supxlabel", None), getattr(fig, "_supylabel", None)]
        fig_labelled = any(s is not None and s.get_text() for s in sup)
        for ax in axes:
            assert ax.get_xlabel() or ax.get_ylabel() or fig_labelled, f"{name}: an axis without labels"
    # sensitivity vs epsilon: every curve has one point per epsilon, x = the epsilons given
    ax = _data_axes(figs["sensitivity_vs_epsilon"])[0]
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(EPS)]
    assert len(curves) >= 4  # targeted, bias-corrected, random control, random pairs (+ model, truth)
    for ln in curves:
        assert np.allclose(np.asarray(ln.get_xdata(), float), EPS)
    assert "ε" in ax.get_xlabel() or "eps" in ax.get_xlabel().lower()
    # one curve per day in the by-day figure
    by_day = _data_axes(figs["sensitivity_by_day"])[0]
    assert len([ln for ln in by_day.get_lines() if len(ln.get_xdata()) == len(EPS)]) >= 3
    # one panel per site
    assert len(_data_axes(figs["site_panels"])) >= 6
