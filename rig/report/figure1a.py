"""Figure 1A of Guo et al. (2022): IT sensitivity vs epsilon beside the units of networks.

For every backbone in ``report.figure1a_backbones`` (plus the designing model), the same
perturbation engine attacks ``report.figure1a_units`` of the network's own units (feature
channels of its configured layer; the units with the largest s.d. over the screening
day's clean images) white-box, on the same clean images the loop perturbed, at the same
epsilons, in both directions. Each unit's change is normalised by its s.d. over the
screening clean images -- the same units as IT's curve (multiples of a site's clean s.d.)
-- and each network's random-image-pair baseline is computed the same way. The networks get
the loop's step rules with at most FIG1A_MAX_RESTARTS restarts x FIG1A_MAX_STEPS steps (a
lower bound on each network's sensitivity; the IT white-box truth gets more).

IT's curve is the white-box truth of the simulated sites (simulation) or the measured
bias-corrected sensitivity (a real recording: a lower bound). Backbone entries: ``"name"``
(registry name, its packaged weights or a random init) or ``"name:/path/to/weights"``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from analysis.bootstrap import bca_mean_interval
from rig.config import Config

FIG1A_MAX_RESTARTS = 4
FIG1A_MAX_STEPS = 16


@dataclass
class UnitCurve:
    label: str
    epsilons: np.ndarray      # requested, L2 (pixels in [0,1])
    mean: np.ndarray          # (n_eps,) mean |best change| / unit s.d., over units, images, directions
    lo: np.ndarray            # 95% bootstrap CI over images
    hi: np.ndarray
    pairs: float              # random-pair baseline / unit s.d.
    n_units: int
    n_images: int

    @classmethod
    def from_json(cls, u: dict) -> UnitCurve:
        """The curve as ``out/figure1a.json`` stores it."""
        e, m, lo, hi = (np.asarray(u[k], float) for k in ("epsilons", "mean", "lo", "hi"))
        return cls(u["label"], e, m, lo, hi, u["pairs"], u["n_units"], u["n_images"])


class _Units:
    """A backbone's chosen feature channels as a model: images -> (B, n_units)."""

    def __init__(self, backbone, units: np.ndarray) -> None:
        import torch

        self.backbone = backbone
        self.index = torch.as_tensor(units, dtype=torch.long)

    def __call__(self, x):
        return self.backbone(x)[:, self.index]


def _backbones(cfg: Config) -> list[tuple[str, str | None]]:
    want = [(cfg.model.backbone, cfg.model.weights or None)]
    for entry in cfg.report.figure1a_backbones:
        name, _, weights = str(entry).partition(":")
        if (name, weights or None) not in want:
            want.append((name, weights or None))
    return want


def unit_curve(label: str, backbone, screening_pixels: np.ndarray, clean: np.ndarray, epsilons: list[float],
               n_units: int, params, seed: int = 0, n_boot: int = 1000) -> UnitCurve:
    """White-box sensitivity of ``n_units`` of ``backbone``'s units on ``clean`` (uint8 (N,H,W,3))."""
    import torch

    from modelfit.features import images_to_tensor
    from stimuli.perturb import generate_perturbations

    with torch.no_grad():
        feats = np.concatenate([backbone(images_to_tensor(screening_pixels[i:i + 64]))
                                .double().numpy() for i in range(0, len(screening_pixels), 64)])
    sd = feats.std(0)
    units = np.argsort(-sd)[:n_units]
    sd_u = sd[units]
    model = _Units(backbone, units)
    problems = [(i, u) for i in range(len(clean)) for u in range(len(units))]
    ss = generate_perturbations(model, clean, problems, epsilons, replace(params, random_controls_per_image=0), seed=seed)
    t = ss.kind == "targeted"
    change = np.abs(ss.predicted_change[t]).reshape(len(clean), len(units), len(epsilons), 2) / sd_u[None, :, None, None]
    per_image = change.mean(axis=(1, 3))                                  # (images, eps)
    lo, hi = bca_mean_interval(per_image, 0, n_boot, 0.95, seed)          # BCa over images, per eps
    rng = np.random.default_rng(seed)
    j, k = rng.integers(0, len(feats), size=(2, 4000))
    keep = j != k
    pairs = float((np.abs(feats[j[keep]][:, units] - feats[k[keep]][:, units]) / sd_u).mean())
    return UnitCurve(label, np.asarray(epsilons, float), per_image.mean(0), lo, hi, pairs, len(units), len(clean))


