"""``itloop present`` (the presenter process), ``itloop present --timing-check`` and ``itloop keys``."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from rig.errors import UserError


def add_present_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config ([monitor] and [presenter] sections are used)")
    p.add_argument("--endpoint", help="controller endpoint to connect to (default: presenter.endpoint)")
    p.add_argument("--windowed", metavar="WxH", help="a window of W x H pixels instead of full screen (tests)")
    p.add_argument("--refresh-hz", type=float, help="use this refresh rate instead of measuring it")
    p.add_argument("--pace", action="store_true",
                   help="sleep between flips to emulate --refresh-hz (displays without vsync, e.g. Xvfb)")
    p.add_argument("--timing-check", action="store_true",
                   help="no controller: run a long RSVP of test images and print frame statistics")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the timing check, s (default 30)")
    p.add_argument("--acquisition", action="store_true",
                   help="with --timing-check: also read the photodiode TTLs on acquisition.ttl_line from the "
                        "[acquisition] system (Open Ephys or LSL) and print the pulse-to-flip distribution")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr")


def _window_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m:
        raise UserError(f"--windowed {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 400x300")
    return int(m.group(1)), int(m.group(2))


def run_present(args: argparse.Namespace) -> int:
    """Open the window and either serve a controller or run the timing check."""
    from rig.config import ConfigError, load_config
    from rig.link.protocol import curve_keys

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    window = _window_size(args.windowed)
    if args.refresh_hz is not None and not args.refresh_hz > 0:
        raise UserError(f"--refresh-hz {args.refresh_hz}: expected a rate in Hz > 0")
    if args.pace and args.refresh_hz is None:
        raise UserError("--pace needs --refresh-hz (the rate to emulate)")
    if args.acquisition and not args.timing_check:
        raise UserError("--acquisition is an option of --timing-check: pass both")
    from rig.presenter.markers import make_marker
    from rig.presenter.stage import Monitor, Stage

    mon = cfg.monitor
    pc = cfg.presenter
    try:
        marker = make_marker(pc.marker, pc.marker_address)
        keys = curve_keys(pc.curve_public_key, pc.curve_secret_key, pc.curve_server_key)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    import os
    import sys

    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise UserError("no X display (DISPLAY is not set): run the presenter on the stimulus computer's screen, "
                        "or headless under `xvfb-run -a itloop present --windowed 800x600 --refresh-hz 60 --pace`")
    source = None
    if args.acquisition:                # before the window: an absent acquisition system is one line
        from rig.backends.factory import make_spike_source

        source = make_spike_source(cfg)
        source.open()
    try:
        stage = Stage(Monitor(mon.width_cm, mon.distance_cm, mon.width_px, mon.height_px), window_px=window,
                      fullscreen=mon.fullscreen and window is None, photodiode=pc.photodiode,
                      scaling=cfg.display.image_scaling, gamma_monitor=cfg.display.gamma_monitor)
    except BaseException as exc:
        if source is not None:
            source.close()
        if isinstance(exc, ValueError):
            raise UserError(str(exc)) from None
        raise
    if stage.gamma is not None and not args.quiet:
        print(f"[presenter] gamma from Monitor Center monitor {stage.gamma['name']!r}: {stage.gamma['gamma_rgb']} "
              f"({'loaded into the display' if stage.gamma['applied'] else 'the display refused the gamma ramp'})",
              file=sys.stderr, flush=True)
    try:
        refresh = args.refresh_hz or stage.measure_refresh_hz()
        if not refresh:
            raise UserError("could not measure a stable refresh rate; check vsync in the display driver or pass --refresh-hz")
        if args.refresh_hz is None and abs(refresh - mon.refresh_hz) > 0.02 * mon.refresh_hz:
            print(f"warning: measured {refresh:.2f} Hz but monitor.refresh_hz is {mon.refresh_hz:g} Hz; frames are "
                  "counted from the measured rate - check the monitor setting", file=sys.stderr)
        if args.timing_check:
            return _timing_check(args, cfg, stage, refresh, marker, source)
        return _serve(args, cfg, stage, refresh, marker, keys)
    finally:
        stage.close()
        if source is not None:
            source.close()


def _timing_check(args: argparse.Namespace, cfg, stage, refresh: float, marker, source) -> int:
    """``--timing-check``: flip stimuli for ``args.seconds`` and report the frame timing."""
    from rig.presenter.timing_check import format_report, run_timing_check

    try:
        stats = run_timing_check(stage, stim_on_ms=cfg.rsvp.stim_on_ms, mask_ms=cfg.rsvp.mask_ms,
                                 refresh_hz=refresh, frame_tolerance=cfg.monitor.frame_tolerance,
                                 seconds=args.seconds, image_size_deg=cfg.rsvp.image_size_deg,
                                 pace=args.pace, marker=marker)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if abs(stats["measured_hz"] - refresh) > 0.02 * refresh and not args.pace:
        print(f"warning: flips came at {stats['measured_hz']:.2f} Hz, not {refresh:.2f} Hz: is vsync on?")
    print(format_report(stats))
    rc = _report_photodiode(cfg, source, stats) if source is not None else 0
    return 0 if stats["dropped"] == 0 and rc == 0 else 1


def _serve(args: argparse.Namespace, cfg, stage, refresh: float, marker, keys) -> int:
    """Serve a controller (``itloop day run --backend presenter|rig``) until it says goodbye."""
    import sys

    from rig.presenter.devices import fixation_params, make_eye, make_reward
    from rig.presenter.server import PresenterServer

    pc = cfg.presenter
    eye = make_eye(cfg)
    reward = make_reward(cfg)
    if eye is not None:
        eye.open()
        if not args.quiet:
            print(f"[presenter] fixation control with {eye.name}", file=sys.stderr, flush=True)
    try:
        server = PresenterServer(stage, args.endpoint or pc.endpoint, heartbeat_s=pc.heartbeat_s,
                                 dead_after_s=pc.dead_after_s, refresh_hz=refresh, pace=args.pace,
                                 frame_tolerance=cfg.monitor.frame_tolerance, marker=marker, keys=keys,
                                 verbose=not args.quiet, eye=eye, fixation=fixation_params(cfg),
                                 reward=reward, reward_ms=cfg.reward.duration_ms,
                                 manual_reward_key=cfg.reward.manual_key)
    except ValueError as exc:
        if eye is not None:
            eye.close()
        reward.close()
        raise UserError(str(exc)) from None
    return server.run()


def _report_photodiode(cfg, source, stats: dict) -> int:
    """Print the photodiode pulses (acquisition clock) against the check's onset flips
    (presenter clock) after the robust clock fit; 1 when no pulse could be paired."""
    import numpy as np

    from rig.presenter.timing_check import format_fitted_latency, photodiode_latency
    from rig.session.clock import fit_pulse_train
    from rig.sources.ttl import collect_rising_edges

    a = cfg.acquisition
    tol = a.pulse_tolerance_ms / 1000.0
    pulses = collect_rising_edges(source, first_wait_s=max(10.0, a.wait_ms / 1000.0))
    onsets = np.asarray(stats["onset_s"], float)
    onsets = onsets[np.isfinite(onsets)]
    try:
        seg, _, ambiguous = fit_pulse_train(onsets, pulses, tol, max_drift_ppm=a.max_drift_ppm)
    except UserError as exc:
        print(f"photodiode pulses   {len(pulses)} on line {a.ttl_line}, {len(onsets)} onsets: {exc}")
        return 1
    if seg is None:
        print(f"photodiode pulses   {len(pulses)} rising edges on {a.system} line {a.ttl_line} for {len(onsets)} onsets: "
              f"fewer than 2 pair with a flip within {a.pulse_tolerance_ms:g} ms; check the photodiode, its cable "
              "and acquisition.ttl_line")
        return 1
    lat = photodiode_latency(seg.to_presenter(pulses), onsets, max_latency_s=tol, min_latency_s=-tol)
    print(format_fitted_latency(lat, seg.summary(), ambiguous))
    return 0


def run_keys(args: argparse.Namespace) -> int:
    """Write a CURVE key pair: NAME.key (public, share it) and NAME.key_secret (keep it)."""
    import zmq.auth

    out = Path(args.out)
    targets = [out / f"{args.name}{suffix}" for suffix in (".key", ".key_secret")]
    for target in targets:
        if target.exists() and not args.force:
            raise UserError(f"{target} exists; pass --force to overwrite or choose another --name")
    new = [t for t in targets if not t.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        public_file, secret_file = zmq.auth.create_certificates(str(out), args.name)
        Path(secret_file).chmod(0o600)
    except OSError as exc:
        for target in new:          # a half-written pair would block the retry ("exists")
            target.unlink(missing_ok=True)
        raise UserError(f"cannot write keys to {out}: {exc.strerror or exc}; choose a folder you can write to, "
                        "with free space") from None
    public, _ = zmq.auth.load_certificate(public_file)
    if args.authorize:
        allow = Path(args.authorize) / Path(public_file).name
        if allow.exists() and not args.force:
            raise UserError(f"{allow} exists; pass --force to replace it or choose another --name")
        try:
            allow.parent.mkdir(parents=True, exist_ok=True)
            allow.write_bytes(Path(public_file).read_bytes())
        except OSError as exc:
            raise UserError(f"cannot write {allow}: {exc.strerror or exc}") from None
        print(f"authorised  {allow} (the controller's presenter.curve_authorized_keys = {allow.parent})")
    print(f"public key  {public_file}\nsecret key  {secret_file} (keep it on this computer)\n"
          f"public key text: {public.decode()}\n"
          "set presenter.curve_public_key / curve_secret_key to these files; give the controller's .key file "
          "to the presenter computer as presenter.curve_server_key")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("present", help="run the PsychoPy presenter (or its --timing-check)")
    add_present_arguments(p)
    p.set_defaults(func=run_present)
    k = subparsers.add_parser("keys", help="make a CURVE key pair for a non-loopback presenter link")
    k.add_argument("--out", default="keys", help="directory for the key files (default ./keys)")
    k.add_argument("--name", default="itloop", help="file name stem (default itloop)")
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    k.add_argument("--authorize", metavar="DIR", help="also copy the public key into DIR, the controller's allow-list "
                                                      "folder (presenter.curve_authorized_keys)")
    k.set_defaults(func=run_keys)
