"""``itloop sim-gaze`` (the simulated monkey's eye as a separate process publishing over LSL)
and ``itloop calibrate`` (the eye calibration through the presenter)."""
from __future__ import annotations

import argparse
import sys

from rig.errors import UserError


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated numbers") from None


def run_sim_gaze(args: argparse.Namespace) -> int:
    from sim.gaze import GazeParams, publish

    if not args.rate > 0 or not args.seconds > 0:
        raise UserError("--rate and --seconds must be > 0")
    params = GazeParams(rate_hz=args.rate, jitter_deg=args.jitter, drift_deg=args.drift,
                        saccade_rate_hz=args.saccade_rate, away_deg=args.away_deg, away_ms=args.away_ms,
                        break_at_s=_floats(args.break_at, "--break-at"),
                        raw_affine=_floats(args.raw_affine, "--raw-affine"), seed=args.seed)
    if params.raw_affine and len(params.raw_affine) != 6:
        raise UserError("--raw-affine needs 6 numbers: m00,m01,m10,m11,c0,c1")
    return publish(params, args.name, args.seconds, stdin=sys.stdin, follow=args.follow_targets)


def register(subparsers) -> None:
    p = subparsers.add_parser("sim-gaze", help="publish the simulated monkey's gaze over LSL (tests, demos)")
    p.add_argument("--name", default="itloop-sim-gaze", help="LSL stream name (eye.lsl_stream)")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long, s (default 600)")
    p.add_argument("--rate", type=float, default=500.0, help="samples per second (default 500)")
    p.add_argument("--jitter", type=float, default=0.05, help="fixational jitter SD, deg")
    p.add_argument("--drift", type=float, default=0.1, help="slow drift SD, deg")
    p.add_argument("--saccade-rate", type=float, default=0.0, help="spontaneous saccades away per s")
    p.add_argument("--away-deg", type=float, default=8.0, help="how far a saccade away goes, deg")
    p.add_argument("--away-ms", type=float, default=300.0, help="how long the eye stays away, ms")
    p.add_argument("--break-at", default="", help="comma-separated LSL-clock times of injected breaks, s")
    p.add_argument("--raw-affine", default="", help="m00,m01,m10,m11,c0,c1: publish raw = M @ deg + c")
    p.add_argument("--follow-targets", default="", metavar="STREAM",
                   help="look at the calibration targets announced on this LSL marker stream "
                        "(the presenter's is itloop-calibration-target)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_sim_gaze)
    register_calibrate(subparsers)


def run_calibrate(args: argparse.Namespace) -> int:
    """Connect to the presenter, run the calibration and validation, save the map."""
    from pathlib import Path

    from rig.backends.calibration import calibrate
    from rig.config import ConfigError, load_config
    from rig.link.client import PresenterClient
    from rig.link.protocol import curve_keys

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out or cfg.eye.calibration_file or "calibration.json")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to replace it or choose another --out")
    p = cfg.presenter
    endpoint = args.endpoint or p.endpoint
    try:
        client = PresenterClient(endpoint, session="calibration", heartbeat_s=p.heartbeat_s, dead_after_s=p.dead_after_s,
                                 ack_timeout_s=p.ack_timeout_s,
                                 keys=curve_keys(p.curve_public_key, p.curve_secret_key, p.curve_server_key))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with client:
        print(f"waiting for the presenter at {client.endpoint} (start `itloop present --endpoint {client.endpoint}`)",
              flush=True)
        client.wait_for_presenter(args.wait)
        if client.presenter_info.get("eye", "none") == "none":
            raise UserError("the presenter has no eye tracker: set [eye] source in the presenter's config")
        cmap = calibrate(client, cfg, validate=not args.no_validate, target_stream=args.target_stream)
        if args.shutdown_presenter:
            client.shutdown()
    cmap.save(out)
    print(f"saved {out} ({cmap.model}); set eye.calibration_file = \"{out}\" to use it (the day file stores it)")
    return 0


def register_calibrate(subparsers) -> None:
    c = subparsers.add_parser("calibrate", help="eye calibration: 5 or 9 targets on the presenter, fit, validate, save")
    c.add_argument("--config", help="TOML config ([eye], [fixation], [presenter], [reward])")
    c.add_argument("--endpoint", help="where to listen for the presenter (default presenter.endpoint)")
    c.add_argument("--out", help="calibration file to write (default eye.calibration_file or calibration.json)")
    c.add_argument("--force", action="store_true", help="replace an existing calibration file")
    c.add_argument("--no-validate", action="store_true", help="skip the validation pass")
    c.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the presenter (default 60)")
    c.add_argument("--target-stream", default="itloop-calibration-target",
                   help="LSL marker stream the presenter announces targets on")
    c.add_argument("--shutdown-presenter", action="store_true", help="stop the presenter afterwards (tests)")
    c.set_defaults(func=run_calibrate)
