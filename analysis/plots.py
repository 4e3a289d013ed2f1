"""Report figures (matplotlib, Agg, PNG). Each function takes arrays/results and a path and writes one PNG.

Epsilon is the L2 norm of the perturbation with pixels in [0,1] (3x224x224 image);
responses are spike counts in the 70-170 ms window; normalised sensitivity is in multiples
of each site's s.d. over clean images.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import (
    Figure,  # Figure + savefig uses the Agg canvas; no pyplot state
)

from analysis.baselines import SiteLevel
from analysis.bootstrap import Estimate
from analysis.sensitivity import PredictedVsMeasured, SensitivityCurve

DPI = 130
EPS_LABEL = "perturbation size ε (L2 norm, pixels in [0, 1])"
COLORS = {"it": "#1f4e9c", "signed": "#2a9d8f", "model": "#d1495b", "random": "#8d6e63",
          "pairs": "#7b2cbf", "noise": "#6c757d", "truth": "#000000"}


def y_label(normalised: bool) -> str:
    return ("sensitivity (multiples of the site's\nclean-image s.d.)" if normalised
            else "sensitivity (spikes per 70-170 ms window)")


def save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def set_epsilon_axis(ax, epsilons: np.ndarray) -> None:
    """Log-2 x axis with ticks at the tested epsilons when they span a factor >= 4."""
    e = np.asarray(epsilons, dtype=float)
    if e.size and np.all(e > 0) and e.max() / e.min() >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(e)
    ax.set_xticklabels([f"{v:g}" for v in e])
    ax.minorticks_off()
    ax.set_xlabel(EPS_LABEL)


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers (0.1, 1, 10, and 2, 5 between decades) instead of powers of ten on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def legend_outside(ax, below: bool = False, **kw) -> None:
    """The axes' legend outside the data: to the right (default) or below the axes."""
    if below:
        ax.legend(**{"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "ncol": 2, "fontsize": 8,
                     "frameon": False, **kw})
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False, **kw)


def estimator_label(curve: SensitivityCurve) -> str:
    return "bias-corrected (sign · Δr)" if curve.estimator == "signed" else "|Δr|"


def band(ax, x, mid, lo, hi, color, label, lw=2.2, ls="-", marker="o", alpha=0.18) -> None:
    """Line with a CI band (error bars instead when there is a single point)."""
    if len(np.atleast_1d(x)) == 1:
        yerr = np.reshape([np.subtract(mid, lo), np.subtract(hi, mid)], (2, -1))   # (2, n): below, above
        ax.errorbar(x, mid, yerr=yerr, fmt="none", ecolor=color, capsize=4)
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0)
    ax.plot(x, mid, color=color, lw=lw, ls=ls, marker=marker, ms=4, label=label)


def hband(ax, level: SiteLevel, color: str, label: str, ls: str) -> None:
    p = level.population
    ax.axhspan(p.lo, p.hi, color=color, alpha=0.12, linewidth=0)
    ax.axhline(p.value, color=color, ls=ls, lw=1.6, label=f"{label}: {p.value:.2g} [{p.lo:.2g}, {p.hi:.2g}]")


def ci_text(curve: SensitivityCurve, population: bool = True) -> str:
    """What a band is: the population's two-level interval, or a site's BCa over its images."""
    if population:
        return f"bands: {round(100 * curve.level)}% CI, sites and images random"
    return f"bands: {round(100 * curve.level)}% BCa CI over the site's images"


