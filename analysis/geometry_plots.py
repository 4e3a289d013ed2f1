"""Figures for site-universal perturbations, the subspace of designs and response geometry
(matplotlib Agg, PNG; one function per figure, arrays and estimates in, a path out)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis.bootstrap import Estimate
from analysis.plots import COLORS, EPS_LABEL, band, plot_example_stimuli, save

UNIVERSAL_CURVES = (  # (key, label, color, line style)
    ("it/universal_heldout", "IT: model's universal δ, held-out images", COLORS["it"], "-"),
    ("it/universal_design", "IT: model's universal δ, design images", COLORS["signed"], "--"),
    ("it/targeted", "IT: per-image targeted δ", COLORS["pairs"], "-"),
    ("it/random_heldout", "IT: random shared δ, held-out images", COLORS["random"], "-"),
    ("truth/universal_heldout", "truth: model's universal δ, held-out", COLORS["noise"], ":"),
    ("model/universal_heldout", "model's prediction: universal δ, held-out", COLORS["model"], ":"),
)


def plot_universal_vs_epsilon(path, table: Mapping[float, Mapping[str, Estimate]],
                              whitebox: Mapping[float, Estimate] | None = None,
                              title: str = "Site-universal perturbations: signed change per epsilon") -> Path:
    """Mean signed change (spikes) per epsilon for each condition, with CI bands; the white-box
    universal delta on the true rates (simulator) in black."""
    eps = np.array(sorted(table))
    fig = Figure(figsize=(7.6, 4.8))
    ax = fig.subplots()
    for key, label, color, ls in UNIVERSAL_CURVES:
        if all(key in table[e] for e in eps):
            v = [table[e][key] for e in eps]
            band(ax, eps, [x.value for x in v], [x.lo for x in v], [x.hi for x in v], color, label, lw=1.8, ls=ls)
    if whitebox:
        w = [whitebox[e] for e in eps if e in whitebox]
        band(ax, [e for e in eps if e in whitebox], [x.value for x in w], [x.lo for x in w], [x.hi for x in w],
             COLORS["truth"], "truth: white-box universal δ (upper bound), held-out", lw=2.0)
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xticks(eps)
    ax.set_xlabel(EPS_LABEL)
    ax.set_ylabel("signed change s·Δr (spikes per window)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def plot_universal_examples(path, d, max_heldout: int = 3) -> Path:
    """One site's universal delta at the largest epsilon (direction +1): a design image and up to
    ``max_heldout`` held-out images, each clean, with the delta, and the difference amplified.
    ``d``: a day's data (``d.stimuli`` with the issue-23 columns)."""
    st = d.stimuli
    uni = np.flatnonzero((st.kind == "universal") & (st.direction == 1))
    top = uni[st.epsilon_requested[uni] == st.epsilon_requested[uni].max()]
    sid = st.shared_delta[top[0]]
    rows = top[st.shared_delta[top] == sid]
    pick = list(rows[st.design_role[rows] == 1][:1]) + list(rows[st.design_role[rows] == 2][:max_heldout])
    labels = [("design image" if st.design_role[r] == 1 else "held-out image") + f", channel {st.site[r]}, "
              f"ε = {st.epsilon_requested[r]:g}" for r in pick]
    amp = 0.5 / max(np.abs(st.pixels[pick].astype(float) - st.pixels[st.parent[pick]].astype(float)).max() / 255, 1e-6)
    return plot_example_stimuli(path, st.pixels[st.parent[pick]], st.pixels[pick], labels, amplification=amp,
                                title=f"One universal δ (shared delta {sid}) on a design image and on held-out images")


