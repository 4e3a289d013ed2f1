"""Fitting the readout on recorded days: pool every day 0..D, select reliable sites, fit, score, save.

``pool_days(folder, through)`` gathers every distinct image shown on days 0..``through``
(clean and perturbed alike; an image shown on several days pools its repeats);
``fit_days(cfg, folder, through)`` selects the sites whose day-0 split-half reliability
reaches ``screening.reliability_threshold``, featurises each image once (feature cache),
fits the readout, scores it (cross-validated r grouped by clean parent on the fixed
held-out screening set, split-half ceiling of that set, noise-ceiled predictivity; the
ungrouped shuffle-split r for reference) and writes ``model_through_DDD.h5``. Used by ``itloop model fit`` and by the
daily loop's planning step.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor
from modelfit.readout import Readout
from modelfit.scores import (
    cross_validated_r,
    grouped_cross_validated_r,
    noise_ceiled_predictivity,
    select_sites,
    split_half_reliability,
)
from modelfit.store import save_fitted
from rig import __version__
from rig.config import Config
from rig.errors import UserError
from rig.paths import day_path, model_path
from rig.store.experiment import same_experiment
from rig.store.reader import DayCache
from stimuli.photos import photo_of


@dataclass
class PooledDays:
    """Every distinct image shown on the pooled days with its valid responses.

    ``reps`` (n_repeats, n_images, n_channels) spikes per window, NaN-padded (repeats from
    all days, in recording order); ``first_day`` (n_images,) the day each image was first
    shown; ``screening_reps`` the same for day 0 only (images shown on day 0).
    """

    pixels: np.ndarray
    ids: list[str]
    channel_names: list[str]
    reps: np.ndarray
    first_day: np.ndarray
    screening_reps: np.ndarray
    days: list[int]
    n_valid_presentations: int
    config_text: str
    group_ids: list[str] = field(default_factory=list)   # per image: its source photograph where known, else its clean parent's id (its own if clean)
    is_clean: np.ndarray | None = None                   # (n_images,) bool: shown as a clean image

    def held_out(self) -> np.ndarray:
        """(n_images,) bool: the fixed held-out set the model is scored on -- the clean images of
        the screening day (day 0), the same on every day."""
        clean = self.is_clean if self.is_clean is not None else np.ones(len(self.ids), bool)
        return clean & (self.first_day == 0)

    def mean_responses(self) -> np.ndarray:
        """(n_images, n_channels) mean over valid repeats; NaN where none."""
        ok = np.isfinite(self.reps)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok, self.reps, 0).sum(0) / ok.sum(0)


def _stack_repeats(stim: np.ndarray, counts: np.ndarray, n_images: int) -> np.ndarray:
    """Rows (stim index, counts) -> (n_repeats, n_images, n_channels), NaN-padded."""
    n_ch = counts.shape[1]
    per = np.bincount(stim, minlength=n_images)
    out = np.full((max(int(per.max()) if len(per) else 0, 1), n_images, n_ch), np.nan, np.float64)
    order = np.argsort(stim, kind="stable")
    starts = np.r_[0, np.cumsum(per)[:-1]]
    rank = np.empty(len(stim), np.int64)
    rank[order] = np.arange(len(stim)) - np.repeat(starts, per)
    out[rank, stim] = counts
    return out


def _day_paths(folder: Path, through: int, days: DayCache) -> list[Path]:
    """Day files 0..``through`` of ``folder``, all of one experiment; a missing or foreign one is a UserError."""
    if through < 0:
        raise UserError(f"--through {through}: day numbers start at 0 (screening)")
    paths = []
    for d in range(through + 1):        # stops at the first missing day (a huge --through returns at once)
        p = day_path(folder, d)
        if not p.exists():
            raise UserError(f"fitting through day {through} needs day files 0..{through} in {folder}; missing: {p}")
        paths.append(p)
    same_experiment([(p, days.read(p).attrs) for p in paths], "fitting")   # never pools another experiment's day
    return paths


def pool_days(folder: str | Path, through: int, days: DayCache | None = None) -> PooledDays:
    """Read day files 0..``through`` of ``folder`` (through ``days``, the process's day cache)
    and pool their valid presentations by image sha1."""
    folder = Path(folder)
    days = days if days is not None else DayCache()
    paths = _day_paths(folder, through, days)
    ids: dict[str, int] = {}
    groups: list[str] = []
    clean_flags: list[bool] = []
    pixels: list[np.ndarray] = []
    first_day: list[int] = []
    names: list[str] = []
    rows_stim, rows_counts = [], []
    day0: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    photo_of_id: dict[str, str] = {}   # clean image sha1 -> its source photograph (day 0's /stimuli/source)
    config_text = ""
    window = None
    for d, path in enumerate(paths):
        day = days.read(path)
        if window is None:
            window = day.window_ms
        elif day.window_ms != window:
            raise UserError(f"{path} counted spikes in {day.window_ms[0]:g}-{day.window_ms[1]:g} ms but day 0 in "
                            f"{window[0]:g}-{window[1]:g} ms; a readout pools one response window. Recount the "
                            "odd day with `itloop day replay FILE --out NEW --window START_MS END_MS`")
        config_text = day.config_text
        for n in day.channel_names:
            if n not in names:
                names.append(n)
        col = np.array([names.index(n) for n in day.channel_names], dtype=np.int64)
        local = np.empty(len(day.stim_ids), np.int64)
        kind = np.asarray(day.stimuli.kind).astype(str)
        parent = np.asarray(day.stimuli.parent, np.int64)
        if day.stimuli.source is not None:
            photo_of_id.update({sid: "source:" + photo_of(src) for sid, src, k in
                                zip(day.stim_ids, day.stimuli.source, kind) if k == "clean"})
        for i, sid in enumerate(day.stim_ids):
            if sid not in ids:
                ids[sid] = len(ids)
                pixels.append(day.stimuli.pixels[i])
                first_day.append(d)
                is_clean = kind[i] == "clean" or parent[i] < 0
                clean_flags.append(bool(is_clean))
                groups.append(sid if is_clean else day.stim_ids[parent[i]])   # the clean parent's id
            local[i] = ids[sid]
        valid = np.asarray(day.presentations["valid"], bool)
        stim = local[np.asarray(day.presentations["stim_index"])[valid]]
        counts = np.asarray(day.counts, np.float64)[valid]
        rows_stim.append(stim)
        rows_counts.append((col, counts))
        if d == 0:
            day0 = (stim, counts, col)
    # cross-validation groups: the source photograph where known (crops of one photograph resemble each
    # other), else the clean parent (issue 19)
    groups = [photo_of_id.get(g, g) for g in groups]
    n_img, n_ch = len(ids), len(names)
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        raise UserError(f"the pooled days show images of different sizes {sorted(shapes)}; a readout needs one "
                        "image size (refit per size or resize the stimuli)")

    def widen(col: np.ndarray, counts: np.ndarray) -> np.ndarray:
        full = np.full((len(counts), n_ch), np.nan)
        full[:, col] = counts
        return full

    stim_all = np.concatenate(rows_stim) if rows_stim else np.zeros(0, np.int64)
    counts_all = np.concatenate([widen(c, x) for c, x in rows_counts]) if rows_counts else np.zeros((0, n_ch))
    if len(stim_all) == 0:
        raise UserError(f"days 0..{through} in {folder} hold no valid presentations; nothing to fit")
    reps = _stack_repeats(stim_all, counts_all, n_img)
    assert day0 is not None   # paths[0] is day 0: read in the loop above
    s0, c0, col0 = day0
    screening = _stack_repeats(s0, widen(col0, c0), n_img)
    return PooledDays(np.stack(pixels), list(ids), names, reps, np.asarray(first_day), screening,
                      list(range(through + 1)), int(len(stim_all)), config_text, groups, np.asarray(clean_flags, bool))


@dataclass
class FitResult:
    path: Path
    site_channels: np.ndarray
    scores: dict[str, np.ndarray]
    n_images: int
    random_init: bool
    backbone: str


def fit_days(cfg: Config, folder: str | Path, through: int, out: str | Path | None = None,
             all_sites: bool = False, overwrite: bool = False,
             days: DayCache | None = None) -> FitResult:
    """Fit the readout on days 0..``through`` of ``folder`` and save it (default ``model_through_DDD.h5``)."""
    out = Path(out) if out else model_path(folder, through)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or --out to write elsewhere")
    pooled = pool_days(folder, through, days)
    # sites: reliable on the screening day (stable across refits, so site k means the same channel)
    if pooled.screening_reps.shape[0] < 2:
        raise UserError("day 0 has fewer than 2 valid repeats per image; split-half reliability needs >= 2 "
                        "(set screening.repeats >= 2 and record day 0 completely)")
    screening_rel = split_half_reliability(pooled.screening_reps, seed=cfg.experiment.seed)
    if all_sites:
        sites = np.flatnonzero(np.isfinite(screening_rel))
    else:
        sites = select_sites(screening_rel, cfg.screening.reliability_threshold)
    if len(sites) == 0:
        best = np.nanmax(screening_rel) if np.isfinite(screening_rel).any() else float("nan")
        raise UserError(f"no channel reaches screening.reliability_threshold = {cfg.screening.reliability_threshold} "
                        f"(best day-0 split-half reliability {best:.2f}); lower the threshold or use --all-sites")
    Y = pooled.mean_responses()[:, sites]
    rows = np.flatnonzero(np.isfinite(Y).any(1))
    Y = Y[rows]

    m = cfg.model
    try:
        backbone = build_backbone(m.backbone, m.layer, m.weights or None, pool=m.pool)
    except ValueError as e:
        raise UserError(str(e)) from None
    cache = Path(cfg.paths.feature_cache) if cfg.paths.feature_cache else None
    if cache is not None and not cache.is_absolute():
        cache = Path(folder) / cache  # relative paths live inside the experiment folder
    fx = FeatureExtractor(backbone, cache_dir=cache, batch_size=m.batch_size, channels_last=m.channels_last,
                          bf16=m.bf16, device=m.device)
    X = fx.transform(pooled.pixels[rows], ids=[pooled.ids[i] for i in rows])
    r = cfg.readout

    def make() -> Readout:
        return Readout(method=r.method, alphas=r.alphas, cv_folds=r.cv_folds, pls_components=r.pls_components,
                       seed=cfg.experiment.seed)

    # the score: K-fold over the fixed held-out set (the screening day's clean images), grouped by
    # clean parent; the ungrouped shuffle-split r is kept beside it for reference (leaky once
    # perturbed images and their parents are pooled)
    groups = [pooled.group_ids[i] for i in rows]
    held = pooled.held_out()[rows]
    try:
        readout = make().fit(X, Y)
        cv_r = grouped_cross_validated_r(X, Y, groups, held, make, n_folds=max(2, r.score_splits),
                                         seed=cfg.experiment.seed)
        cv_r_ungrouped = cross_validated_r(X, Y, make, n_splits=r.score_splits, train_fraction=r.score_train_fraction,
                                           seed=cfg.experiment.seed)
    except ValueError as e:
        raise UserError(f"cannot fit the readout: {e}") from None
    # the ceiling of the scored images: split-half reliability over the held-out set's repeats
    ceiling = split_half_reliability(pooled.reps[:, rows[held]][:, :, sites], seed=cfg.experiment.seed)
    scores = {"cv_r": cv_r, "ceiling": ceiling, "noise_ceiled": noise_ceiled_predictivity(cv_r, ceiling),
              "cv_r_ungrouped": cv_r_ungrouped, "screening_reliability": screening_rel[sites]}

    info = {"through_day": int(through), "days": json.dumps(pooled.days), "n_images": int(len(rows)),
            "n_valid_presentations": pooled.n_valid_presentations,
            "channel_names": json.dumps([pooled.channel_names[i] for i in sites]),
            "feature_cache_hits": int(fx.hits), "feature_precision": fx.precision,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__, "config_toml": cfg.to_toml()}
    path = save_fitted(out, readout, backbone, site_channels=sites, scores=scores, info=info)
    return FitResult(path, sites, scores, int(len(rows)), backbone.random_init, backbone.identity)
