"""The plan step's stimuli beyond the paper (issue 23): site-universal perturbations, the
subspace of a site's designs, and lines / planes through clean images.

:func:`add_beyond_stimuli` is called by :func:`rig.steps.plan.plan_day` after the day's
targeted stimuli exist (sites are still model columns there). With ``[universal]`` and
``[geometry]`` both off (the default) it returns the set unchanged. Otherwise, per target
site (model column ``k``, its images ``chosen[k]``):

- ``[universal]``: for every epsilon of the grid and both directions one shared delta
  designed on the site's images (:func:`stimuli.universal.solve_universal`), shown on them
  (``design_role = 1``) and on ``heldout_images`` new clean images no design saw
  (``design_role = 2``); ``random_controls`` model-free shared deltas per epsilon on the
  held-out images; the singular spectrum of the site's designed directions at the largest
  epsilon and, with ``subspace_images``, stimuli along its top singular direction on new
  images;
- ``[geometry]``: for the site's first ``pairs_per_site`` images, points ``x + t u`` and
  ``x + t v`` (u: the designed direction at the largest epsilon, v: a seeded random unit
  vector orthogonal to it), t up to the largest epsilon, and optionally a grid on their plane.

New clean images are appended after the existing stimuli (kind "clean"). The returned
``info`` (JSON-able) names every shared delta and the subspace numbers; the plan stores it.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch

from modelfit.features import images_to_tensor
from rig.config import Config
from stimuli.geometry import (
    designed_directions,
    line_coordinates,
    orthogonal_direction,
    plane_coordinates,
    plane_stimuli,
    principal_directions,
    subspace_fractions,
)
from stimuli.modes import EngineMode
from stimuli.objective import SiteObjective
from stimuli.params import PerturbParams
from stimuli.stimset import StimulusSet
from stimuli.universal import (
    random_shared_delta,
    shared_delta_stimuli,
    solve_universal,
    universal_passes,
)

log = logging.getLogger(__name__)


def enabled(cfg: Config) -> bool:
    return bool(cfg.universal.enabled or cfg.geometry.enabled)


def universal_params(cfg: Config, params: PerturbParams) -> PerturbParams:
    """The loop's optimiser rules with ``[universal]``'s restarts and steps (0 = the loop's)."""
    u = cfg.universal
    return dataclasses.replace(params, restarts=u.restarts or params.restarts, steps=u.steps or params.steps)


@dataclasses.dataclass
class _Parts:
    """Stimuli being added: pixel blocks and their columns, plus appended clean images."""

    n_base: int
    pixels: list
    rows: list
    new_clean: list
    new_clean_pool: list

    def add_clean(self, px: np.ndarray, pool_index: int) -> int:
        self.new_clean.append(px)
        self.new_clean_pool.append(int(pool_index))
        return self.n_base + len(self.new_clean) - 1

    def add(self, px: np.ndarray, **cols) -> None:
        self.pixels.append(px)
        self.rows.append(cols)


def _next_id(info: dict) -> int:
    """One id space for shared deltas and lines (``shared_delta`` column): ids are never reused."""
    return len(info["shared"]) + len(info["lines"])


def _fresh_images(pool_pixels: np.ndarray, used: set[int], n: int, rng: np.random.Generator) -> list[int]:
    free = np.array(sorted(set(range(len(pool_pixels))) - used), np.int64)
    if len(free) < n:
        from rig.errors import UserError
        raise UserError(f"[universal] needs {n} more clean images no site uses, but the day-0 pool has only "
                        f"{len(free)} left; lower universal.heldout_images / subspace_images or raise images.n_clean")
    pick = rng.choice(free, size=n, replace=False)
    used.update(int(p) for p in pick)
    return [int(p) for p in pick]


def add_beyond_stimuli(cfg: Config, stimset: StimulusSet, module, chosen_local: np.ndarray, targets: np.ndarray,
                       pool_pixels: np.ndarray, used_pool: np.ndarray, params: PerturbParams,
                       seed: int) -> tuple[StimulusSet, dict]:
    """``stimset`` with the issue-23 stimuli appended, and the info the plan stores (see module doc).

    ``chosen_local``: (n_sites, per_site) rows of ``stimset``'s clean images per target;
    ``targets``: model columns; ``pool_pixels``: the day-0 clean pool; ``used_pool``: pool
    indices already in the set (never used again as held-out images).
    """
    info: dict = {"shared": [], "subspace": [], "lines": []}
    if not enabled(cfg):
        return stimset, info
    objective = SiteObjective(module, cfg.model.device, EngineMode.of(params))   # params: resolved by the engine's plan step
    parts = _Parts(len(stimset), [], [], [], [])
    rng = np.random.default_rng([seed, 23])
    used = {int(p) for p in np.asarray(used_pool).ravel()}
    eps = [float(e) for e in stimset.epsilons]
    with objective.session():
        for k, site in enumerate(targets):
            images = [int(i) for i in chosen_local[k]]
            dirs, top = _site_directions(stimset, int(site), images)
            if cfg.universal.enabled:
                held = [parts.add_clean(pool_pixels[p], p) for p in _fresh_images(pool_pixels, used, cfg.universal.heldout_images, rng)]
                _universal_for_site(cfg, stimset, parts, objective, int(site), images, held, eps, params, seed, info)
                info["subspace"].append(_subspace_numbers(int(site), dirs, cfg.universal.subspace_k))
                if cfg.universal.subspace_images and top is not None:
                    new = [parts.add_clean(pool_pixels[p], p) for p in _fresh_images(pool_pixels, used, cfg.universal.subspace_images, rng)]
                    _subspace_stimuli(stimset, parts, int(site), new, top, eps, info)
            if cfg.geometry.enabled:
                _lines_for_site(cfg, stimset, parts, int(site), images, eps, seed, info)
    out = _assemble(stimset, parts)
    _predicted(objective, out, stimset_rows=len(stimset))
    return out, info


def _all_pixels(stimset: StimulusSet, parts: _Parts) -> Callable[[int], np.ndarray]:
    def px(i: int) -> np.ndarray:
        return stimset.pixels[i] if i < parts.n_base else parts.new_clean[i - parts.n_base]
    return px


def _site_directions(stimset: StimulusSet, site: int, images: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Designed unit directions of ``site`` at the largest epsilon, direction +1 (one row per image
    that has one, the flattened (H, W, 3) image) and the top singular direction (H, W, 3) or None."""
    shape = stimset.pixels.shape[1:]
    if not len(stimset.epsilons):
        return np.zeros((0, int(np.prod(shape)))), None
    top = int(np.argmax(stimset.epsilons))
    rows = []
    for i in images:
        r = np.flatnonzero((stimset.kind == "targeted") & (stimset.site == site) & (stimset.parent == i)
                           & (stimset.direction == 1) & (stimset.epsilon_index == top))
        rows += [int(r[0])] if len(r) else []
    if not rows:
        return np.zeros((0, int(np.prod(shape)))), None
    d = designed_directions(stimset.pixels[rows], stimset.pixels[stimset.parent[rows]], stimset.direction[rows])
    if not np.any(d):
        return d, None
    _, vt = principal_directions(d)
    return d, vt[0].reshape(shape)


def _subspace_numbers(site: int, dirs: np.ndarray, ks: list[int]) -> dict:
    s, _ = principal_directions(dirs) if len(dirs) else (np.zeros(0), None)
    frac = subspace_fractions(dirs, ks) if len(dirs) >= 2 else np.full((len(dirs), len(ks)), np.nan)
    return {"site": site, "singular_values": [float(v) for v in s], "k": list(ks),
            "heldout_fraction": np.nanmean(frac, axis=0).tolist() if len(frac) else [],
            "heldout_fraction_per_image": frac.tolist(), "dim": int(dirs.shape[1]) if dirs.ndim == 2 else 0}


def _universal_for_site(cfg, stimset, parts, objective, site, images, held, eps, params, seed, info) -> None:
    up = universal_params(cfg, params)
    px = _all_pixels(stimset, parts)
    design = images_to_tensor(stimset.pixels[images]).to(objective.device)
    pool = np.stack([px(i) for i in images + held])
    for ie, e in enumerate(eps):
        if e <= 0:
            continue
        for sign in (1, -1):
            sid = _next_id(info)
            sol = solve_universal(objective, design, site, e, sign, up, seed=seed * 1000 + sid)
            d = sol.delta.permute(1, 2, 0).double().numpy()
            shown, es = shared_delta_stimuli(pool, range(len(pool)), d, e)
            for j, parent in enumerate(images + held):
                parts.add(shown[j], kind="universal", parent=parent, site=site, epsilon_requested=e, epsilon_shown=es[j],
                          direction=sign, budget_passes=sol.passes if j == 0 else 0, epsilon_index=ie,
                          shared_delta=sid, design_role=1 if j < len(images) else 2)
            info["shared"].append({"id": sid, "kind": "universal", "site": site, "epsilon": e, "direction": sign,
                                   "objective": sol.objective, "passes": sol.passes, "design": images, "heldout": held})
        for r in range(cfg.universal.random_controls):
            sid = _next_id(info)
            d = random_shared_delta(stimset.pixels.shape[1:], e, seed=seed * 1000 + sid)
            shown, es = shared_delta_stimuli(np.stack([px(i) for i in held]), range(len(held)), d, e)
            for j, parent in enumerate(held):
                parts.add(shown[j], kind="universal_random", parent=parent, site=site, epsilon_requested=e,
                          epsilon_shown=es[j], direction=0, epsilon_index=ie, shared_delta=sid, design_role=2)
            info["shared"].append({"id": sid, "kind": "universal_random", "site": site, "epsilon": e, "direction": 0,
                                   "design": [], "heldout": held, "draw": r})
    log.info("universal: site %d done (%d shared deltas so far)", site, len(info["shared"]))


def _subspace_stimuli(stimset, parts, site, new, top, eps, info) -> None:
    px = _all_pixels(stimset, parts)
    pool = np.stack([px(i) for i in new])
    for ie, e in enumerate(eps):
        if e <= 0:
            continue
        for sign in (1, -1):
            sid = _next_id(info)
            shown, es = shared_delta_stimuli(pool, range(len(new)), sign * e * top, e)
            for j, parent in enumerate(new):
                parts.add(shown[j], kind="subspace", parent=parent, site=site, epsilon_requested=e, epsilon_shown=es[j],
                          direction=sign, epsilon_index=ie, shared_delta=sid, design_role=2)
            info["shared"].append({"id": sid, "kind": "subspace", "site": site, "epsilon": e, "direction": sign,
                                   "design": [], "heldout": new})


def _lines_for_site(cfg, stimset, parts, site, images, eps, seed, info) -> None:
    g = cfg.geometry
    t_max = max(eps)
    line = line_coordinates(t_max, g.steps_per_side)
    coords = np.concatenate([np.stack([line, 0 * line], 1), np.stack([0 * line, line], 1)])
    if g.plane:
        coords = np.concatenate([coords, plane_coordinates(t_max, g.plane_steps_per_side, skip=coords)])
    dirs, _ = _site_directions(stimset, site, images[:g.pairs_per_site])
    for j, image in enumerate(images[:min(g.pairs_per_site, len(dirs))]):
        if not np.any(dirs[j]):
            continue
        lid = _next_id(info)
        u = dirs[j].reshape(stimset.pixels.shape[1:])
        v = orthogonal_direction(u, seed=seed * 1000 + lid)
        shown, got, es = plane_stimuli(stimset.pixels[image], u, v, coords)
        for m in range(len(shown)):
            parts.add(shown[m], kind="line", parent=image, site=site, epsilon_requested=float(np.hypot(*coords[m])),
                      epsilon_shown=es[m], direction=0, epsilon_index=-1, shared_delta=lid, coord_u=got[m, 0],
                      coord_v=got[m, 1])
        info["lines"].append({"id": lid, "site": site, "image": image, "t_max": t_max, "plane": bool(g.plane),
                              "points": len(shown), "steps_per_side": g.steps_per_side,
                              "plane_steps_per_side": g.plane_steps_per_side})


def _assemble(stimset: StimulusSet, parts: _Parts) -> StimulusSet:
    """The base set, the appended clean images, then the new stimuli (parents are fixed indices)."""
    n_clean = len(parts.new_clean)
    px = [stimset.pixels] + ([np.stack(parts.new_clean)] if n_clean else []) + ([np.stack(parts.pixels)] if parts.pixels else [])
    cols = {c: list(getattr(stimset, c)) for c in StimulusSet.COLUMNS + StimulusSet.GEOMETRY_COLUMNS}
    clean_defaults = StimulusSet(np.zeros((n_clean, 1, 1, 3), np.uint8)) if n_clean else None
    for c in cols:
        if clean_defaults is not None:
            cols[c] += list(getattr(clean_defaults, c))
    new = StimulusSet(np.zeros((len(parts.rows), 1, 1, 3), np.uint8))   # defaults for every column
    for c in cols:
        vals = list(getattr(new, c))
        for i, row in enumerate(parts.rows):
            if c in row:
                vals[i] = row[c]
        cols[c] += vals
    return StimulusSet(np.concatenate(px), **{c: np.asarray(v, dtype=object if c == "kind" else None) for c, v in cols.items()},
                       epsilons=stimset.epsilons)


def _predicted(objective: SiteObjective, out: StimulusSet, stimset_rows: int) -> None:
    """``predicted_change`` of the new stimuli: f_site(shown) - f_site(parent), the model's, spikes."""
    rows = np.flatnonzero((np.arange(len(out)) >= stimset_rows) & (out.parent >= 0))
    if not len(rows):
        return
    with objective.session(), torch.no_grad():
        need = np.unique(np.concatenate([rows, out.parent[rows]]))
        f = {}
        for i in range(0, len(need), 64):
            idx = need[i:i + 64]
            vals = objective.predict_all(images_to_tensor(out.pixels[idx]).to(objective.device)).double().cpu().numpy()
            f.update({int(s): vals[j] for j, s in enumerate(idx)})
    for r in rows:
        s = int(out.site[r])
        out.predicted_change[r] = f[int(r)][s] - f[int(out.parent[r])][s]


def universal_cost(cfg: Config, params: PerturbParams, n_sites: int, n_design: int) -> int:
    """Forward+backward passes of the day's universal problems (exact: no early stopping)."""
    if not cfg.universal.enabled:
        return 0
    live = sum(1 for e in cfg.experiment.epsilons if e > 0)
    return n_sites * live * 2 * universal_passes(n_design, universal_params(cfg, params))


def plan_beyond(cfg: Config, stimset: StimulusSet, model, chosen: np.ndarray, unique: np.ndarray, targets: np.ndarray,
                screening, pool: np.ndarray, params: PerturbParams, day: int) -> tuple[StimulusSet, dict]:
    """The plan step's hook: the issue-23 stimuli (when enabled), the presentation budget check
    and the budget lines; returns the set and the plan's extra root attributes."""
    import json

    from rig.steps.presentations import budget_lines, check_presentations, noise_sd

    def say(line: str) -> None:
        log.info("day %d: %s", day, line)
    attrs: dict = {}
    if enabled(cfg):
        local = {int(g): i for i, g in enumerate(unique)}
        chosen_local = np.vectorize(lambda g: local[int(g)])(chosen)
        if cfg.universal.enabled:
            say(f"cost: universal: {universal_cost(cfg, params, len(targets), chosen.shape[1]):,} forward+backward passes "
                f"({len(targets)} sites x {sum(1 for e in cfg.experiment.epsilons if e > 0)} epsilons x 2 directions)")
        module = model.module(weights=cfg.model.weights or None, device=cfg.model.device)
        _check_universal_deadline(cfg, module, stimset, targets, params, len(chosen[0]), say)
        stimset, info = add_beyond_stimuli(cfg, stimset, module, chosen_local, targets, screening.stimuli.pixels[pool],
                                           unique, params, cfg.day_seed(day))
        attrs["beyond_json"] = json.dumps(info)
        channels = np.asarray(model.site_channels, np.int64)[targets]
        sigma = noise_sd(screening.counts, screening.presentations["stim_index"], screening.presentations["valid"], channels)
        for line in budget_lines(cfg, stimset, info, sigma):
            say(line)
    total = check_presentations(cfg, stimset)
    if cfg.budget.max_presentations:
        say(f"budget: {total:,} presentations planned of budget.max_presentations = {cfg.budget.max_presentations:,}")
    return stimset, attrs


def _check_universal_deadline(cfg: Config, module, stimset: StimulusSet, targets: np.ndarray, params: PerturbParams,
                              n_design: int, say) -> None:
    """With ``compute.max_hours`` or ``compute.deadline`` set: time the model's passes (as the
    engine's cost model does) and refuse universal problems that cannot end in time."""
    if not cfg.universal.enabled or not (cfg.compute.max_hours > 0 or cfg.compute.deadline):
        return
    from rig.compute.budget import Estimate, check_deadline
    from stimuli.cost import RunSize, measure_pass_rate

    clean = stimset.pixels[stimset.kind == "clean"]
    rate = measure_pass_rate(module, clean, targets, params, cfg.model.device, cfg.compute.probe_batches)
    live = sum(1 for e in cfg.experiment.epsilons if e > 0)
    size = RunSize(problems=len(targets) * live * 2, passes=universal_cost(cfg, params, len(targets), n_design),
                   forward_rows=0, stimuli=0)
    est = Estimate(size, rate, 1, rate.peak_bytes)
    for line in est.lines():
        say(f"universal {line}")
    check_deadline(est, cfg.compute)
