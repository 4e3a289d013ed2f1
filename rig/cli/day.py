"""``itloop day ...``: record, check and recover day files."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rig.cli.common import add_progress_flag, check_out_folder
from rig.config import config_from_toml_text, load_config, with_local_settings
from rig.errors import UserError
from rig.paths import EXPERIMENT_TOML, day_path
from rig.store.dayfile import DayFileError
from rig.store.reader import day_status, read_config_text
from rig.store.repair import check_day, recover_day


def register(sub) -> None:
    day = sub.add_parser("day", help="plan, record, analyze, check or recover one recording day")
    day.set_defaults(help_parser=day)
    dsub = day.add_subparsers(dest="day_command", metavar="STEP")

    run = dsub.add_parser("run", help="record a day through a backend (sim, presenter)")
    run.add_argument("--day", type=int, required=True, help="day number (0 = screening with clean images)")
    run.add_argument("--out", required=True, help="experiment folder holding the day files")
    run.add_argument("--backend", default="sim", choices=["sim", "presenter", "rig"],
                     help="who shows and records: sim, presenter (real screen, SIMULATED spikes), rig (real screen + [acquisition] spikes)")
    run.add_argument("--config", help="TOML file overriding config.toml's defaults (with --resume the day's stored config is used, "
                          "except connection, compute and output settings, which come from --config or the defaults)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted day without repeating or losing a trial")
    run.add_argument("--max-trials", type=int, default=None, help="stop after this many trials (the day stays resumable)")
    add_progress_flag(run)
    run.set_defaults(func=cmd_run)

    plan = dsub.add_parser("plan", help="refit on days < D, design perturbations, schedule day D")
    plan.add_argument("--day", type=int, required=True, help="closed-loop day to plan (>= 1)")
    plan.add_argument("--out", required=True, help="experiment folder holding the day files")
    plan.add_argument("--config", help="TOML file overriding config.toml's defaults (default: the folder's experiment.toml, else day 0's)")
    add_progress_flag(plan)
    plan.set_defaults(func=cmd_plan)

    ana = dsub.add_parser("analyze", help="sensitivity, baselines and controls of a recorded closed-loop day")
    ana.add_argument("--day", type=int, required=True)
    ana.add_argument("--out", required=True, help="experiment folder holding the day files")
    add_progress_flag(ana)
    ana.set_defaults(func=cmd_analyze)

    chk = dsub.add_parser("check", help="validate a day file and summarise it")
    chk.add_argument("file")
    chk.add_argument("--json", action="store_true", help="print the summary as JSON")
    chk.set_defaults(func=cmd_check)

    from rig.cli.day_export import add_export_command
    from rig.cli.day_replay import add_replay_command
    from rig.cli.day_units import add_units_command

    add_replay_command(dsub)
    add_units_command(dsub)
    add_export_command(dsub)

    rec = dsub.add_parser("recover", help="rebuild a damaged day file from its journal (the damaged file is kept)")
    rec.add_argument("file")
    rec.add_argument("--plan", help="the day's plan file, if the damaged file's header cannot be read")
    rec.set_defaults(func=cmd_recover)


def _print_session_status() -> None:
    """The session runner's status lines (logging; every N trials or 30 s when output is not
    a terminal) and its warnings go to stdout as plain lines."""
    import logging

    class PrintHandler(logging.Handler):
        itloop_status = True

        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), flush=True)      # the current sys.stdout, whatever it is now

    log = logging.getLogger("rig.session.runner")
    if not any(getattr(h, "itloop_status", False) for h in log.handlers):
        log.addHandler(PrintHandler())
        log.setLevel(logging.INFO)
        log.propagate = False


def cmd_run(args: argparse.Namespace) -> int:
    from rig.steps.record import record_day

    if args.day < 0:
        raise UserError(f"--day {args.day}: day numbers start at 0 (screening)")
    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"--max-trials {args.max_trials}: expected a number of trials >= 1")
    out = Path(args.out)
    check_out_folder(out)
    path = day_path(out, args.day)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a day file; move it out of {out}")
    if args.resume:
        if not path.exists():
            raise UserError(f"--resume: {path} does not exist; run without --resume to start day {args.day}")
        if day_status(path) == "complete":
            raise UserError(f"{path} is already complete; nothing to resume")
        cfg = stored_config(config_from_toml_text(read_config_text(path)), path, args.config)
        if args.config:
            print(f"note: resuming with the configuration stored in {path}; from --config only its connection, "
                  "compute and output settings are used")
    else:
        if path.exists():
            raise UserError(f"{path} already exists; use --resume to continue it, or choose another --out. Nothing was overwritten.")
        cfg = folder_config(out, args.config)
    _print_session_status()
    result = record_day(cfg, out, args.day, backend_name=args.backend, resume=args.resume,
                        max_trials=args.max_trials)
    summary, problems = check_day(path)
    _print_summary(summary, problems)
    state = "complete" if result.complete else f"incomplete ({result.remaining} presentations to go; resume with --resume)"
    print(f"day {args.day}: {state}; {result.trials_run} trials in {result.elapsed_s:.1f} s")
    return 0 if not problems else 1


def folder_config(folder: Path, config: str | None):
    """The config for a step in ``folder``: --config if given, else the experiment's stored one
    (whose connection, compute and output settings are the defaults: see :func:`stored_config`)."""
    if config:
        return load_config(config)
    stored = folder / EXPERIMENT_TOML
    if stored.exists():
        return stored_config(config_from_toml_text(stored.read_text()), stored, None)
    if day_path(folder, 0).exists():
        return stored_config(config_from_toml_text(read_config_text(day_path(folder, 0))), day_path(folder, 0), None)
    return load_config(None)


def stored_config(cfg, source: Path, config: str | None):
    """``cfg`` (stored in ``source``) with the settings that connect, execute or choose where
    to write (rig.config.LOCAL_SETTINGS) taken from ``--config`` or the defaults, never from a file."""
    cfg, dropped = with_local_settings(cfg, load_config(config) if config else load_config(None))
    if dropped:
        print(f"note: {source.name} stores {', '.join(dropped)}; such settings are never taken from a data file "
              f"({'--config' if config else 'the defaults'} used: pass --config to choose them)", flush=True)
    return cfg


def cmd_plan(args: argparse.Namespace) -> int:
    from rig.steps.plan import plan_day

    folder = Path(args.out)
    check_out_folder(folder)
    plan_day(folder_config(folder, args.config), folder, args.day)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from rig.steps.analyze import analyze_day, describe

    folder = Path(args.out)
    res, out = analyze_day(folder_config(folder, None), folder, args.day)
    print(describe(res))
    print(f"numbers written to {out}")
    return 0


def _print_summary(summary: dict, problems: list[str]) -> None:
    kinds = ", ".join(f"{v} {k}" for k, v in summary["stimuli_by_kind"].items() if v)
    replay = f", replayed from day file {summary['replayed_from']}" if summary.get("replayed_from") else ""
    print(f"origin     {summary['origin']}{replay}" + (f"; {summary['spike_source']}" if summary.get("spike_source") else ""))
    print(f"day file   {summary['path']}")
    print(f"  day {summary['day']} ({summary['status']}), backend {summary['backend']}, itloop {summary['software_version']}, schema {summary['schema_version']}")
    print(f"  trials {summary['trials']} ({summary['aborted_trials']} aborted), presentations {summary['presentations']} "
          f"({summary['valid_presentations']} valid, {summary['valid_fraction']:.1%})")
    if summary.get("invalid_reasons"):
        print("  invalid because: " + ", ".join(f"{k} x{n}" for k, n in summary["invalid_reasons"].items()))
    print(f"  planned presentations recorded {summary['planned_done']}/{summary['planned_presentations']}")
    print(f"  sites/channels {summary['channels']}, stimuli {summary['stimuli']} ({kinds}), {summary['image_size_px']} px")
    print(f"  raw spikes {summary['raw_spikes']}, sync pulses {summary['sync_pulses']}")
    for seg in summary.get("clock_segments") or []:
        print(f"  clock segment {seg.get('label') or '(one)'}: drift {seg.get('drift_ppm', float('nan')):.2f} ppm, "
              f"residual sd {1e3 * seg.get('residual_sd_s', float('nan')):.3f} ms, max {1e3 * seg.get('max_abs_residual_s', float('nan')):.3f} ms, "
              f"{seg.get('n_pairs')} pulses")
    if summary.get("random_init_model"):
        print("  NOTE: the model backbone had random weights (no weights file configured)")
    for p in problems:
        print(f"  PROBLEM: {p}")


def cmd_check(args: argparse.Namespace) -> int:
    try:
        summary, problems = check_day(args.file)
    except DayFileError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"summary": summary, "problems": problems}, indent=2, default=_json_default))
    else:
        _print_summary(summary, problems)
        print("OK" if not problems else f"{len(problems)} problem(s) found")
    return 0 if not problems else 1


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def cmd_recover(args: argparse.Namespace) -> int:
    path = recover_day(args.file, args.plan)
    summary, problems = check_day(path)
    _print_summary(summary, problems)
    print(f"rebuilt {path} from its journal; the damaged file was kept beside it")
    return 0 if not problems else 1