def figure1a_curves(cfg: Config, screening_pixels: np.ndarray, clean: np.ndarray, epsilons: list[float],
                    seed: int = 0) -> list[UnitCurve]:
    """One :class:`UnitCurve` per backbone of :func:`_backbones` (the loop's step rules and budget, no pruning)."""
    from dataclasses import asdict

    from modelfit.backbone import build_backbone
    from stimuli.params import TRANSFER_OFF
    from stimuli.perturb import PerturbParams

    loop = PerturbParams.from_config_section(asdict(cfg.perturb))
    # the loop's step rules; the budget is capped (network units are cheap to move, and on CPU
    # a trained network's gradient passes are the slow part): a lower bound for each network
    # white-box on each network's own units: plain gradients, never the loop's transfer options (issue 19)
    params = replace(loop, prune=False, restarts=min(loop.restarts, FIG1A_MAX_RESTARTS), steps=min(loop.steps, FIG1A_MAX_STEPS),
                     **TRANSFER_OFF)
    layer = cfg.report.figure1a_layer or cfg.model.layer
    out = []
    for name, weights in _backbones(cfg):
        bb = build_backbone(name, layer, weights)
        kind = "random init" if bb.random_init else "trained"
        label = f"{name} {layer} ({kind}{', designing model' if name == cfg.model.backbone else ''})"
        out.append(unit_curve(label, bb, screening_pixels, clean, epsilons, cfg.report.figure1a_units, params, seed))
    return out


def plot_figure1a(path: Path, it_curve: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], it_label: str,
                  it_pairs: float, units: list[UnitCurve], size_px: int) -> Path:
    """IT (eps, mean, lo, hi) beside each backbone's units; dotted lines: random-pair baselines."""
    from matplotlib.figure import Figure

    from analysis.plots import legend_outside, plain_log_ticks, save

    fig = Figure(figsize=(11.5, 5.4))
    ax = fig.add_subplot()
    eps, mid, lo, hi = it_curve
    ax.plot(eps, mid, color="k", marker="o", lw=2.4, label=it_label)
    ax.fill_between(eps, lo, hi, color="k", alpha=0.15)
    it_name = "simulated IT" if it_label.startswith("simulated") else "IT"
    ax.axhline(it_pairs, color="k", ls=":", lw=1.2, label=f"{it_name}: random image pairs ({it_pairs:.2f})")
    colors = ["#d1495b", "#2a9d8f", "#e9c46a", "#7b2cbf", "#264653"]
    for c, u in zip(colors * 3, units):
        ax.plot(u.epsilons, u.mean, color=c, marker="s", lw=1.8, label=f"{u.label}: {u.n_units} units x {u.n_images} images")
        ax.fill_between(u.epsilons, u.lo, u.hi, color=c, alpha=0.15)
        ax.axhline(u.pairs, color=c, ls=":", lw=1.0, label=f"{u.label.split(' (')[0]}: random image pairs ({u.pairs:.2f})")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xlabel(f"perturbation size eps (L2, pixels in [0,1], {size_px} px; x {224 / size_px:.2f} = eps at 224 px by per-pixel RMS)")
    ax.set_ylabel("sensitivity: |change| / unit's clean-image s.d. (log)")
    ax.set_title(f"Figure 1A: white-box sensitivity, {it_name} vs network units (same engine, same clean images)\n"
                 "dotted: random image pairs; bands: 95% BCa bootstrap CI over images", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    fig.tight_layout()
    return save(fig, path)
