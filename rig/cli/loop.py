"""``itloop simulate`` and ``itloop report``: whole experiments."""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from rig.cli.common import add_progress_flag
from rig.config import load_config


def demo_config_path() -> Path:
    """The small demo configuration shipped with itloop (``rig/demo.toml``)."""
    return Path(str(resources.files("rig").joinpath("demo.toml")))


def register(sub) -> None:
    sim = sub.add_parser("simulate", help="screening day + N closed-loop days against the simulated monkey, then the report")
    sim.add_argument("--days", type=int, default=None, help="closed-loop days after screening (default: 2, or 3 with --demo)")
    sim.add_argument("--out", required=True, help="experiment folder (created; re-run to resume)")
    grp = sim.add_mutually_exclusive_group()
    grp.add_argument("--config", help="TOML file overriding config.toml's defaults")
    grp.add_argument("--demo", action="store_true", help="the small demo configuration (minutes on 2 CPU cores)")
    sim.add_argument("--no-report", action="store_true", help="skip the report at the end")
    add_progress_flag(sim)
    sim.set_defaults(func=cmd_simulate)

    rep = sub.add_parser("report", help="figures and summary of an experiment folder")
    rep.add_argument("folder")
    rep.add_argument("--out", help="report folder (default: FOLDER/report)")
    add_progress_flag(rep)
    rep.set_defaults(func=cmd_report)

    cal = sub.add_parser("sim-calibrate", help="the simulated monkey's white-box sensitivity curve in the paper's units (224 px)")
    cal.add_argument("--config", help="TOML file overriding config.toml's defaults")
    cal.add_argument("--size", type=int, default=224, help="image size to calibrate at, pixels (epsilons scale by per-pixel RMS)")
    cal.add_argument("--sites", type=int, default=6)
    cal.add_argument("--images", type=int, default=6)
    cal.add_argument("--restarts", type=int, default=8)
    cal.add_argument("--steps", type=int, default=32)
    cal.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sim.* key, e.g. smoothing_px=2")
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rig.truth.sim_calibrate import calibrate_command

    print(calibrate_command(args.config, args.size, args.sites, args.images, args.restarts, args.steps, args.set))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from rig.driver.simulate import EXPERIMENT_TOML, simulate

    folder = Path(args.out)
    if args.demo:
        cfg = load_config(demo_config_path())
    elif args.config:
        cfg = load_config(args.config)
    elif (folder / EXPERIMENT_TOML).exists():
        cfg = None  # continue the stored experiment
    else:
        cfg = load_config(None)
    days = args.days if args.days is not None else (3 if args.demo else 2)
    simulate(cfg, folder, days, report=not args.no_report)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rig.cli.day import folder_config
    from rig.report.write import write_report

    folder = Path(args.folder)
    summary = write_report(folder_config(folder, None), folder, args.out)
    print(f"report written: {summary} (figures beside it)")
    return 0
