"""The day's presentation budget and what each analysis needs, told before a session (issue 23).

- :func:`check_presentations`: a plan whose stimuli x ``schedule.repeats`` exceed
  ``budget.max_presentations`` is refused with the count per kind.
- :func:`noise_sd`: the per-presentation noise s.d. of the target channels, pooled over the
  screening day's clean images (within-stimulus s.d. of the counts across repeats, spikes).
- :func:`budget_lines`: per analysis, the repeats (and presentations) needed for a CI
  half-width of ``budget.ci_halfwidth_spikes`` at that noise, beside what the plan has.
"""
from __future__ import annotations

import numpy as np

from analysis.geometry import presentations_for_halfwidth
from analysis.universal import images_for_mean_change, presentations_for_mean_change
from rig.config import Config
from rig.errors import UserError
from stimuli.geometry import line_coordinates, plane_coordinates
from stimuli.stimset import StimulusSet


def presentations_by_kind(stimset: StimulusSet, repeats: int) -> dict[str, int]:
    kinds, counts = np.unique(np.asarray(stimset.kind, dtype=str), return_counts=True)
    return {str(k): int(c) * int(repeats) for k, c in zip(kinds, counts)}


def check_presentations(cfg: Config, stimset: StimulusSet) -> int:
    """Total planned presentations; UserError (one line, the numbers) above ``budget.max_presentations``."""
    by = presentations_by_kind(stimset, cfg.schedule.repeats)
    total = sum(by.values())
    cap = cfg.budget.max_presentations
    if cap and total > cap:
        parts = ", ".join(f"{k} {v:,}" for k, v in by.items())
        raise UserError(f"refusing to plan: {len(stimset):,} stimuli x schedule.repeats = {cfg.schedule.repeats} = "
                        f"{total:,} presentations ({parts}) exceed budget.max_presentations = {cap:,}; lower "
                        "schedule.repeats, experiment.images_per_site / sites_per_day / epsilons, universal.heldout_images, "
                        "universal.random_controls, geometry.pairs_per_site / steps_per_side / plane, or raise the budget")
    return total


def expected_stimuli(cfg: Config, n_clean: int, n_sites: int) -> dict[str, int]:
    """Stimuli per kind a plan will hold, from the config alone (before anything is generated):
    ``n_clean`` distinct clean images, ``n_sites`` targets with ``experiment.images_per_site`` each."""
    eps = list(cfg.experiment.epsilons)
    live = sum(1 for e in eps if e > 0)
    per = cfg.experiment.images_per_site
    pairs = n_sites * per
    out = {"clean": n_clean, "targeted": pairs * len(eps) * 2, "random": pairs * len(eps) * cfg.perturb.random_controls_per_image}
    u, g = cfg.universal, cfg.geometry
    if u.enabled:
        out["clean"] += n_sites * (u.heldout_images + u.subspace_images)
        out["universal"] = n_sites * live * 2 * (per + u.heldout_images)
        out["universal_random"] = n_sites * live * u.random_controls * u.heldout_images
        out["subspace"] = n_sites * live * 2 * u.subspace_images
    if g.enabled and eps and max(eps) > 0:
        line = line_coordinates(max(eps), g.steps_per_side)
        points = 2 * len(line)
        if g.plane:
            axes = np.concatenate([np.stack([line, 0 * line], 1), np.stack([0 * line, line], 1)])
            points += len(plane_coordinates(max(eps), g.plane_steps_per_side, skip=axes))
        out["line"] = n_sites * min(g.pairs_per_site, per) * points
    return {k: v for k, v in out.items() if v}


