"""The daily loop's planning step (DESIGN section 2): refit, choose, perturb, schedule.

``plan_day(cfg, folder, day)`` for a closed-loop day ``day >= 1``:

1. refit the readout on every recorded day ``< day`` (clean and perturbed images alike);
2. target the ``experiment.sites_per_day`` most reliable fitted sites (day-0 split-half
   reliability, so the targets are the same channels every day);
3. give each target ``experiment.images_per_site`` clean images from the day-0 pool
   (seeded by the experiment seed, so every day perturbs the same images: days are
   paired, and the simulation's ground truth is computed once);
4. generate targeted perturbations at every epsilon in both directions, plus model-free
   random-direction controls;
5. build the RSVP schedule and write ``day_DDD.plan.h5`` with the model and code that
   made every stimulus.
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rig import __version__
from rig.compute.generate import FittedModelFiles, generate_stimuli
from rig.config import Config
from rig.errors import UserError
from rig.paths import day_path, model_path, plan_path
from rig.session.schedule import build_schedule
from rig.steps.beyond import plan_beyond
from rig.steps.fit import fit_days
from rig.steps.preflight import preflight
from rig.steps.presentations import check_expected_presentations
from rig.steps.record import slot_seconds
from rig.store.dayfile import write_plan
from rig.store.experiment import same_experiment
from rig.store.reader import DayCache
from stimuli.perturb import PerturbParams

log = logging.getLogger(__name__)


def code_version() -> str:
    """itloop's version plus the git commit of the source tree, when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}" if commit else __version__


def ensure_model(cfg: Config, folder: Path, through: int, days: DayCache | None = None) -> Path:
    """The readout fitted on days 0..``through``; fitted (and saved) if not there yet."""
    path = model_path(folder, through)
    if not path.exists():
        fit_days(cfg, folder, through, days=days)
    return path


def target_sites(model, n: int) -> np.ndarray:
    """Indices (into the model's sites) of the ``n`` most reliable fitted sites."""
    rel = np.asarray(model.scores.get("screening_reliability", np.zeros(model.n_sites)), float)
    order = np.argsort(-np.nan_to_num(rel, nan=-np.inf), kind="stable")
    return np.sort(order[: min(n, model.n_sites)])


