"""``itloop sim-rig``: the simulated monkey as a live acquisition system (Open Ephys format).

Run it where the Open Ephys GUI would run, with the presenter's ``presenter.marker = "zmq"``
so it sees the flips; then ``itloop day run --backend rig`` records from it as from a real
rig. Everything it publishes is simulated, and the day file says so only through the
acquisition's own description: use it for testing the live path, never for data.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rig.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("sim-rig", help="simulated acquisition system: watch presenter flips, publish spikes as Open Ephys does")
    p.add_argument("--out", help="experiment folder (the day's plan file is read from it)")
    p.add_argument("--day", type=int, help="day whose plan holds the stimuli shown")
    p.add_argument("--timing-check", action="store_true",
                   help="serve `itloop present --timing-check --acquisition` instead of a day: the stimuli are the "
                        "timing check's test images (no --out, --day or plan needed)")
    p.add_argument("--config", help="TOML file: [sim] (the monkey), [acquisition] (ports, sim_* keys), [presenter] marker_address")
    p.add_argument("--marker", help="presenter marker endpoint (default: presenter.marker_address)")
    p.add_argument("--truth", help="write the simulator's truth (onsets, counts) here as JSON lines")
    p.add_argument("--http-log", help="log the HTTP control requests here as JSON lines")
    p.add_argument("--max-s", type=float, default=3600.0, help="stop after this many seconds (default 3600)")
    p.add_argument("--idle-exit-s", type=float, default=None, help="stop when no flip came for this long")
    p.add_argument("--plan-wait-s", type=float, default=120.0, help="how long to wait for the plan file to appear")
    g = p.add_argument_group("scenarios (override the [acquisition] sim_* keys)")
    g.add_argument("--ttl", choices=["photodiode", "free", "periodic"],
                   help="sync line: onset-locked photodiode, free-running (not locked to flips), periodic at the RSVP period")
    g.add_argument("--pulse-jitter-ms", type=float, help="half-width of the uniform pulse latency jitter, ms (0.5: a parallel port)")
    g.add_argument("--started-early-s", type=float,
                   help="the acquisition clock runs on wall time and started this long before sim-rig, s")
    g.add_argument("--two-streams", action="store_true", help="the sync TTL also on a second stream with its own sample counter")
    g.add_argument("--refuse-record", action="store_true", help="the GUI answers RECORD with ACQUIRE (no Record Node)")
    p.set_defaults(func=cmd_sim_rig)


def cmd_sim_rig(args: argparse.Namespace) -> int:
    from rig.backends.factory import build_sim_monkey
    from rig.cli.day import folder_config
    from rig.paths import plan_path
    from sim.acquisition import AcqSimParams, AcquisitionSim

    if args.timing_check:
        if args.day is not None:
            raise UserError("sim-rig --timing-check shows the timing check's images: leave out --day")
        day = 0
    elif args.out is None or args.day is None:
        raise UserError("sim-rig needs --out FOLDER and --day D (the day's plan holds the stimuli), or --timing-check")
    else:
        day = int(args.day)
    out = Path(args.out or ".")
    if args.out is None:
        from rig.config import load_config

        cfg = load_config(args.config)
    else:
        cfg = folder_config(out, args.config)
    a = cfg.acquisition
    marker = args.marker or cfg.presenter.marker_address
    if not marker:
        raise UserError("sim-rig needs the presenter's marker endpoint: --marker tcp://127.0.0.1:PORT "
                        "(and presenter.marker = \"zmq\" with that presenter.marker_address)")
    if a.host not in ("127.0.0.1", "localhost"):
        raise UserError(f"acquisition.host = {a.host!r}: the simulated rig binds to 127.0.0.1 only")
    ppath = plan_path(out, day)

    def pixels():
        if args.timing_check:
            from rig.presenter.timing_check import check_images

            return check_images()
        from rig.store.reader import read_day

        deadline = time.monotonic() + args.plan_wait_s
        while not ppath.exists():
            if time.monotonic() > deadline:
                raise UserError(f"sim-rig: {ppath} did not appear within {args.plan_wait_s:g} s")
            time.sleep(0.05)
        return read_day(ppath).stimuli.pixels

    monkey = build_sim_monkey(cfg)
    params = AcqSimParams(sample_rate_hz=a.sim_sample_rate_hz, ttl_line=a.ttl_line, drop_fraction=a.sim_drop_fraction,
                          extra_fraction=a.sim_extra_fraction, jitter_s=a.sim_jitter_ms / 1000.0,
                          electrode_prefix=a.electrode_prefix,
                          window_s=(cfg.window.start_ms / 1000.0, cfg.window.end_ms / 1000.0), seed=cfg.day_seed(day),
                          ttl=args.ttl or a.sim_ttl, ttl_period_s=(cfg.rsvp.stim_on_ms + cfg.rsvp.mask_ms) / 1000.0,
                          pulse_jitter_s=(a.sim_pulse_jitter_ms if args.pulse_jitter_ms is None else args.pulse_jitter_ms) / 1000.0,
                          started_early_s=a.sim_started_early_s if args.started_early_s is None else args.started_early_s,
                          two_streams=args.two_streams or a.sim_two_streams,
                          refuse_record=args.refuse_record or a.sim_refuse_record)
    if not (params.pulse_jitter_s >= 0 and params.started_early_s >= 0):
        raise UserError("sim-rig: --pulse-jitter-ms and --started-early-s must be >= 0")
    if a.n_channels != monkey.n_channels:
        raise UserError(f"acquisition.n_channels = {a.n_channels} but sim.n_channels = {monkey.n_channels}; make them equal")
    sim = AcquisitionSim(monkey, pixels, marker, f"tcp://127.0.0.1:{a.event_port}", params,
                         http_port=a.http_port if a.http_control and a.system == "openephys" else None,
                         truth_path=args.truth, http_log=args.http_log,
                         lsl_streams=(a.lsl_spike_stream, a.lsl_ttl_stream) if a.system == "lsl" else None)
    where = (f"LSL streams {a.lsl_spike_stream!r} and {a.lsl_ttl_stream!r}" if a.system == "lsl" else
             f"Open Ephys broadcaster format on tcp://127.0.0.1:{a.event_port}, HTTP on {a.http_port}")
    scen = (f"; scenario: sync line {params.ttl}, pulse jitter ±{params.pulse_jitter_s * 1e3:g} ms"
            + (f", acquisition clock zero at unix {sim.zero_unix_s:.6f} s ({params.started_early_s:g} s before sim-rig)"
               if sim.wall else "") + (", second stream" if params.two_streams else "")
            + (", refuses RECORD" if params.refuse_record else ""))
    print(f"sim-rig: serving {where}, watching flips at {marker} (SIMULATED spikes){scen}", flush=True)
    counts = sim.serve(max_s=args.max_s, idle_exit_s=args.idle_exit_s)
    print(f"sim-rig: published {counts}", flush=True)
    return 0
