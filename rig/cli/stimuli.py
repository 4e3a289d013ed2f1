"""``itloop stimuli generate``: design targeted perturbations with a fitted model.

    itloop stimuli generate --model MODELFILE --out FILE [--config TOML] [--sites 0,3]
                            [--images-per-site K] [--epsilons 0.5,1,2] [--restarts R] [--steps T]

Clean images come from ``[images]`` (builtin or a folder); for every chosen site,
``images_per_site`` of them are drawn (seeded); every (image, site) is perturbed at every
epsilon in both directions (``[perturb]`` settings), plus the model-free random controls.
The result is written to FILE (``.npz``: ``pixels`` uint8 (n, H, W, 3) and one array per
provenance column of :class:`stimuli.stimset.StimulusSet`), atomically (temp file + rename).
A progress bar shows problems done, rows per second and the ETA (``--no-progress`` hides it).

Before generating, the cost is printed: passes, the measured passes/s on the device (a few
timed batches), expected time and peak memory; a run that would end after
``compute.deadline`` / ``compute.max_hours`` is refused. ``[compute] scheduler`` spreads the
work over a Dask cluster (a ``tcp://`` scheduler address or ``"slurm"``), in shards.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from modelfit.files import atomic_path
from rig.cli.common import add_progress_flag
from rig.config import load_config
from rig.errors import UserError


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("stimuli", help="design stimuli (targeted perturbations, random controls)")
    sub = p.add_subparsers(dest="stimuli_command", metavar="SUBCOMMAND")
    p.set_defaults(help_parser=p)
    g = sub.add_parser("generate", help="targeted perturbations of clean images under a fitted model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", required=True, help="fitted model file (itloop model fit output, .h5)")
    g.add_argument("--out", required=True, help="output stimulus file (.npz)")
    g.add_argument("--config", help="experiment TOML (defaults if omitted)")
    g.add_argument("--weights", help="backbone weights file, if it moved since the model was fitted")
    g.add_argument("--sites", type=_int_list, help="site indices of the model (default: the first experiment.sites_per_day)")
    g.add_argument("--images-per-site", type=int, help="clean images per site (default: experiment.images_per_site)")
    g.add_argument("--epsilons", type=_float_list, help="L2 norms, pixels in [0,1] (default: experiment.epsilons)")
    g.add_argument("--restarts", type=int, help="override perturb.restarts")
    g.add_argument("--steps", type=int, help="override perturb.steps")
    g.add_argument("--seed", type=int, help="override experiment.seed")
    g.add_argument("--device", help="torch device (default: model.device)")
    add_progress_flag(g)
    g.set_defaults(func=cmd_generate)


def save_stimulus_set(path: str | Path, ss) -> Path:
    """Write a StimulusSet to ``.npz`` atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"--out {path}: the stimulus file must end in .npz")
    if not path.parent.exists():
        raise UserError(f"--out {path}: folder {path.parent} does not exist; create it first")
    cols = {c: getattr(ss, c) for c in ss.COLUMNS}
    cols["kind"] = np.asarray(ss.kind, dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, pixels=ss.pixels, epsilons=ss.epsilons, **cols)
    return path


def load_stimulus_set(path: str | Path):
    """Read a StimulusSet written by :func:`save_stimulus_set`."""
    from rig.store.upgrade import legacy_epsilon_index
    from stimuli.stimset import StimulusSet

    with np.load(path, allow_pickle=False) as z:
        cols = {c: z[c] for c in StimulusSet.COLUMNS if c in z}
        cols["kind"] = cols["kind"].astype(object)
        if "epsilon_index" in cols:
            grid = z["epsilons"]
        else:  # written before the planned grid was stored
            cols["epsilon_index"], grid = legacy_epsilon_index(cols["kind"], cols["epsilon_requested"])
        return StimulusSet(z["pixels"], **cols, epsilons=grid)


def cmd_generate(args) -> int:
    from rig.compute.generate import FittedModelFiles, generate_stimuli
    from stimuli.images import clean_images
    from stimuli.perturb import PerturbParams

    cfg = load_config(args.config)
    if not Path(args.model).is_file():
        raise UserError(f"--model {args.model}: no such file; fit one with `itloop model fit`")
    device = args.device or cfg.model.device

    def build(make):
        try:
            return make()
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"--model {args.model}: cannot be used: {exc}") from None

    source = build(lambda: FittedModelFiles.from_paths(args.model, args.weights))   # each file read once
    fitted = source.fitted()
    if cfg.compute.scheduler == "local":  # fail early, before images and the cost probe, on an unusable model
        build(lambda: source.build(device))
    n_sites = fitted.n_sites
    sites = args.sites if args.sites is not None else list(range(min(cfg.experiment.sites_per_day, n_sites)))
    bad = [s for s in sites if not 0 <= s < n_sites]
    if bad:
        raise UserError(f"--sites {bad}: out of range; the model predicts {n_sites} sites (0..{n_sites - 1})")
    per_site = args.images_per_site or cfg.experiment.images_per_site
    epsilons = args.epsilons or cfg.experiment.epsilons
    seed = cfg.experiment.seed if args.seed is None else args.seed
    overrides = {k: v for k, v in (("restarts", args.restarts), ("steps", args.steps)) if v is not None}
    params = PerturbParams(**{**dataclasses.asdict(PerturbParams.from_config_section(cfg.perturb)), **overrides})
    clean, _ = clean_images(cfg.images.source, cfg.images.size_px, cfg.images.n_clean, seed)
    if per_site > len(clean):
        raise UserError(f"--images-per-site {per_site}: only {len(clean)} clean images; lower it or raise images.n_clean")
    rng = np.random.default_rng(seed)
    problems = [(int(i), int(s)) for s in sites for i in np.sort(rng.choice(len(clean), per_site, replace=False))]
    try:
        ss, _ = generate_stimuli(cfg.compute, clean, problems, epsilons, params, seed=seed, device=device,
                                 source=source, report=lambda line: print(line, flush=True))
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    out = save_stimulus_set(args.out, ss)
    n_t = int((ss.kind == "targeted").sum())
    print(f"wrote {out}: {len(ss)} stimuli ({int(ss.is_clean.sum())} clean, {n_t} targeted, "
          f"{int((ss.kind == 'random').sum())} random controls), {int(ss.budget_passes.sum())} passes")
    return 0