def choose_images(n_pool: int, n_sites: int, per_site: int, seed: int) -> np.ndarray:
    """(n_sites, per_site) indices into the clean pool: distinct across sites while the
    pool lasts, the same every day for a given seed."""
    if per_site > n_pool:
        raise UserError(f"experiment.images_per_site = {per_site} but the clean pool has only {n_pool} images; "
                        "lower images_per_site or raise images.n_clean")
    rng = np.random.default_rng([seed, 17])
    perm = rng.permutation(n_pool)
    need = n_sites * per_site
    order = np.concatenate([perm] * (-(-need // n_pool)))[:need] if need > n_pool else perm[:need]
    return order.reshape(n_sites, per_site)


def plan_day(cfg: Config, folder: str | Path, day: int, days: DayCache | None = None) -> Path:
    """Write ``day_DDD.plan.h5`` for closed-loop day ``day`` (see the module docstring);
    ``days``: the process's day cache (each day file is read once)."""
    folder = Path(folder)
    days = days if days is not None else DayCache()
    if day < 1:
        raise UserError("day 0 is the screening day; it needs no plan step (run `itloop day run --day 0`)")
    preflight(cfg)
    out = plan_path(folder, day)
    if out.exists():
        raise UserError(f"{out} already exists; a plan is never overwritten (delete it yourself to re-plan)")
    for d in range(day):
        p = day_path(folder, d)
        if not p.exists():
            raise UserError(f"day {day} is planned from days 0..{day - 1}, but {p} does not exist; record day {d} first")
        if not days.read(p).complete:  # read once: the refit below pools these same days
            raise UserError(f"{p} is not complete; finish it with `itloop day run --day {d} --out {folder} --resume`")
    experiment = same_experiment([(day_path(folder, d), days.read(day_path(folder, d)).attrs) for d in range(day)],
                                 f"planning day {day}")
    mpath = ensure_model(cfg, folder, day - 1, days)
    source = FittedModelFiles.from_paths(mpath, cfg.model.weights or None)   # each file read once
    model = source.fitted()
    targets = target_sites(model, cfg.experiment.sites_per_day)
    screening = days.read(day_path(folder, 0))
    pool = np.flatnonzero(screening.stimuli.kind == "clean")
    chosen = choose_images(len(pool), len(targets), cfg.experiment.images_per_site, cfg.experiment.seed)
    unique = np.unique(chosen)
    clean = screening.stimuli.pixels[pool[unique]]
    local = {int(g): i for i, g in enumerate(unique)}
    problems = [(local[int(chosen[k, j])], int(targets[k])) for k in range(len(targets)) for j in range(chosen.shape[1])]
    check_expected_presentations(cfg, len(unique), len(targets))   # budget.max_presentations, before any compute
    params = PerturbParams.from_config_section(cfg.perturb)
    log.info(f"day {day}: perturbing {len(unique)} clean images for {len(targets)} sites at "
             f"{len(cfg.experiment.epsilons)} epsilons, both directions "
             f"({len(problems) * len(cfg.experiment.epsilons) * 2} stimuli)")
    stimset, params = generate_stimuli(cfg.compute, clean, problems, list(cfg.experiment.epsilons), params,
                                       seed=cfg.day_seed(day), device=cfg.model.device, source=source,
                                       report=lambda line: log.info("day %d: %s", day, line))
    if screening.stimuli.source is not None:   # issue 19: every stimulus records its source (a derived one: its parent's)
        clean_source = screening.stimuli.source[pool[unique]]
        stimset.source = np.where(stimset.parent >= 0, clean_source[np.maximum(stimset.parent, 0)],
                                  clean_source[np.minimum(np.arange(len(stimset)), len(clean_source) - 1)])
    stimset, beyond_attrs = plan_beyond(cfg, stimset, model, chosen, unique, targets, screening, pool, params, day)
    # the engine names sites by model column; the day file names them by recording channel
    site_channels = np.asarray(model.site_channels, np.int64)
    stimset.site = np.where(stimset.site >= 0, site_channels[np.maximum(stimset.site, 0)], -1)
    schedule = build_schedule(stimset.parent, cfg.schedule.repeats, cfg.rsvp.presentations_per_trial,
                              cfg.day_seed(day), slot_seconds(cfg), cfg.schedule.min_parent_separation_min)
    mean_sep, min_sep = schedule.parent_separation_min(stimset.parent)
    info = {
        "model_file": mpath.name, "model_sha256": source.fitted_sha256, "backbone": model.backbone_name,
        "layer": model.layer, "weights_sha256": model.weights_sha256, "random_init": bool(model.random_init),
        "site_channels": site_channels, "target_channels": site_channels[targets],
        "coef": np.asarray(model.coef), "intercept": np.asarray(model.intercept),
        "feature_mean": np.asarray(model.feature_mean), "feature_scale": np.asarray(model.feature_scale),
        "clean_pool_index": pool[unique], "code_version": code_version(),
        "perturb_params": asdict(params),
    }
    write_plan(out, cfg, day, stimset, schedule, model_info=info,
               attrs={"planned_parent_separation_mean_min": mean_sep, "planned_parent_separation_min_min": min_sep,
                      "random_init_model": bool(model.random_init), **beyond_attrs},
               experiment_uuid=experiment or "")
    if min_sep < cfg.schedule.min_parent_separation_min:
        log.warning(f"day {day}: WARNING: some perturbed images are only {min_sep:.2f} min from their parents "
                    f"(asked for schedule.min_parent_separation_min = {cfg.schedule.min_parent_separation_min}); "
                    "the session is too short for that separation")
    log.info(f"day {day}: plan written to {out} ({len(stimset)} stimuli, {len(schedule)} presentations, "
             f"perturbed images {mean_sep:.1f} min from their parents on average, {min_sep:.1f} min at least)")
    return out
