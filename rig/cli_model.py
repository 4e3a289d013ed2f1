"""``itloop model ...``: fit the per-site readout on recorded days, print its scores, convert checkpoints.

``itloop model fit --days DIR --through D`` pools every recorded day 0..D (clean and
perturbed images alike; an image shown on several days pools its repeats), selects the
sites whose day-0 split-half reliability reaches ``screening.reliability_threshold``,
featurises each image once (feature cache), fits the readout, scores it (cross-validated
r, split-half ceiling, noise-ceiled predictivity) and writes ``DIR/model_through_DDD.h5``.
The library functions :func:`pool_days` and :func:`fit_days` do the work for the daily loop.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig.config import Config, config_from_toml_text, load_config
from rig.dayfile import read_day
from rig.errors import UserError
from rig.paths import day_path, model_path


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


def pool_days(folder: str | Path, through: int) -> PooledDays:
    """Read day files 0..``through`` of ``folder`` and pool their valid presentations by image sha1."""
    folder = Path(folder)
    if through < 0:
        raise UserError(f"--through {through}: day numbers start at 0 (screening)")
    paths = [day_path(folder, d) for d in range(through + 1)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"fitting through day {through} needs day files 0..{through} in {folder}; missing: "
                        f"{', '.join(missing[:5])}")
    ids: dict[str, int] = {}
    pixels: list[np.ndarray] = []
    first_day: list[int] = []
    names: list[str] = []
    rows_stim, rows_counts, day0 = [], [], None
    config_text = ""
    for d, path in enumerate(paths):
        day = read_day(path)
        config_text = day.config_text
        for n in day.channel_names:
            if n not in names:
                names.append(n)
        col = np.array([names.index(n) for n in day.channel_names], dtype=np.int64)
        local = np.empty(len(day.stim_ids), np.int64)
        for i, sid in enumerate(day.stim_ids):
            if sid not in ids:
                ids[sid] = len(ids)
                pixels.append(day.stimuli.pixels[i])
                first_day.append(d)
            local[i] = ids[sid]
        valid = np.asarray(day.presentations["valid"], bool)
        stim = local[np.asarray(day.presentations["stim_index"])[valid]]
        counts = np.asarray(day.counts, np.float64)[valid]
        rows_stim.append(stim)
        rows_counts.append((col, counts))
        if d == 0:
            day0 = (stim, counts, col)
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
    s0, c0, col0 = day0
    screening = _stack_repeats(s0, widen(col0, c0), n_img)
    return PooledDays(np.stack(pixels), list(ids), names, reps, np.asarray(first_day), screening,
                      list(range(through + 1)), int(len(stim_all)), config_text)


@dataclass
class FitResult:
    path: Path
    site_channels: np.ndarray
    scores: dict[str, np.ndarray]
    n_images: int
    random_init: bool
    backbone: str


def fit_days(cfg: Config, folder: str | Path, through: int, out: str | Path | None = None,
             all_sites: bool = False, progress: bool = True, overwrite: bool = False) -> FitResult:
    """Fit the readout on days 0..``through`` of ``folder`` and save it (default ``model_through_DDD.h5``)."""
    from modelfit.backbone import build_backbone
    from modelfit.features import FeatureExtractor
    from modelfit.readout import Readout
    from modelfit.scores import cross_validated_r, noise_ceiled_predictivity, select_sites, split_half_reliability
    from modelfit.store import save_fitted

    out = Path(out) if out else model_path(folder, through)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or --out to write elsewhere")
    pooled = pool_days(folder, through)
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
        backbone = build_backbone(m.backbone, m.layer, m.weights or None)
    except ValueError as e:
        raise UserError(str(e)) from None
    cache = Path(cfg.paths.feature_cache) if cfg.paths.feature_cache else None
    if cache is not None and not cache.is_absolute():
        cache = Path(folder) / cache  # relative paths live inside the experiment folder
    fx = FeatureExtractor(backbone, cache_dir=cache, batch_size=m.batch_size, channels_last=m.channels_last,
                          bf16=m.bf16, device=m.device, progress=progress)
    X = fx.transform(pooled.pixels[rows], ids=[pooled.ids[i] for i in rows])
    r = cfg.readout

    def make() -> Readout:
        return Readout(method=r.method, alphas=r.alphas, cv_folds=r.cv_folds, pls_components=r.pls_components,
                       seed=cfg.experiment.seed)

    try:
        readout = make().fit(X, Y)
        cv_r = cross_validated_r(X, Y, make, n_splits=r.score_splits, train_fraction=r.score_train_fraction,
                                 seed=cfg.experiment.seed, progress=progress)
    except ValueError as e:
        raise UserError(f"cannot fit the readout: {e}") from None
    ceiling = split_half_reliability(pooled.reps[:, rows][:, :, sites], seed=cfg.experiment.seed)
    scores = {"cv_r": cv_r, "ceiling": ceiling, "noise_ceiled": noise_ceiled_predictivity(cv_r, ceiling),
              "screening_reliability": screening_rel[sites]}
    from rig import __version__

    info = {"through_day": int(through), "days": json.dumps(pooled.days), "n_images": int(len(rows)),
            "n_valid_presentations": pooled.n_valid_presentations,
            "channel_names": json.dumps([pooled.channel_names[i] for i in sites]),
            "feature_cache_hits": int(fx.hits), "feature_precision": fx.precision,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__, "config_toml": cfg.to_toml()}
    path = save_fitted(out, readout, backbone, site_channels=sites, scores=scores, info=info)
    return FitResult(path, sites, scores, int(len(rows)), backbone.random_init, backbone.identity)


# --------------------------------------------------------------------------- CLI
def register(sub) -> None:
    model = sub.add_parser("model", help="fit and score the per-site readout; convert checkpoints")
    model.set_defaults(help_parser=model)
    msub = model.add_subparsers(dest="model_command", metavar="STEP")

    fit = msub.add_parser("fit", help="fit the readout on every recorded day up to --through")
    fit.add_argument("--days", required=True, help="experiment folder holding day_000.h5, day_001.h5, ...")
    fit.add_argument("--through", type=int, required=True, help="last day to include (days 0..D are pooled)")
    fit.add_argument("--config", help="TOML file (default: the configuration stored in day D's file)")
    fit.add_argument("--out", help="output file (default: DIR/model_through_DDD.h5)")
    fit.add_argument("--all-sites", action="store_true", help="fit every channel, not only reliable ones")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")
    fit.set_defaults(func=cmd_fit)

    score = msub.add_parser("score", help="print a fitted model's per-site scores")
    score.add_argument("model", nargs="?", help="model file (or give --days and --through)")
    score.add_argument("--days", help="experiment folder (with --through: DIR/model_through_DDD.h5)")
    score.add_argument("--through", type=int)
    score.add_argument("--json", action="store_true", help="print the table as JSON")
    score.set_defaults(func=cmd_score)

    conv = msub.add_parser("convert", help="rewrite a pickled checkpoint as a plain state dict (needs --trust)")
    conv.add_argument("checkpoint")
    conv.add_argument("out")
    conv.add_argument("--trust", action="store_true",
                      help="confirm the checkpoint comes from a trusted source (loading it can run code)")
    conv.set_defaults(func=cmd_convert)


def cmd_fit(args: argparse.Namespace) -> int:
    if args.config:
        cfg = load_config(args.config)
    else:
        p = day_path(args.days, args.through)
        if not p.exists():
            raise UserError(f"{p} does not exist; fitting through day {args.through} needs it (or pass --config)")
        cfg = config_from_toml_text(read_day(p).config_text)
    res = fit_days(cfg, args.days, args.through, out=args.out, all_sites=args.all_sites,
                   progress=not args.no_progress, overwrite=args.overwrite)
    if res.random_init:
        print(f"NOTE: backbone {res.backbone} is RANDOMLY INITIALISED (model.weights is empty); "
              "its features are not ImageNet features")
    print(f"fitted {len(res.site_channels)} sites on {res.n_images} images (days 0..{args.through}) "
          f"-> {res.path}")
    _print_table(_load(res.path))
    return 0


def _load(path):
    from modelfit.store import load_fitted

    try:
        return load_fitted(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def _print_table(m) -> None:
    from modelfit.scores import summarize

    names = json.loads(m.info.get("channel_names", "[]")) or [""] * m.n_sites
    sc = m.scores
    nan = np.full(m.n_sites, np.nan)
    cols = [sc.get(k, nan) for k in ("cv_r", "ceiling", "noise_ceiled", "screening_reliability")]
    print(f"{'site':>4} {'channel':>7} {'name':>10} {'n_img':>6} {'alpha':>9} {'cv r':>7} {'ceiling':>8} "
          f"{'r^2/ceil':>8} {'day0 rel':>8}")
    for i in range(m.n_sites):
        print(f"{i:>4} {int(m.site_channels[i]):>7} {str(names[i])[:10]:>10} {int(m.n_train[i]):>6} "
              f"{m.alpha[i]:>9.3g} " + " ".join(f"{c[i]:>{w}.3f}" for c, w in zip(cols, (7, 8, 8, 8))))
    s = summarize(sc.get("cv_r", nan), sc.get("ceiling", nan))
    print(f"median: cv r {s['median_r']:.3f}, ceiling {s['median_ceiling']:.3f}, "
          f"noise-ceiled predictivity (r^2/ceiling) {s['median_noise_ceiled']:.3f}")
    tag = "RANDOM-INIT" if m.random_init else m.weights_sha256[:16] + "..."
    print(f"backbone {m.backbone_name}/{m.layer}, weights {tag}, readout {m.method}")


def cmd_score(args: argparse.Namespace) -> int:
    if args.model:
        path = Path(args.model)
    elif args.days is not None and args.through is not None:
        path = model_path(args.days, args.through)
    else:
        raise UserError("give a model file, or --days DIR --through D")
    m = _load(path)
    if args.json:
        rows = [{"site": i, "channel": int(m.site_channels[i]), "n_train": int(m.n_train[i]),
                 "alpha": float(m.alpha[i]), **{k: float(v[i]) for k, v in m.scores.items()}}
                for i in range(m.n_sites)]
        print(json.dumps({"model": str(path), "backbone": m.backbone_name, "layer": m.layer,
                          "weights_sha256": m.weights_sha256, "sites": rows}, indent=1, allow_nan=True))
    else:
        print(f"model {path}")
        _print_table(m)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from modelfit.backbone import WeightsError, convert_checkpoint

    if Path(args.out).exists():
        raise UserError(f"{args.out} already exists; choose a new OUT file (nothing was overwritten)")
    try:
        info = convert_checkpoint(args.checkpoint, args.out, trust=args.trust)
    except WeightsError as e:
        raise UserError(str(e)) from None
    print(f"wrote {info['tensors']} tensors to {info['out']} (sha256 {info['sha256']}); "
          f"set model.weights = \"{info['out']}\"")
    return 0