def check_expected_presentations(cfg: Config, n_clean: int, n_sites: int) -> None:
    """:func:`check_presentations` before generation, on :func:`expected_stimuli`'s counts (no
    compute is spent on a plan that cannot be shown)."""
    if not cfg.budget.max_presentations:
        return
    by = {k: v * cfg.schedule.repeats for k, v in expected_stimuli(cfg, n_clean, n_sites).items()}
    total = sum(by.values())
    if total > cfg.budget.max_presentations:
        parts = ", ".join(f"{k} {v:,}" for k, v in by.items())
        raise UserError(f"refusing to plan: {total // cfg.schedule.repeats:,} stimuli x schedule.repeats = "
                        f"{cfg.schedule.repeats} = {total:,} presentations ({parts}) exceed budget.max_presentations = "
                        f"{cfg.budget.max_presentations:,}; lower schedule.repeats, experiment.images_per_site / "
                        "sites_per_day / epsilons, universal.heldout_images, universal.random_controls, "
                        "geometry.pairs_per_site / steps_per_side / plane, or raise the budget")


def noise_sd(counts: np.ndarray, stim_index: np.ndarray, valid: np.ndarray, channels: np.ndarray) -> float:
    """Median over ``channels`` of the pooled within-stimulus s.d. of counts (spikes per window)."""
    ok = np.asarray(valid, bool) & np.all(np.isfinite(counts[:, channels]), axis=1)
    c, s = counts[ok][:, channels].astype(np.float64), np.asarray(stim_index)[ok]
    if not len(c):
        return float("nan")
    order = np.argsort(s, kind="stable")
    c, s = c[order], s[order]
    _, start, n = np.unique(s, return_index=True, return_counts=True)
    keep = n >= 2
    ss = np.zeros(len(channels))
    dof = 0
    for st, k in zip(start[keep], n[keep]):
        block = c[st:st + k]
        ss += ((block - block.mean(0)) ** 2).sum(0)
        dof += k - 1
    return float(np.median(np.sqrt(ss / max(dof, 1))))


def budget_lines(cfg: Config, stimset: StimulusSet, info: dict, sigma: float) -> list[str]:
    """What each analysis needs at noise s.d. ``sigma`` (spikes) for the configured CI half-width."""
    h = cfg.budget.ci_halfwidth_spikes
    rep = cfg.schedule.repeats
    out = [(f"budget: noise s.d. {sigma:.2f} spikes per presentation (day-0 clean images, target channels); "
           f"CI half-width asked for: {h:g} spikes (95 %)")]
    if cfg.universal.enabled and info.get("shared"):
        uni = [s for s in info["shared"] if s["kind"] == "universal"]
        m = len(uni[0]["heldout"]) if uni else 0
        tau = _heldout_spread(stimset)
        need = presentations_for_mean_change(sigma, tau, m, h) if m else None
        what = (f"{need} repeats per stimulus ({need * (m + 1)} presentations per shared delta and its {m} held-out "
                f"images; this plan has {rep})" if need else
                f"no number of repeats: the images' spread alone needs >= {images_for_mean_change(tau, h)} held-out images")
        out.append(f"budget: universal held-out mean change (model's predicted image s.d. {tau:.2f} spikes, {m} images): "
                   f"{what}")
    if cfg.geometry.enabled and info.get("lines"):
        g = cfg.geometry
        t = np.concatenate([[0.0], line_coordinates(max(cfg.experiment.epsilons), g.steps_per_side)])
        rs, rc = presentations_for_halfwidth(t, sigma, h)
        n_pts = len(t)
        out.append(f"budget: line slope needs {rs} repeats per point ({rs * n_pts} presentations per line), curvature "
                   f"{rc} ({rc * n_pts}), for +-{h:g} spikes (slope in spikes per unit L2, curvature per unit^2); this "
                   f"plan has {rep}")
    return out


def _heldout_spread(stimset: StimulusSet) -> float:
    """Median over shared deltas of the s.d. over held-out images of the model's predicted change."""
    rows = np.flatnonzero((stimset.kind == "universal") & (stimset.design_role == 2))
    sds = [float(np.std(stimset.predicted_change[rows[stimset.shared_delta[rows] == sid]], ddof=1))
           for sid in np.unique(stimset.shared_delta[rows]) if np.sum(stimset.shared_delta[rows] == sid) >= 2]
    return float(np.median(sds)) if sds else 0.0