def plot_sensitivity_vs_epsilon(path, curve: SensitivityCurve, *, bias_corrected: SensitivityCurve | None = None,
                                model_curve: SensitivityCurve | None = None,
                                random_control: SensitivityCurve | None = None,
                                random_pairs: SiteLevel | None = None, noise_floor: SiteLevel | None = None,
                                ground_truth: np.ndarray | None = None, show_sites: bool = True, it_label: str = "IT",
                                title: str = "IT sensitivity to model-designed perturbations") -> Path:
    """Sensitivity vs epsilon: sites (thin), population (bold, CI band), and optional overlays.

    ground_truth: (n_eps,) true population sensitivity at ``curve.epsilons`` (simulation), in
    the curve's units. All curves should share ``normalised``. ``it_label``: "simulated IT"
    when the spikes are simulated.
    """
    # the model's own units usually dwarf IT's: they get their own panel (log axis) so the
    # IT curves stay readable
    fig = Figure(figsize=(12.5, 5.2) if model_curve is not None else (7.5, 5.2))
    ax = fig.add_subplot(1, 2, 1) if model_curve is not None else fig.add_subplot()
    x = curve.epsilons
    if show_sites:
        for k in range(len(curve.sites)):
            ax.plot(x, curve.site_mean[k], color=COLORS["it"], lw=0.7, alpha=0.35,
                    label=f"single sites, {estimator_label(curve)}" if k == 0 else None)
    band(ax, x, curve.population, curve.population_lo, curve.population_hi, COLORS["it"],
         f"{it_label} population, {estimator_label(curve)} ({len(curve.sites)} sites)", lw=2.8)
    if bias_corrected is not None:
        band(ax, bias_corrected.epsilons, bias_corrected.population, bias_corrected.population_lo,
             bias_corrected.population_hi, COLORS["signed"], f"{it_label} population, bias-corrected (sign · Δr)",
             ls="--")
    if model_curve is not None:
        mx = fig.add_subplot(1, 2, 2)
        band(mx, x, curve.population, curve.population_lo, curve.population_hi, COLORS["it"],
             f"{it_label} population, {estimator_label(curve)}", lw=2.8)
        band(mx, model_curve.epsilons, model_curve.population, model_curve.population_lo,
             model_curve.population_hi, COLORS["model"], "model units (the model that designed them)", ls="-.",
             marker="s")
        if ground_truth is not None:
            mx.plot(x, np.asarray(ground_truth, float), color=COLORS["truth"], lw=1.8, ls="--", marker="D", ms=4,
                    label="true sensitivity (white-box)")
        mx.set_yscale("log")
        plain_log_ticks(mx)
        set_epsilon_axis(mx, x)
        mx.set_ylabel(y_label(curve.normalised) + ", log scale")
        mx.grid(alpha=0.3, which="both")
        mx.set_title(f"{it_label} vs the model's own units", fontsize=11)
        legend_outside(mx, below=True)
    if random_control is not None:
        band(ax, random_control.epsilons, random_control.population, random_control.population_lo,
             random_control.population_hi, COLORS["random"], "random-direction control, |Δr|", ls=":",
             marker="^")
    if ground_truth is not None:
        gt = np.asarray(ground_truth, dtype=float)
        if gt.shape != x.shape:
            raise ValueError(f"ground_truth must have one value per epsilon, shape {x.shape}; got {gt.shape}")
        ax.plot(x, gt, color=COLORS["truth"], lw=1.8, ls="--", marker="D", ms=4,
                label="true sensitivity (white-box attack on ground truth)")
    if random_pairs is not None:
        hband(ax, random_pairs, COLORS["pairs"], "random image pairs", "-")
    if noise_floor is not None:
        hband(ax, noise_floor, COLORS["noise"], "noise floor (split halves)", "--")
    set_epsilon_axis(ax, x)
    ax.set_ylabel(y_label(curve.normalised))
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\n({ci_text(curve)})", fontsize=11)
    legend_outside(ax, below=True)
    fig.tight_layout()
    return save(fig, path)


