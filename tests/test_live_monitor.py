"""The live monitor: bound to 127.0.0.1 only, read-only, and drawn by a real headless
Chromium during a simulated session (the page's numbers follow the session)."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rig.backend import SessionInfo
from rig.monitor.server import LiveMonitor
from rig.monitor.state import MonitorState
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayWriter
from sim.backend import SimBackend
from sim.monkey import SimParams, SimulatedMonkey
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PANELS = ("panel-progress", "panel-eye", "panel-rates", "panel-psth", "panel-frames", "panel-clock")
SHOTS = Path(__file__).resolve().parent / "artifacts"


def test_monitor_binds_loopback_only_and_takes_no_actions():
    with pytest.raises(ValueError, match="loopback only"):
        LiveMonitor(MonitorState(), "0.0.0.0", 0)
    with LiveMonitor(MonitorState(session_id="s"), "127.0.0.1", 0) as mon:
        assert mon.httpd.socket.getsockname()[0] == "127.0.0.1"
        with urllib.request.urlopen(mon.url + "state.json", timeout=5) as r:
            assert json.loads(r.read())["info"]["session_id"] == "s"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(mon.url + "state.json", data=b"x", method="POST"), timeout=5)
        assert exc.value.code == 405
        # nothing answers on the machine's other addresses
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for host in others:
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((host, mon.port)) != 0


def _chromium(url: str, tmp: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=4000", *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return out.stdout


def _number(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"#{element_id} missing from the page"
    return m.group(1)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_live_page_in_headless_chromium_during_a_simulated_session(tmp_path):
    ss = StimulusSet(builtin_images(8, 32, 0))
    monkey = SimulatedMonkey(SimParams(n_channels=6, fixation_break_prob=0.3, seed=5), n_reference_images=32)
    sch = build_schedule(ss.parent, 12, 4, 0, 0.3)
    backend = SimBackend(monkey, refresh_hz=60.0, gaze_hz=250.0)
    session = SessionInfo("monitor-test", 2, seed=3)
    state = MonitorState(session_id=session.session_id, day=2, backend="sim", fixation_window_deg=2.0,
                         channel_names=[f"sim{c}" for c in range(6)])
    allowed = threading.Semaphore(0)
    free = threading.Event()

    def observer(rows, progress):                 # the test lets the session run trial by trial
        monitor.observe(rows, progress)
        if not free.is_set():
            allowed.acquire(timeout=60)

    def wait_updates(n):
        end = time.monotonic() + 60
        while state.updates < n and time.monotonic() < end:
            time.sleep(0.02)
        assert state.updates >= n

    path = tmp_path / "day2.h5"
    writer = DayWriter.create(path, config_text="", day=2, session_id=session.session_id, stimuli=ss,
                              schedule_stim_index=sch.stim_index, presentations_per_trial=4,
                              seconds_per_presentation=0.3, channel_names=[f"sim{c}" for c in range(6)],
                              backend="sim", window_ms=(70.0, 170.0))
    with LiveMonitor(state, "127.0.0.1", 0) as monitor:
        out = {}
        th = threading.Thread(target=lambda: out.update(res=run_session(
            backend, writer, ss, sch, session, (70.0, 170.0), observer=observer)), daemon=True)
        th.start()
        try:
            for _ in range(4):
                allowed.release()
            wait_updates(5)
            SHOTS.mkdir(exist_ok=True)
            shot = SHOTS / "live_monitor.png"
            _chromium(monitor.url, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", "--hide-scrollbars")
            dom1 = _chromium(monitor.url, tmp_path, "--dump-dom")
            for _ in range(10):
                allowed.release()
            wait_updates(15)
            dom2 = _chromium(monitor.url, tmp_path, "--dump-dom")
        finally:
            free.set()
            for _ in range(1000):
                allowed.release()
            th.join(timeout=120)
            writer.close()
    assert out["res"].complete
    # every panel is there and drawn
    for dom in (dom1, dom2):
        for panel in PANELS:
            assert f'id="{panel}"' in dom
        assert 'id="fix-window"' in dom and 'class="trace"' in dom          # the eye panel drew its SVG
        assert dom.count("<rect") >= 6                                       # one rate bar per site
    # the numbers are the session's, and they moved between the two page loads
    assert _number(dom1, "trials") == "5" and _number(dom2, "trials") == "15"
    assert _number(dom1, "updated") != _number(dom2, "updated")
    assert "%" in _number(dom2, "valid-fraction") and "s" in _number(dom2, "eta")
    assert shot.exists() and shot.stat().st_size > 10_000
    # the PNG really is the page: mostly the light panels, not a blank or an error page
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[1] == 1400 and (img.std(axis=(0, 1)) > 10).all()


class _NoPulseAfter:
    """A sim backend whose sync pulses stop after a few trials (a photodiode pulled out),
    without an eye tracker, as a live rig reports it."""

    name = "sim"

    def __init__(self, inner, good_trials):
        self.inner, self.good = inner, good_trials

    def open(self, session, stimuli):
        self.inner.open(session, stimuli)

    def run_trial(self, trial):
        rec = self.inner.run_trial(trial)
        rec.fixation_monitored = False
        rec.eye_presenter_s = rec.eye_x_deg = rec.eye_y_deg = rec.eye_pupil = np.zeros(0)
        if trial.trial_index >= self.good:
            rec.sync_presenter_s, rec.sync_acq_s = rec.sync_presenter_s[:0], rec.sync_acq_s[:0]
            rec.pulse_ok = np.zeros(rec.completed, bool)
            rec.note = f"no sync pulse for presentations {list(range(rec.completed))} (invalid, re-queued)"
        return rec

    def close(self):
        self.inner.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_monitor_shows_invalid_reasons_adapter_counters_and_the_current_stimulus(tmp_path):
    """The screenshot (tests/artifacts/live_monitor_invalid.png) was looked at: warnings panel
    lists '8 x no sync pulse', the note, 'fixation not monitored', 'no reward device' and the counters."""
    from rig.session.runner import SessionLimits, SessionStopped

    ss = StimulusSet(builtin_images(8, 32, 0))
    monkey = SimulatedMonkey(SimParams(n_channels=6, fixation_break_prob=0.0, seed=5), n_reference_images=32)
    sch = build_schedule(ss.parent, 6, 4, 0, 0.3)
    session = SessionInfo("monitor-invalid", 0, seed=3)
    counters = {"ttl": 40, "other_ttl_lines": 7, "unknown_electrodes": 3, "other_stream_ttl": 2}
    state = MonitorState(session_id=session.session_id, day=0, backend="rig", channel_names=[f"sim{c}" for c in range(6)],
                         stimuli=ss, reward_device="none", adapter=lambda: counters)
    writer = DayWriter.create(tmp_path / "d.h5", config_text="", day=0, session_id=session.session_id, stimuli=ss,
                              schedule_stim_index=sch.stim_index, presentations_per_trial=4,
                              seconds_per_presentation=0.3, channel_names=[f"sim{c}" for c in range(6)],
                              backend="sim", window_ms=(70.0, 170.0))
    with LiveMonitor(state, "127.0.0.1", 0) as monitor, writer:
        with pytest.raises(SessionStopped, match="timing-check --acquisition"):
            run_session(_NoPulseAfter(SimBackend(monkey, refresh_hz=60.0), 6), writer, ss, sch, session, (70.0, 170.0),
                        observer=monitor.observe, limits=SessionLimits(max_without_pulse=8))
        SHOTS.mkdir(exist_ok=True)
        shot = SHOTS / "live_monitor_invalid.png"
        _chromium(monitor.url, tmp_path, f"--screenshot={shot}", "--window-size=1500,1000", "--hide-scrollbars")
        dom = _chromium(monitor.url, tmp_path, "--dump-dom")
    assert "8 x no sync pulse" in dom and "fixation not monitored" in dom and "no reward device" in dom
    assert "other ttl lines 7" in dom and "unknown electrodes 3" in dom
    assert 'id="stim-img"' in dom and "data:image/png;base64," in dom
    assert dom.count('class="tick"') >= 20 and "time from stimulus onset, ms" in dom and "rate, spikes/s" in dom
    assert dom.count('class="cell"') == 6 * 30                      # the PSTH heat map: sites x 10 ms bins
    assert shot.exists() and shot.stat().st_size > 10_000
