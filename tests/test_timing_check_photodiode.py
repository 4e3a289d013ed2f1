"""``itloop present --timing-check --acquisition`` on loopback: a real presenter (Xvfb) whose
flips the simulated acquisition process (``itloop sim-rig --timing-check``, a separate
process in the Open Ephys Event Broadcaster format) turns into photodiode TTLs with known
drops, clock offset/drift and photodiode jitter; the printed pulse-to-flip distribution is
checked against the simulator's truth file and its configured jitter."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from sim.clocks import PHOTODIODE_JITTER_S
from tests.live_rig import rig_config

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in:\n{text}"
    return float(m.group(1))


@pytest.mark.slow
def test_timing_check_reports_the_photodiode_pulses_of_the_simulated_acquisition(tmp_path):
    cfg, _ = rig_config(tmp_path, drop=0.1)
    truth_path, log = tmp_path / "truth.jsonl", tmp_path / "simrig.log"
    sim = subprocess.Popen([sys.executable, "-m", "rig.cli", "sim-rig", "--timing-check", "--config", str(cfg),
                            "--truth", str(truth_path), "--max-s", "300", "--idle-exit-s", "120"],
                           stdout=open(log, "a"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "sim-rig: serving" not in (log.read_text() if log.exists() else ""):
            assert sim.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        res = subprocess.run([sys.executable, "-m", "rig.cli", "present", "--config", str(cfg), "--windowed", "320x240",
                              "--refresh-hz", "30", "--pace", "--quiet", "--timing-check", "--acquisition",
                              "--seconds", "8"], capture_output=True, text=True, timeout=300)
    finally:
        sim.kill()
        sim.wait(timeout=20)
    text = res.stdout
    print(text)
    # rc 1 would only mean Xvfb dropped frames: never judged here (wall-clock timing under Xvfb)
    assert res.returncode in (0, 1) and "photodiode pulses" in text, text + res.stderr + log.read_text()
    truth = [json.loads(x) for x in truth_path.read_text().splitlines() if x.strip()]
    n_onsets = int(_number(r"over (\d+) presentations", text))
    assert len(truth) == n_onsets                      # the simulator saw every onset flip
    dropped = sum(not r["pulse"] for r in truth)
    matched = int(_number(r"(\d+) matched to flips", text))
    missing = int(_number(r"(\d+) flips without a pulse", text))
    extra = int(_number(r"(\d+) pulses without a flip", text))
    if "a shift by one onset-to-onset interval fits as well" in text:
        # only a train missing its first or last pulse can fit a one-period shift as well (the flips'
        # spacing under a sleep-paced Xvfb decides whether it does): then it is said, and off by <= 1
        assert not (truth[0]["pulse"] and truth[-1]["pulse"])
        assert abs(matched - (n_onsets - dropped)) <= 1 and matched + missing == n_onsets
    else:
        assert (matched, missing, extra) == (n_onsets - dropped, dropped, 0)
    # the residuals are the simulator's photodiode jitter: uniform +-J (sd J/sqrt 3), plus 1/30 kHz sampling
    jitter_ms = PHOTODIODE_JITTER_S * 1000.0
    line = next(x for x in text.splitlines() if x.startswith("pulse - flip"))
    sd = _number(r"sd (-?[\d.]+)", line)
    worst = _number(r"max \|\.\| (-?[\d.]+)", line)
    p5, p95 = _number(r"5-95% (-?[\d.]+) to", line), _number(r"5-95% -?[\d.]+ to (-?[\d.]+)", line)
    assert 0.5 * jitter_ms / np.sqrt(3) < sd < 2.0 * jitter_ms / np.sqrt(3)
    assert worst < 2.0 * jitter_ms and -jitter_ms * 1.5 < p5 < 0 < p95 < jitter_ms * 1.5
    assert abs(_number(r"median (-?[\d.]+) ms", line)) < 0.5 * jitter_ms
