"""Which transfer-oriented design reaches the simulated sites? ``python benchmarks/transfer_bench.py
[--seeds 0 1 2] [--smoothing 0 2] [--input-px 32] [--methods ...] [--cosine-only]``.

For each simulated monkey (``sim.seed`` x ``sim.smoothing_px`` x ``sim.input_px``; 16 sites,
everything else config.toml's defaults) the designing model is what the demo fits: the
trained efficientnet-lite0 at ``--layer`` with ``--pool`` features and a ridge readout,
here fitted on the sites' noise-free drives over ``--n-clean`` builtin photograph crops
(the loop fits noisy counts: this is the model's best case). Per transfer method
(``[perturb]`` options of :mod:`stimuli.transfer`):

- **cos**: median over (image, site) of the cosine between the method's step direction
  (the model's input gradient, transformed) and the sites' true input gradient (of the
  drive), on ``--cos-images`` clean images x every site; random directions give ~0.
- **frac**: the fraction of the white-box sensitivity reached: mean over problems and
  directions of the true signed change of the drive (unit variance over the reference
  set) the method's perturbation causes, over the same mean for the white-box attack on
  the truth itself (same engine, plain gradients, 2x the restarts and steps).
- **t/r**: mean |true change| of the method's perturbations over that of model-free
  random directions of the same epsilon (two per problem), with a 95 % bootstrap CI over
  problems (noise-free: no bias correction needed).

Problems: ``--images`` clean images x ``--sites`` sites, the largest ``--eps`` (64 px, L2,
pixels in [0,1]) unless more are given, both directions, ``--restarts`` x ``--steps``.
Single-threaded; a row per (setting, method).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from torch import nn

METHODS = {
    "plain": {},
    "smooth2": {"grad_smoothing_px": 2.0},
    "smooth4": {"grad_smoothing_px": 4.0},
    "dct1/8": {"lowpass_fraction": 0.125},
    "eot8-shift": {"eot_samples": 8, "eot_shift_px": 4, "eot_scale": 0.1},
    "eot8-noise": {"eot_samples": 8, "eot_noise": 0.1},
    "eot8-noise+smooth2": {"eot_samples": 8, "eot_noise": 0.1, "grad_smoothing_px": 2.0},
    "eot8-noise+smooth4": {"eot_samples": 8, "eot_noise": 0.1, "grad_smoothing_px": 4.0},
    "eot4-noise+smooth4": {"eot_samples": 4, "eot_noise": 0.1, "grad_smoothing_px": 4.0},   # the demo's choice
    "ensemble(l3+l4.0)": {"ensemble": True},
    "eot8-noise0.2+smooth4": {"eot_samples": 8, "eot_noise": 0.2, "grad_smoothing_px": 4.0},
    "eot16-noise0.1+smooth4": {"eot_samples": 16, "eot_noise": 0.1, "grad_smoothing_px": 4.0},
    "eot8-noise0.1+smooth6": {"eot_samples": 8, "eot_noise": 0.1, "grad_smoothing_px": 6.0},
    "eot8-noise0.1+shift2+smooth4": {"eot_samples": 8, "eot_noise": 0.1, "eot_shift_px": 2, "grad_smoothing_px": 4.0},
    "eot8-noise0.1+scale+smooth4": {"eot_samples": 8, "eot_noise": 0.1, "eot_scale": 0.15, "grad_smoothing_px": 4.0},
}


class _Mean(nn.Module):
    """Objectives averaged: images -> mean of the members' (B, S) predictions."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def fit_model(layer: str, pool: str, pixels: np.ndarray, names: list[str], drive: np.ndarray) -> tuple[nn.Module, float]:
    """(SiteModel on lite0 ``layer``/``pool``, median grouped-by-photograph 5-fold r of the drive)."""
    from modelfit.backbone import build_backbone
    from modelfit.features import FeatureExtractor
    from modelfit.readout import Readout
    from modelfit.scores import grouped_cross_validated_r
    from stimuli.photos import photo_of

    bb = build_backbone("efficientnet-lite0", layer, pool=pool)
    X = FeatureExtractor(bb, batch_size=50, channels_last=False).transform(pixels)
    groups = [photo_of(n) for n in names]
    r = grouped_cross_validated_r(X, drive, groups, np.ones(len(X), bool), lambda: Readout(), n_folds=5)
    return Readout().fit(X, drive).to_torch(bb).eval(), float(np.median(r))


def input_gradients(fn, x: torch.Tensor, n_sites: int, objective_params=None) -> torch.Tensor:
    """(B, S, 3, H, W) gradients of every site; with ``objective_params`` through the engine's
    transfer objective (the direction the engine steps in)."""
    from stimuli.objective import SiteObjective
    from stimuli.transfer import wrap_objective

    obj = SiteObjective(fn)
    if objective_params is not None:
        obj = wrap_objective(obj, objective_params, seed=0)
    out = []
    for s in range(n_sites):
        site = torch.full((len(x),), s, dtype=torch.long)
        _, g = obj.value_and_grad(x, site, torch.ones(len(x)))
        out.append(g)
    return torch.stack(out, 1)


