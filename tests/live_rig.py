"""Shared helpers of the live-rig end-to-end tests (a real presenter under Xvfb + the simulated
acquisition process ``itloop sim-rig`` + ``--backend rig``): config on free loopback ports,
starting the processes with bounded waits, and the comparison with sim-rig's truth file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rig.store.reader import read_day
from tests.configs import free_port, presenter_day_toml


def rig_config(tmp_path: Path, drop: float = 0.1, repeats: int = 3, system: str = "openephys",
               extra: str = "") -> tuple[Path, dict]:
    """A live-rig config on free loopback ports; ``extra`` (TOML sections) is appended."""
    ports = {"ctrl": free_port(), "marker": free_port(), "events": free_port(), "http": free_port()}
    tag = f"{os.getpid()}-{ports['events']}"        # LSL names are global on the network: make them unique
    cfg = tmp_path / "rig.toml"
    base = presenter_day_toml(f"tcp://127.0.0.1:{ports['ctrl']}", n_clean=8, n_channels=3, repeats=repeats,
                              sim_extra="clock_drift_ppm = 50.0\nclock_offset_s = 3.7\n")
    cfg.write_text(base + f"""marker = "zmq"
marker_address = "tcp://127.0.0.1:{ports['marker']}"
[acquisition]
system = "{system}"
lsl_spike_stream = "itloop-test-spikes-{tag}"
lsl_ttl_stream = "itloop-test-ttl-{tag}"
lsl_marker_outlet = "itloop-test-markers-{tag}"
n_channels = 3
event_port = {ports['events']}
http_port = {ports['http']}
sim_drop_fraction = {drop}
wait_ms = 1500.0
""" + extra)
    return cfg, ports


def start_presenter(cfg: Path, ports: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--config", str(cfg), "--windowed", "320x240",
                             "--refresh-hz", "30", "--pace", "--quiet"], stdout=open(log, "a"), stderr=subprocess.STDOUT)


def start_sim_rig(cfg: Path, out: Path, tmp_path: Path, *flags: str) -> subprocess.Popen:
    """Start the simulated acquisition process (``flags``: its scenario options) and wait
    (bounded) until it serves; it logs to ``tmp_path / "simrig.log"``."""
    log = tmp_path / "simrig.log"
    with open(log, "a") as fh:                      # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "sim-rig", "--out", str(out), "--day", "0", "--config",
                                 str(cfg), "--truth", str(tmp_path / "truth.jsonl"), "--http-log",
                                 str(tmp_path / "http.jsonl"), "--max-s", "400", "--idle-exit-s", "120", *flags],
                                stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "sim-rig: serving" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def run_live_day(tmp_path: Path, capsys, cfg: Path, ports: dict, *sim_flags: str) -> tuple[int, str, str, Path]:
    """Day 0 through ``--backend rig`` against sim-rig (``sim_flags``) and a presenter, both
    stopped afterwards; returns (exit code, stdout, stderr, the day file's path)."""
    from rig.cli import main

    out = tmp_path / "exp"
    sim = start_sim_rig(cfg, out, tmp_path, *sim_flags)
    pres = start_presenter(cfg, ports, tmp_path / "presenter.log")
    try:
        rc = main(["day", "run", "--day", "0", "--backend", "rig", "--out", str(out), "--config", str(cfg), "--no-progress"])
    finally:
        for proc in (pres, sim):
            proc.kill()
            proc.wait(timeout=20)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err, out / "day_000.h5"


def compare_with_truth(path: Path, truth_path: Path, window_ms=(70.0, 170.0)) -> dict:
    """Onset errors and count mismatches of every valid presentation against the simulator's truth."""
    d = read_day(path)
    p = d.presentations
    truth = [json.loads(x) for x in truth_path.read_text().splitlines() if x.strip()]
    by_t = {round(r["t_presenter"], 6): r for r in truth}
    valid = np.flatnonzero(p["valid"])
    errs, bad_counts, unmatched = [], 0, 0
    for i in valid:
        r = by_t.get(round(float(p["onset_presenter_s"][i]), 6))
        if r is None:
            unmatched += 1
            continue
        assert r["pulse"], "a presentation whose pulse was dropped was recorded as valid"
        assert r["image"] == p["stim_index"][i]
        errs.append(float(p["onset_acq_s"][i]) - r["t_acq_true"])
        diff = np.abs(d.counts[i] - np.asarray(r["counts"]))
        bad_counts += int(np.sum(diff > np.asarray(r["near_edge"])))
    dropped_t = {round(r["t_presenter"], 6) for r in truth if not r["pulse"]}
    shown_t = np.round(p["onset_presenter_s"], 6)
    dropped_rows = [j for j, t in enumerate(shown_t) if t in dropped_t]
    return {"errors_s": np.asarray(errs), "bad_counts": bad_counts, "unmatched": unmatched, "n_valid": len(valid),
            "n_truth": len(truth), "dropped_rows_valid": int(np.sum(p["valid"][dropped_rows])),
            "n_dropped": len(dropped_rows)}