def plot_sensitivity_by_day(path, curves_by_day: Mapping[int, SensitivityCurve], *,
                            fraction_of_true_by_day: Mapping[int, Mapping[float, Estimate]] | None = None,
                            title: str | None = None) -> Path:
    """Population sensitivity per recording day: left vs epsilon (one line per day), right vs day
    (one line per epsilon, CI error bars). Pass bias-corrected curves to show the lower bound.

    fraction_of_true_by_day: optional {day: {epsilon: Estimate}} (simulation), drawn as a third panel.
    """
    days = sorted(curves_by_day)
    if not days:
        raise ValueError("curves_by_day is empty; pass {day: SensitivityCurve} for at least one day")
    first = curves_by_day[days[0]]
    n_panels = 3 if fraction_of_true_by_day else 2
    fig = Figure(figsize=(5.0 * n_panels, 4.6))
    axes = fig.subplots(1, n_panels)
    day_colors = colormaps["viridis"](np.linspace(0.05, 0.85, len(days)))
    for color, d in zip(day_colors, days):
        c = curves_by_day[d]
        band(axes[0], c.epsilons, c.population, c.population_lo, c.population_hi, color, f"day {d}", lw=1.8,
             alpha=0.12)
    set_epsilon_axis(axes[0], first.epsilons)
    axes[0].set_ylabel(y_label(first.normalised))
    axes[0].set_title("population curve, one line per day", fontsize=10)
    legend_outside(axes[0], below=True)
    all_eps = np.unique(np.concatenate([curves_by_day[d].epsilons for d in days]))
    eps_colors = colormaps["plasma"](np.linspace(0.0, 0.8, len(all_eps)))
    dodge = 0.06 * (np.arange(len(all_eps)) - (len(all_eps) - 1) / 2)  # keep error bars apart
    for color, e, dx in zip(eps_colors, all_eps, dodge):
        xs, ys, lo, hi = [], [], [], []
        for d in days:
            c = curves_by_day[d]
            k = np.flatnonzero(c.epsilons == e)  # labels of the stored grids: equal values match exactly
            if k.size:
                xs.append(d + dx)
                ys.append(c.population[k[0]])
                lo.append(c.population[k[0]] - c.population_lo[k[0]])
                hi.append(c.population_hi[k[0]] - c.population[k[0]])
        axes[1].errorbar(xs, ys, yerr=[lo, hi], color=color, marker="o", capsize=3, lw=1.6, label=f"ε = {e:g}")
    axes[1].set_xlabel("recording day")
    axes[1].set_xticks(days)
    axes[1].set_ylabel(y_label(first.normalised))
    axes[1].set_title("population sensitivity across days", fontsize=10)
    legend_outside(axes[1], below=True, title="perturbation size", title_fontsize=8)
    if fraction_of_true_by_day:
        fdays = sorted(fraction_of_true_by_day)
        for color, e, dx in zip(eps_colors, all_eps, dodge):
            pts = [(d + dx, fraction_of_true_by_day[d][float(e)]) for d in fdays
                   if float(e) in fraction_of_true_by_day[d]]
            if pts:
                v = np.array([[p.value, p.value - p.lo, p.hi - p.value] for _, p in pts])
                axes[2].errorbar([d for d, _ in pts], v[:, 0], yerr=v[:, 1:].T, color=color, marker="o",
                                 capsize=3, lw=1.6, label=f"ε = {e:g}")
        axes[2].axhline(1.0, color="k", lw=1, ls="--", label="all of the true sensitivity")
        axes[2].set_xlabel("recording day")
        axes[2].set_xticks(fdays)
        axes[2].set_ylabel("fraction of true (white-box) sensitivity")
        axes[2].set_ylim(bottom=0)
        axes[2].set_title("fraction of the true sensitivity reached", fontsize=10)
        legend_outside(axes[2], below=True)
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    fig.suptitle(title or f"Does the closed loop find more sensitive directions over days?\n"
                 f"estimator: {estimator_label(first)}; {round(100 * first.level)}% CIs, sites and images random",
                 fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def plot_predicted_vs_measured(path, pvm: PredictedVsMeasured, *, sigma: Mapping[int, float] | None = None,
                               title: str = "Model-predicted vs measured change per stimulus") -> Path:
    """Predicted vs measured change per stimulus, coloured by epsilon, with the Pearson r.

    Left: spikes per window on equal axes with the identity line (the model's predictions may
    dwarf what a site can do). Right, when ``sigma`` ({site: s.d. of its clean responses,
    spikes}) is given: the same stimuli in measured units, each change divided by its site's
    sigma, with the axes set by the measured spread, so the measured changes are readable.
    """
    fig = Figure(figsize=(12.4, 5.8) if sigma else (6.2, 5.8))
    axes = fig.subplots(1, 2 if sigma else 1, squeeze=False)[0]
    rows = np.unique(pvm.epsilon_index)  # planned-grid rows present
    colors = colormaps["plasma"](np.linspace(0.0, 0.8, max(len(rows), 1)))
    scale = (np.array([sigma.get(int(s), np.nan) for s in pvm.site]) if sigma else None)
    for j, ax in enumerate(axes):
        div = np.ones(len(pvm.predicted)) if j == 0 else scale
        x, y = pvm.predicted / div, pvm.measured / div
        for color, g in zip(colors, rows):
            e = pvm.epsilons[g]
            m = pvm.epsilon_index == g
            r = pvm.r_by_epsilon.get(float(e))
            lab = f"ε = {e:g} (n={m.sum()}, r = {r.value:.2f})" if r is not None else f"ε = {e:g}"
            ax.scatter(x[m], y[m], s=10, color=color, alpha=0.6, edgecolors="none", label=lab if j == 0 else None)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.axvline(0, color="0.6", lw=0.6)
        ax.grid(alpha=0.3)
        if j == 0:
            both = np.concatenate([x, y]) if len(x) else np.array([-1.0, 1.0])
            lim = np.nanmax(np.abs(both)) * 1.05 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="k", lw=1, ls="--", label="identity (measured = predicted)")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel("predicted change f(x+δ) − f(x) (spikes per window)")
            ax.set_ylabel("measured change r(x+δ) − r(x) (spikes per window)")
            legend_outside(ax, below=True)
        else:
            ylim = np.nanpercentile(np.abs(y), 99) * 1.1 if np.isfinite(y).any() else 1.0
            xlim = np.nanpercentile(np.abs(x), 99) * 1.1 if np.isfinite(x).any() else 1.0
            ax.set_xlim(-xlim, xlim)
            ax.set_ylim(-ylim, ylim)
            lim = min(xlim, ylim)
            ax.plot([-lim, lim], [-lim, lim], color="k", lw=1, ls="--")
            ax.set_xlabel("predicted change / site's clean-image s.d. (σ)")
            ax.set_ylabel("measured change / σ")
            ax.set_title("measured units (÷ σ per site), axes set by the data", fontsize=10)
    r = pvm.r
    axes[0].set_title(f"{title}\nPearson r = {r.value:.2f} [{r.lo:.2f}, {r.hi:.2f}] ({round(100 * r.level)}% CI), "
                      f"n = {r.n} stimuli", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_site_panels(path, curve: SensitivityCurve, *, bias_corrected: SensitivityCurve | None = None,
                     random_control: SensitivityCurve | None = None, noise_floor: SiteLevel | None = None,
                     random_pairs: SiteLevel | None = None, model_curve: SensitivityCurve | None = None,
                     ground_truth_sites: np.ndarray | None = None, ncols: int = 0,
                     title: str = "Sensitivity per site") -> Path:
    """Grid of small panels, one per site of ``curve``, sharing the y axis.

    Overlays are matched by site index; ``ground_truth_sites``: (n_sites, n_eps) in curve units.
    """
    n = len(curve.sites)
    if n == 0:
        raise ValueError("curve has no sites to plot")
    ncols = ncols or int(np.ceil(np.sqrt(n * 1.4)))
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(2.6 * ncols + 0.6, 2.2 * nrows + 1.0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()

    def row_of(obj, site):
        k = np.flatnonzero(np.asarray(obj.sites) == site)
        return int(k[0]) if k.size else None

    for k, site in enumerate(curve.sites):
        ax = axes[k]
        x = curve.epsilons
        band(ax, x, curve.site_mean[k], curve.site_lo[k], curve.site_hi[k], COLORS["it"],
             f"IT {estimator_label(curve)}", lw=1.6)
        for other, key, lab, ls in ((bias_corrected, "signed", "IT bias-corrected", "--"),
                                    (model_curve, "model", "model units", "-."),
                                    (random_control, "random", "random direction", ":")):
            if other is not None and (j := row_of(other, site)) is not None:
                band(ax, other.epsilons, other.site_mean[j], other.site_lo[j], other.site_hi[j], COLORS[key], lab,
                     lw=1.3, ls=ls, marker=".")
        if ground_truth_sites is not None:
            ax.plot(x, np.asarray(ground_truth_sites)[k], color=COLORS["truth"], ls="--", lw=1.2,
                    label="true (white-box)")
        for lvl, key, lab, ls in ((noise_floor, "noise", "noise floor", "--"),
                                  (random_pairs, "pairs", "random pairs", "-")):
            if lvl is not None and (j := row_of(lvl, site)) is not None:
                ax.axhline(lvl.value[j], color=COLORS[key], ls=ls, lw=1.0, label=lab)
        ax.set_title(f"site {int(site)} (n = {int(curve.n_images[k].max())} images)", fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            handles, labels = ax.get_legend_handles_labels()
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))  # shared y: one call sets all
    e = curve.epsilons
    for ax in axes[:n]:
        if np.all(e > 0) and e.max() / e.min() >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(e)
        ax.set_xticklabels([f"{v:g}" for v in e], fontsize=7)
        ax.minorticks_off()
        ax.tick_params(labelsize=7)
    fig.supxlabel(EPS_LABEL, fontsize=10)
    fig.supylabel(y_label(curve.normalised).replace("\n", " " if nrows > 1 else "\n"), fontsize=10)
    fig.suptitle(f"{title} ({ci_text(curve, population=False)})", fontsize=11)
    fig.tight_layout(rect=(0.02, 0.0, 1, 1))
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))  # below the figure; savefig's tight bbox keeps it
    return save(fig, path)


