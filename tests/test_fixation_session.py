"""End to end on loopback: the real presenter (PsychoPy under Xvfb) enforcing fixation on the
simulated eye streamed over LSL (a separate ``itloop sim-gaze`` process), spikes from the
simulated monkey, rewards through the serial driver into a real pty, ``--backend presenter``'s
PresenterBackend and the session runner writing a day file.

Breaks are injected into the eye stream at known LSL times. Checked from the presenter's
own flip log: every abort is a blank frame drawn right after the first check that saw the
breaking sample (no image or mask frame after it), the breaking sample is the injected
one, the trial's unshown presentations were re-queued and later recorded, the eye trace
is in the day file on the acquisition clock, and one reward went out per completed trial.
No assertion depends on wall-clock frame timing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rig.backend import SessionInfo
from rig.backends.presenter import PresenterBackend, SimSpikeSource
from rig.link.client import PresenterClient
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayWriter
from rig.store.reader import read_day
from rig.store.repair import check_day
from sim.monkey import SimParams, SimulatedMonkey
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet
from tests.fixation_checks import check_aborts_on_next_frame, check_requeued, drain_pty
from tests.lsl_local import unique_stream

pytestmark = [
    pytest.mark.xvfb, pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")
pytest.importorskip("pylsl", reason="pip install pylsl")

N_CH, K, REPEATS = 4, 4, 2
BREAKS_AFTER_FIRST_TRIAL_S = [0.45, 1.3, 1.9, 2.8, 3.6, 4.4, 5.2, 6.1, 7.1]     # injected breaks, s after trial 0 starts (LSL clock)
AWAY_MS = 250.0


def test_fixation_breaks_abort_on_the_next_frame_and_are_requeued(tmp_path):
    import pylsl

    stream = unique_stream()
    master, slave = os.openpty()
    cfg = tmp_path / "presenter.toml"
    cfg.write_text(f'[eye]\nsource = "lsl"\nlsl_stream = "{stream}"\nresolve_timeout_s = 30.0\n'
                   "[fixation]\nlost_ms = 2000.0\nacquire_timeout_ms = 20000.0\n"
                   f'[reward]\ndriver = "serial"\nport = "{os.ttyname(slave)}"\nmode = "command"\nduration_ms = 80.0\n')
    gaze = subprocess.Popen([sys.executable, "-m", "rig.cli", "sim-gaze", "--name", stream, "--seconds", "240",
                             "--jitter", "0.05", "--drift", "0.1", "--away-deg", "8", "--away-ms", str(AWAY_MS)],
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ss = StimulusSet(builtin_images(8, 32, 0))
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, fixation_break_prob=0.9, seed=3), n_reference_images=32)
    sch = build_schedule(ss.parent, REPEATS, K, 0, 0.3)
    session = SessionInfo("eye-e2e", 1, fixation_acquire_ms=100.0, inter_trial_ms=100.0, seed=1)
    client = PresenterClient("tcp://127.0.0.1:*", session=session.session_id, heartbeat_s=0.2, dead_after_s=10.0)
    log = open(tmp_path / "presenter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--config", str(cfg), "--endpoint",
                             client.endpoint, "--windowed", "320x240", "--refresh-hz", "60", "--pace"],
                            stdout=log, stderr=subprocess.STDOUT)
    results, injected = [], []
    try:
        backend = PresenterBackend(client, SimSpikeSource(monkey), wait_for_presenter_s=90, reward_ms=80.0)
        start = client.start_trial

        def start_and_inject(*a, **kw):
            if not injected:                      # breaks at known LSL times, from the first trial on
                now = pylsl.local_clock()
                injected.extend(now + d for d in BREAKS_AFTER_FIRST_TRIAL_S)
                gaze.stdin.write("".join(f"break_at {t!r}\n" for t in injected))
                gaze.stdin.flush()
            return start(*a, **kw)

        finish = client.finish_trial
        client.start_trial = start_and_inject
        client.finish_trial = lambda *a, **kw: results.append(finish(*a, **kw)) or results[-1]
        path = tmp_path / "day1.h5"
        with DayWriter.create(path, config_text="[rsvp]\nstim_on_ms = 100.0\n", day=1, session_id=session.session_id,
                              stimuli=ss, schedule_stim_index=sch.stim_index, presentations_per_trial=K,
                              seconds_per_presentation=0.3, channel_names=[f"sim{i}" for i in range(N_CH)],
                              backend="presenter", window_ms=(70.0, 170.0)) as writer:
            res = run_session(backend, writer, ss, sch, session, (70.0, 170.0), max_trials=40)
        client.shutdown()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        gaze.kill()
        gaze.wait(timeout=10)
        client.close()
        log.close()
        time.sleep(0.2)
        pulses = drain_pty(master)
        os.close(master)
        os.close(slave)

    assert res.complete, (tmp_path / "presenter.log").read_text()[-2000:]
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete"

    # ---- every abort came on the frame after the check that first saw the breaking sample
    aborted = [r for r in results if r.aborted]
    assert len(aborted) >= 2, f"only {len(aborted)} of the injected breaks fell in an RSVP"
    lat = check_aborts_on_next_frame(aborted, injected)       # informational latencies (Xvfb, paced)
    print(f"\n{len(injected)} breaks injected, {len(aborted)} fell in an RSVP and aborted it; breaking sample -> "
          f"blank flip {np.min(lat):.1f}-{np.max(lat):.1f} ms (median {np.median(lat):.1f}) at 60 Hz; "
          f"{len(results)} trials for {len(sch.stim_index)} presentations")

    # ---- aborted presentations were re-queued and recorded later; shown ones kept with their validity
    d = read_day(path)
    pres = d.presentations
    trials = d.trials
    assert int(np.sum(~trials["fixation_ok"])) == len(aborted)
    check_requeued(pres, len(sch.stim_index))

    # ---- the eye trace is in the day file, per trial, on the acquisition clock
    _d = read_day(path)
    eye, rewards = _d.eye, _d.rewards
    assert set(np.unique(eye["trial_index"])) == set(trials["trial_index"].tolist())
    for ti, completed, planned in zip(trials["trial_index"], trials["completed"], trials["n_planned"]):
        sel = eye["trial_index"] == ti
        # at least the acquire time (100 ms at 500 Hz), and the whole RSVP for a completed trial
        assert sel.sum() >= (45 if completed < planned else 45 + planned * 0.2 * 500 * 0.9), (ti, sel.sum())
        assert np.all(np.diff(eye["t_presenter_s"][sel]) > 0)
    ok = np.isfinite(eye["t_acq_s"])
    np.testing.assert_allclose(eye["t_acq_s"][ok], monkey.clock.to_acq(eye["t_presenter_s"][ok]), atol=2e-3)
    assert np.median(np.hypot(eye["x_deg"], eye["y_deg"])) < 0.5     # mostly on the fixation point

    # ---- one reward per completed trial: in the day file and on the serial line
    n_completed = int(np.sum(trials["completed"] == trials["n_planned"]))
    assert len(rewards["kind"]) == n_completed and (rewards["kind"] == 0).all()
    assert np.allclose(rewards["duration_ms"], 80.0)
    assert pulses.count(b"R 80\n") == n_completed, pulses