def plot_subspace(path, subs: Sequence[Mapping]) -> Path:
    """Left: each site's singular spectrum of its designed directions (s_k^2 / sum s^2). Right:
    share of a held-out design in the other designs' top-k subspace, against k/dim (random)."""
    fig = Figure(figsize=(9.0, 3.8))
    a1, a2 = fig.subplots(1, 2)
    for s in subs:
        sv = np.asarray(s["singular_values"], float)
        if not len(sv):
            continue
        a1.plot(np.arange(1, len(sv) + 1), sv ** 2 / np.sum(sv ** 2), marker="o", ms=3, label=f"channel {s['site']}")
        if s["heldout_fraction"]:
            a2.plot(s["k"], s["heldout_fraction"], marker="o", ms=3, label=f"channel {s['site']}")
    if subs:
        ks = np.asarray(subs[0]["k"], float)
        a2.plot(ks, ks / max(subs[0]["dim"], 1), color=COLORS["truth"], ls=":", label="random direction (k / dim)")
    a1.set_xlabel("singular value rank")
    a1.set_ylabel("share of squared singular values")
    a1.set_title("Spectrum of a site's designed directions", fontsize=9)
    a2.set_xlabel("subspace size k")
    a2.set_ylabel("held-out design's share in top-k (log)")
    a2.set_title("Leave-one-out: does a new image's design lie in the others' subspace?", fontsize=9)
    a2.set_yscale("log")
    a2.set_ylim(top=1.5)
    for a in (a1, a2):
        a.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_curvature(path, rows: Sequence[Mapping]) -> Path:
    """Slope and curvature along the designed (u) and a random orthogonal (v) direction per line:
    IT with 95% CIs, the model and (simulator) the truth."""
    labels = [f"line {r['id']}, {ax_name}" for r in rows for ax_name in ("designed", "random ⊥")]
    fig = Figure(figsize=(max(9.4, 0.7 * len(labels)), 4.6))
    axes = fig.subplots(1, 2)
    x = np.arange(len(labels))
    for panel, (what, unit) in enumerate((("slope", "spikes / L2 unit"), ("curvature", "spikes / L2 unit²"))):
        ax = axes[panel]
        it = [getattr(r[f"it_{a}"], what) for r in rows for a in ("u", "v")]
        ax.errorbar(x - 0.15, [e.value for e in it], yerr=[[e.value - e.lo for e in it], [e.hi - e.value for e in it]],
                    fmt="o", color=COLORS["it"], capsize=3, label="IT (95% CI, bootstrap over trials)")
        for dx, src, marker in ((0.0, "model", "x"), (0.15, "truth", "s")):
            if all(f"{src}_u" in r for r in rows):
                vals = [r[f"{src}_{a}"][panel] for r in rows for a in ("u", "v")]
                ax.plot(x + dx, vals, marker, color=COLORS["model" if src == "model" else "truth"], label=src)
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
        ax.set_ylabel(f"{what} ({unit})")
        ax.set_title(f"{what.capitalize()} at the clean image", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_iso_plane(path, row: Mapping) -> Path:
    """Iso-response contours of the mean response on the plane spanned by the designed direction u
    and a random orthogonal v, one panel per source (IT, model, truth)."""
    planes = row["plane"]
    fig = Figure(figsize=(4.0 * len(planes), 3.7))
    axes = np.atleast_1d(fig.subplots(1, len(planes)))
    for ax, (name, (av, bv, grid)) in zip(axes, planes.items()):
        g = np.ma.masked_invalid(grid.T)
        cs = ax.contourf(av, bv, g, levels=10, cmap="viridis")
        ax.contour(av, bv, g, levels=10, colors="white", linewidths=0.6)
        fig.colorbar(cs, ax=ax, label="response (spikes per window)")
        ax.plot([0], [0], "r+", ms=10)
        ax.set_xlabel("a: along designed direction u (L2)")
        ax.set_ylabel("b: along random v ⊥ u (L2)")
        ax.set_title({"it": "IT (measured)", "model": "model prediction", "truth": "truth (expected counts)"}.get(name, name),
                     fontsize=9)
    fig.suptitle(f"Iso-response contours, line {row['id']} (channel {row['site']}, image {row['image']})", fontsize=10)
    fig.tight_layout()
    return save(fig, path)
