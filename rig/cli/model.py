"""``itloop model ...``: fit the per-site readout on recorded days, print its scores, convert checkpoints.

``itloop model fit --days DIR --through D`` pools every recorded day 0..D (clean and
perturbed images alike; an image shown on several days pools its repeats), selects the
sites whose day-0 split-half reliability reaches ``screening.reliability_threshold``,
featurises each image once (feature cache), fits the readout, scores it (cross-validated
r, split-half ceiling, r / sqrt(ceiling) and the explainable-variance fraction r^2 / ceiling) and writes ``DIR/model_through_DDD.h5``.
The work is done by :mod:`rig.steps.fit` (shared with the daily loop).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rig.cli.common import add_progress_flag
from rig.config import config_from_toml_text, load_config
from rig.errors import UserError
from rig.paths import day_path, model_path
from rig.store.reader import read_config_text


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
    add_progress_flag(fit)
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
    from rig.steps.fit import fit_days

    if args.config:
        cfg = load_config(args.config)
    else:
        p = day_path(args.days, args.through)
        if not p.exists():
            raise UserError(f"{p} does not exist; fitting through day {args.through} needs it (or pass --config)")
        from rig.cli.day import stored_config

        cfg = stored_config(config_from_toml_text(read_config_text(p)), p, None)
    res = fit_days(cfg, args.days, args.through, out=args.out, all_sites=args.all_sites,
                   overwrite=args.overwrite)
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
    from modelfit.scores import (
        PREDICTIVITY_DEFINITIONS,
        brain_score_predictivity,
        summarize,
    )

    names = json.loads(m.info.get("channel_names", "[]")) or [""] * m.n_sites
    sc = m.scores
    nan = np.full(m.n_sites, np.nan)
    r, ceiling = sc.get("cv_r", nan), sc.get("ceiling", nan)
    cols = [r, ceiling, brain_score_predictivity(r, ceiling), sc.get("noise_ceiled", nan),
            sc.get("screening_reliability", nan)]
    print(f"{'site':>4} {'channel':>7} {'name':>10} {'n_img':>6} {'alpha':>9} {'r':>7} {'ceiling':>8} "
          f"{'r/sqrt(c)':>9} {'r^2/c':>7} {'day0 rel':>8}")
    for i in range(m.n_sites):
        print(f"{i:>4} {int(m.site_channels[i]):>7} {str(names[i])[:10]:>10} {int(m.n_train[i]):>6} "
              f"{m.alpha[i]:>9.3g} " + " ".join(f"{c[i]:>{w}.3f}" for c, w in zip(cols, (7, 8, 9, 7, 8))))
    s = summarize(r, ceiling)
    print(f"median: r {s['median_r']:.3f}, ceiling {s['median_ceiling']:.3f}, r / sqrt(ceiling) "
          f"{s['median_r_over_sqrt_ceiling']:.3f}, r^2 / ceiling {s['median_explainable_variance_fraction']:.3f}")
    print("definitions:")
    for k, v in PREDICTIVITY_DEFINITIONS.items():
        print(f"  {k}: {v}")
    print("  ceiling (c): split-half reliability of the recorded responses, Spearman-Brown corrected (a ceiling "
          "for r^2; sqrt(c) is the ceiling for r)")
    if "cv_r_ungrouped" in sc:
        print(f"r: folds grouped by clean parent, scored on the screening day's clean images; ungrouped "
              f"shuffle splits (leaky when perturbed images are pooled) give median {np.nanmedian(sc['cv_r_ungrouped']):.3f}")
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
        from modelfit.scores import PREDICTIVITY_DEFINITIONS, brain_score_predictivity

        nan = np.full(m.n_sites, np.nan)
        bs = brain_score_predictivity(m.scores.get("cv_r", nan), m.scores.get("ceiling", nan))
        rows = [{"site": i, "channel": int(m.site_channels[i]), "n_train": int(m.n_train[i]),
                 "alpha": float(m.alpha[i]), **{k: float(v[i]) for k, v in m.scores.items()},
                 "r_over_sqrt_ceiling": float(bs[i]),
                 "explainable_variance_fraction": float(m.scores.get("noise_ceiled", nan)[i])}
                for i in range(m.n_sites)]
        print(json.dumps({"model": str(path), "backbone": m.backbone_name, "layer": m.layer,
                          "weights_sha256": m.weights_sha256, "sites": rows,
                          "definitions": {"cv_r": PREDICTIVITY_DEFINITIONS["r"],
                                          "r_over_sqrt_ceiling": PREDICTIVITY_DEFINITIONS["r / sqrt(ceiling)"],
                                          "explainable_variance_fraction": PREDICTIVITY_DEFINITIONS["r^2 / ceiling"]}}, indent=1, allow_nan=True))
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