def plot_example_stimuli(path, clean: np.ndarray, perturbed: np.ndarray, labels: Sequence[str] | None = None, *,
                         amplification: float | None = None,
                         title: str = "Example perturbations (clean, perturbed, amplified difference)") -> Path:
    """Rows of (clean, perturbed, amplified difference) for a few stimuli.

    clean, perturbed: (k, H, W, 3) uint8, as displayed. The difference is shown as
    ``0.5 + a * (perturbed - clean) / 255`` (grey = no change); ``a`` defaults per row to the
    factor that maps the largest |difference| to 0.5. labels: one caption per row.
    """
    clean = np.asarray(clean)
    perturbed = np.asarray(perturbed)
    if clean.shape != perturbed.shape or clean.ndim != 4 or clean.shape[-1] != 3 or clean.dtype != np.uint8:
        raise ValueError(f"clean and perturbed must both be uint8 arrays of shape (k, H, W, 3); got "
                         f"{clean.dtype}{clean.shape} and {perturbed.dtype}{perturbed.shape}")
    k = clean.shape[0]
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels has {len(labels)} entries for {k} example rows")
    fig = Figure(figsize=(8.4, 3.1 * k + 0.6))
    axes = fig.subplots(k, 3, squeeze=False)
    for i in range(k):
        c = clean[i].astype(float) / 255
        p = perturbed[i].astype(float) / 255
        d = p - c
        amp = amplification or (0.5 / max(np.abs(d).max(), 1e-6))
        l2 = float(np.sqrt((d ** 2).sum()))
        panels = ((c, "clean"), (p, f"perturbed (‖δ‖₂ = {l2:.2f})"),
                  (np.clip(0.5 + amp * d, 0, 1), f"difference × {amp:.0f} (grey = 0)"))
        for ax, (img, name) in zip(axes[i], panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9)
        if labels is not None:  # the row's caption sits above its middle panel
            axes[i, 1].set_title(f"{labels[i]}\n{panels[1][1]}", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def plot_predictivity_vs_ceiling(path, model_r_by_day: Mapping[int, np.ndarray],
                                 ceiling_by_day: Mapping[int, np.ndarray], *,
                                 title: str = "Model predictivity vs noise ceiling") -> Path:
    """Per-site cross-validated Pearson r of the model against the split-half ceiling, per day.

    model_r_by_day, ceiling_by_day: {day: (n_sites,) unitless}; the ceiling is the split-half
    reliability rho (a ceiling for r squared), so the ceiling for r is sqrt(rho). Left:
    per-site dots and medians vs day (model r beside sqrt(rho)). Right: r vs rho per site,
    with the curve r = sqrt(rho) = at the ceiling.
    """
    days = sorted(model_r_by_day)
    if not days:
        raise ValueError("model_r_by_day is empty; pass {day: per-site r array}")
    for d in days:
        if d not in ceiling_by_day or np.shape(ceiling_by_day[d]) != np.shape(model_r_by_day[d]):
            raise ValueError(f"day {d}: ceiling_by_day needs an array shaped like model_r_by_day[{d}]")
    fig = Figure(figsize=(11, 4.6))
    ax0, ax1 = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    med_r, med_c = [], []
    for d in days:
        r = np.asarray(model_r_by_day[d], dtype=float)
        c = np.sqrt(np.clip(np.asarray(ceiling_by_day[d], dtype=float), 0.0, 1.0))  # ceiling for r: sqrt(rho)
        jit = rng.uniform(-0.12, 0.12, size=r.shape)
        ax0.scatter(d - 0.15 + jit, r, s=12, color=COLORS["model"], alpha=0.5, edgecolors="none")
        ax0.scatter(d + 0.15 + jit, c, s=12, color=COLORS["noise"], alpha=0.5, edgecolors="none")
        med_r.append(np.nanmedian(r))
        med_c.append(np.nanmedian(c))
    ax0.plot(np.array(days) - 0.15, med_r, color=COLORS["model"], marker="o", lw=2,
             label="model: cross-validated Pearson r (median; dots = sites)")
    ax0.plot(np.array(days) + 0.15, med_c, color=COLORS["noise"], marker="s", lw=2,
             label="noise ceiling for r: sqrt(split-half rho, Spearman-Brown) (median)")
    ax0.set_xticks(days)
    ax0.set_xlabel("recording day (model fitted on all earlier days)")
    ax0.set_ylabel("correlation with recorded response")
    all_r = np.concatenate([np.ravel(model_r_by_day[d]) for d in days]).astype(float)
    ax0.set_ylim(min(0.0, np.nanmin(all_r) - 0.05) if np.isfinite(all_r).any() else 0.0, 1.0)
    legend_outside(ax0, below=True, ncol=1)
    ax0.set_title("predictivity and ceiling per day", fontsize=10)
    colors = colormaps["viridis"](np.linspace(0.05, 0.85, len(days)))
    for color, d in zip(colors, days):
        ax1.scatter(ceiling_by_day[d], model_r_by_day[d], s=16, color=color, alpha=0.8, label=f"day {d}")
    grid = np.linspace(0, 1, 101)
    ax1.plot(grid, np.sqrt(grid), color="k", ls="--", lw=1, label="model at the ceiling: r = sqrt(rho)")
    ax1.set_xlim(0, 1)
    ax1.set_ylim(min(0.0, ax1.get_ylim()[0]), 1)
    ax1.set_xlabel("noise ceiling of the site (split-half reliability)")
    ax1.set_ylabel("model cross-validated Pearson r")
    ax1.set_title("per site: model r vs ceiling", fontsize=10)
    legend_outside(ax1, below=True)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)
