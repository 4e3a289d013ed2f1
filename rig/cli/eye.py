"""``itloop sim-gaze``: the simulated monkey's eye as a separate process publishing over LSL."""
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
