"""The simulated monkey's sensitivity in the paper's units: ``itloop sim-calibrate``.

Guo et al. (2022) report, at 224 px with pixels in [0,1], that an L2 perturbation of
eps = 2.5 turns a site's clean image into a "highly preferred" one and eps = 10 gives
"super-stimuli". This module measures the simulated sites against those two anchors with a
white-box attack on their true rates (the same engine the loop uses):

- ``whitebox / pairs``: the mean best signed rate change (both directions) over (site, image)
  divided by the random-image-pair baseline mean |r(x_j) - r(x_k)| of the same site; the
  anchor is ~1 at eps 2.5;
- ``share above clean max``: the share of (site, image) whose "+" stimulus drives the site
  above its largest response to any of the clean images; the anchor is > 0.5 at eps 10.

Epsilons are given in paper units (224 px) and converted to the working size by per-pixel
RMS: ``eps_size = eps_224 * size / 224`` (the sites see every image resampled to
``sim.input_px``, so equal per-pixel RMS means equal sensitivity at any size).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

PAPER_SIZE_PX = 224
PAPER_EPSILONS = (0.5, 1.0, 2.5, 5.0, 10.0)


def to_size(eps_224: float, size_px: int) -> float:
    """An L2 epsilon at 224 px -> the epsilon with the same per-pixel RMS at ``size_px``."""
    return float(eps_224) * size_px / PAPER_SIZE_PX


@dataclass
class Calibration:
    epsilons_224: list[float]
    size_px: int
    whitebox_hz: np.ndarray            # (n_eps,) mean best signed change, Hz
    pairs_hz: float                    # random-pair baseline, mean |dr| over sites, Hz
    ratio_to_pairs: np.ndarray         # (n_eps,) whitebox / pairs (per site, then averaged)
    share_above_clean_max: np.ndarray  # (n_eps,) share of (site, image) with r(x+) > max clean r
    share_saturated: np.ndarray        # (n_eps,) share of stimuli within 5% of floor or ceiling

    def table(self) -> str:
        rows = [f"size {self.size_px} px; random-pair baseline {self.pairs_hz:.1f} Hz (mean over sites)",
                "eps@224  eps@size  whitebox Hz  whitebox/pairs  share > clean max  share within 5% of floor/ceiling"]
        for k, e in enumerate(self.epsilons_224):
            rows.append(f"{e:7.2f}  {to_size(e, self.size_px):8.3f}  {self.whitebox_hz[k]:11.1f}  {self.ratio_to_pairs[k]:14.2f}"
                        f"  {self.share_above_clean_max[k]:17.2f}  {self.share_saturated[k]:.2f}")
        return "\n".join(rows)


def calibration_curve(sim_params, size_px: int = PAPER_SIZE_PX, epsilons_224=PAPER_EPSILONS, n_sites: int = 6,
                      n_images: int = 6, n_pool: int = 64, restarts: int = 8, steps: int = 32,
                      seed: int = 0) -> Calibration:
    """White-box sensitivity of ``n_sites`` simulated sites on ``n_images`` clean images per site."""
    import torch

    from analysis.stats import saturation_share
    from sim.monkey import SimulatedMonkey
    from stimuli.images import builtin_images
    from stimuli.perturb import PerturbParams, generate_perturbations

    monkey = SimulatedMonkey(sim_params)
    pool = builtin_images(n_pool, size_px, seed=seed + 101)
    clean_rates = monkey.true_rates(pool)
    sites = np.arange(min(n_sites, monkey.n_channels))
    rng = np.random.default_rng(seed)
    j, k = rng.integers(0, n_pool, size=(2, 2000))
    keep = j != k
    pairs_site = np.abs(clean_rates[j[keep]] - clean_rates[k[keep]]).mean(0)[sites]   # (sites,)
    imgs = np.arange(n_images)
    problems = [(int(i), int(s)) for s in sites for i in imgs]
    eps = [to_size(e, size_px) for e in epsilons_224]
    params = PerturbParams(restarts=restarts, steps=steps, prune=False, step_growth=1.25, early_stop=True,
                           random_controls_per_image=0, max_batch_rows=256)
    with torch.random.fork_rng(devices=[]):
        ss = generate_perturbations(monkey.true_rate_module().eval(), pool[:n_images], problems, eps, params, seed=seed)
    t = ss.kind == "targeted"
    change = (ss.predicted_change[t] * ss.direction[t]).reshape(len(problems), len(eps), 2)
    shown_rates = monkey.true_rates(ss.pixels[t]).reshape(len(problems), len(eps), 2, -1)
    site_of = np.array([s for _, s in problems])
    plus = shown_rates[np.arange(len(problems)), :, 0, site_of]        # (problems, eps) rate of the "+" stimulus
    above = plus > clean_rates.max(0)[site_of][:, None]
    wb_site = np.stack([change[site_of == s].mean(axis=(0, 2)) for s in sites])      # (sites, eps)
    sat = [saturation_share(shown_rates[:, e].reshape(-1, monkey.n_channels)[:, sites], monkey.baseline_hz[sites],
                            sim_params.peak_hz) for e in range(len(eps))]
    return Calibration(list(map(float, epsilons_224)), int(size_px), wb_site.mean(0), float(pairs_site.mean()),
                       (wb_site / pairs_site[:, None]).mean(0), above.mean(0), np.asarray(sat))


def calibrate_command(config: str | None, size_px: int, n_sites: int, n_images: int, restarts: int, steps: int,
                      overrides: list[str]) -> str:
    """The text ``itloop sim-calibrate`` prints: the sim parameters, the curve and the anchors."""
    from rig.config import Config, load_config
    from sim.monkey import SimParams

    cfg = load_config(config) if config else Config()
    p = dict(dataclasses.asdict(cfg.sim))
    for kv in overrides:
        key, _, value = kv.partition("=")
        if key not in p or isinstance(p[key], list):
            from rig.errors import UserError

            raise UserError(f"--set {kv}: {key!r} is not a scalar sim.* key; choose one of "
                            f"{sorted(k for k, v in p.items() if not isinstance(v, list))}")
        p[key] = type(p[key])(float(value))
    cal = calibration_curve(SimParams(**p), size_px=size_px, n_sites=n_sites, n_images=n_images,
                            restarts=restarts, steps=steps)
    return "\n".join([
        f"sim: linear_fraction {p['linear_fraction']}, model_alignment {p['model_alignment']}, input_px {p['input_px']}, "
        f"smoothing_px {p['smoothing_px']}, drive_gain {p['drive_gain']}, seed {p['seed']}",
        cal.table(),
        "anchors (Guo et al. 2022): whitebox/pairs ~ 1 at eps 2.5; share > clean max > 0.5 at eps 10"])