def setting_rows(a, seed: int, smoothing: float, input_px: int) -> list[dict]:
    from modelfit.features import images_to_tensor
    from rig.truth.whitebox import _Drive  # the sites' pre-saturation drive, as the white-box truth attacks it
    from sim.monkey import SimParams, SimulatedMonkey
    from stimuli.images import clean_images
    from stimuli.params import PerturbParams
    from stimuli.perturb import generate_perturbations

    t0 = time.perf_counter()
    pixels, names = clean_images("builtin", a.size, a.n_clean, 0)
    x = images_to_tensor(pixels)
    monkey = SimulatedMonkey(SimParams(n_channels=a.n_sites, seed=seed, smoothing_px=smoothing, input_px=input_px))
    truth = _Drive(monkey.true_rate_module()).eval()
    with torch.no_grad():
        drive = torch.cat([truth(x[i:i + 50]) for i in range(0, len(x), 50)]).double().numpy()
    model, r = fit_model(a.layer, a.pool, pixels, names, drive)
    members = None
    rng = np.random.default_rng(seed)
    cos_idx = rng.choice(len(x), a.cos_images, replace=False)
    g_true = input_gradients(truth, x[cos_idx], a.n_sites)
    img_idx = rng.choice(len(x), a.images, replace=False)
    sites = rng.choice(a.n_sites, a.sites, replace=False)
    problems = [(i, int(s)) for i in range(len(img_idx)) for s in sites]
    clean = pixels[img_idx]
    base = PerturbParams(restarts=a.restarts, steps=a.steps, prune=False, random_controls_per_image=2,
                         max_batch_rows=64)
    wb = generate_perturbations(truth, clean, problems, a.eps, dataclasses.replace(
        base, restarts=2 * a.restarts, steps=2 * a.steps, random_controls_per_image=0), seed=7)
    true_wb = _true_signed(truth, wb)
    rows = []
    for name in a.methods:
        opts = dict(METHODS[name])
        fn = model
        if opts.pop("ensemble", False):
            if members is None:
                members = [model, fit_model("layer4.0", a.pool, pixels, names, drive)[0]]
            fn = _Mean(members).eval()
        params = dataclasses.replace(base, **opts)
        g = input_gradients(fn, x[cos_idx], a.n_sites, params)
        cos = torch.nn.functional.cosine_similarity(g.flatten(2), g_true.flatten(2), dim=2)
        row = {"seed": seed, "smoothing_px": smoothing, "input_px": input_px, "method": name, "r": r,
               "cos": float(cos.median()), "cos_mean": float(cos.mean())}
        if not a.cosine_only:
            ss = generate_perturbations(fn, clean, problems, a.eps, params, seed=11)
            tgt, rnd = _true_signed(truth, ss), _true_abs_random(truth, ss, len(problems), len(a.eps))
            for e, eps in enumerate(a.eps):
                row[f"frac@{eps:g}"] = float(tgt[:, e].mean() / true_wb[:, e].mean())
                row[f"tr@{eps:g}"] = _ratio_ci(np.abs(tgt[:, e]), rnd[:, e], seed)
        rows.append(row)
        print(_fmt(row, a.eps), flush=True)
    print(f"  (setting done in {time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def _true_values(truth: nn.Module, ss) -> np.ndarray:
    from modelfit.features import images_to_tensor

    with torch.no_grad():
        return torch.cat([truth(images_to_tensor(ss.pixels[i:i + 64])) for i in range(0, len(ss.pixels), 64)]).double().numpy()


def _true_signed(truth: nn.Module, ss) -> np.ndarray:
    """(n_problems * 2, n_eps): direction * true drive change of each targeted stimulus."""
    v = _true_values(truth, ss)
    t = np.flatnonzero(ss.kind == "targeted")
    ch = (v[t, ss.site[t]] - v[ss.parent[t], ss.site[t]]) * ss.direction[t]
    n_eps = len(ss.epsilons)
    return ch.reshape(-1, n_eps, 2).transpose(0, 2, 1).reshape(-1, n_eps)


def _true_abs_random(truth: nn.Module, ss, n_problems: int, n_eps: int) -> np.ndarray:
    """(n_problems * 2, n_eps): |true change| of the random controls (two per problem and epsilon)."""
    v = _true_values(truth, ss)
    r = np.flatnonzero(ss.kind == "random")
    ch = np.abs(v[r, ss.site[r]] - v[ss.parent[r], ss.site[r]])
    out = np.zeros((n_problems * 2, n_eps))
    for e in range(n_eps):
        sel = ss.epsilon_index[r] == e
        out[:, e] = ch[sel][: n_problems * 2]
    return out


def _ratio_ci(t: np.ndarray, r: np.ndarray, seed: int) -> tuple[float, float, float]:
    from scipy.stats import bootstrap

    res = bootstrap((t, r), lambda a, b, axis=-1: a.mean(axis) / b.mean(axis), paired=True, n_resamples=2000,
                    confidence_level=0.95, method="percentile", random_state=seed)
    return float(t.mean() / r.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def _fmt(row: dict, eps) -> str:
    s = (f"seed {row['seed']} smoothing_px {row['smoothing_px']:g} input_px {row['input_px']:3d} r {row['r']:.2f} "
         f"| {row['method']:20s} cos {row['cos']:+.3f}")
    for e in eps:
        if f"frac@{e:g}" in row:
            v, lo, hi = row[f"tr@{e:g}"]
            s += f" | eps {e:g}: frac {row[f'frac@{e:g}']:+.3f} t/r {v:.2f} [{lo:.2f}, {hi:.2f}]"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 2.0])
    ap.add_argument("--input-px", type=int, nargs="+", default=[32])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--layer", default="layer3")
    ap.add_argument("--pool", default="grid2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-clean", type=int, default=400)
    ap.add_argument("--n-sites", type=int, default=16)
    ap.add_argument("--cos-images", type=int, default=6)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--sites", type=int, default=6)
    ap.add_argument("--eps", type=float, nargs="+", default=[2.0])
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cosine-only", action="store_true", help="only the gradient cosines (seconds per setting)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for seed in a.seeds:
        for sm in a.smoothing:
            for px in a.input_px:
                setting_rows(a, seed, sm, px)


if __name__ == "__main__":
    main()
