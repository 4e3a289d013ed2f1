"""`itloop day run --backend presenter`: the CLI drives a real presenter process (Xvfb)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from rig.cli import main
from rig.store.reader import read_day
from rig.store.repair import check_day

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_day_run_through_the_presenter_backend(tmp_path, capsys):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[images]
size_px = 32
n_clean = 6
[screening]
repeats = 2
[rsvp]
presentations_per_trial = 4
fixation_acquire_ms = 50.0
inter_trial_ms = 100.0
[model]
backbone = "tiny"
[sim]
n_channels = 3
fixation_break_prob = 0.0
[presenter]
endpoint = "{endpoint}"
heartbeat_s = 0.2
dead_after_s = 5.0
""")
    log = open(tmp_path / "presenter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--endpoint", endpoint, "--windowed", "320x240",
                             "--refresh-hz", "60", "--pace"], stdout=log, stderr=subprocess.STDOUT)
    try:
        rc = main(["day", "run", "--day", "0", "--backend", "presenter", "--out", str(tmp_path / "exp"),
                   "--config", str(cfg), "--no-progress"])
    finally:
        proc.kill()
        proc.wait(timeout=20)
        log.close()
    assert rc == 0, capsys.readouterr()
    path = tmp_path / "exp" / "day_000.h5"
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "presenter"
    d = read_day(path)
    p = d.presentations
    assert d.origin.kind == "presenter+sim" and d.origin.simulated
    assert (p["frames_on"][p["shown"]] == 6).all() and (p["frames_mask"][p["shown"]] == 6).all()
    # onsets are the presenter's flip stamps: increasing within each trial (their spacing is wall-clock
    # time of a sleep-paced Xvfb, not asserted; the frame counts above are the presenter's own)
    first = p["position"] == 0
    shown_pairs = (p["shown"][1:] & p["shown"][:-1]) & ~first[1:]
    assert (np.diff(p["onset_presenter_s"])[shown_pairs] > 0).all()
