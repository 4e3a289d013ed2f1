"""A whole session through the real presenter (headless, Xvfb) with the simulated monkey
supplying spikes: the day file is valid and its onsets are the presenter's flip times."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rig.backend import SessionInfo
from rig.backends.presenter import PresenterBackend, SimSpikeSource
from rig.link.client import PresenterClient
from rig.link.protocol import KIND_CODE
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayWriter
from rig.store.reader import read_day
from rig.store.repair import check_day
from sim.monkey import SimParams, SimulatedMonkey
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")

N_CH, K, REPEATS = 4, 4, 2


def test_session_through_real_presenter_records_presenter_flips(tmp_path):
    ss = StimulusSet(builtin_images(8, 32, 0))
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, fixation_break_prob=0.25, seed=3), n_reference_images=32)
    sch = build_schedule(ss.parent, REPEATS, K, 0, 0.3)
    session = SessionInfo("headless", 1, fixation_acquire_ms=50.0, inter_trial_ms=100.0, seed=1)
    client = PresenterClient("tcp://127.0.0.1:*", session=session.session_id, heartbeat_s=0.2, dead_after_s=5.0)
    log = open(tmp_path / "presenter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--endpoint", client.endpoint,
                             "--windowed", "320x240", "--refresh-hz", "60", "--pace"], stdout=log,
                            stderr=subprocess.STDOUT)
    results = []
    try:
        backend = PresenterBackend(client, SimSpikeSource(monkey), wait_for_presenter_s=60)
        finish = client.finish_trial
        client.finish_trial = lambda *a, **kw: results.append(finish(*a, **kw)) or results[-1]   # keep what the presenter said
        path = tmp_path / "day1.h5"
        with DayWriter.create(path, config_text="[rsvp]\nstim_on_ms = 100.0\n", day=1, session_id="headless",
                              stimuli=ss, schedule_stim_index=sch.stim_index, presentations_per_trial=K,
                              seconds_per_presentation=0.3, channel_names=[f"sim{i}" for i in range(N_CH)],
                              backend="presenter", window_ms=(70.0, 170.0)) as writer:
            res = run_session(backend, writer, ss, sch, session, (70.0, 170.0), max_trials=300)  # a bound, not a target: drops re-queue
        client.shutdown()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        client.close()
        log.close()

    assert res.complete
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete"
    assert summary["aborted_trials"] >= 1                 # fixation breaks went through the abort path
    d = read_day(path)
    pres = d.presentations
    assert len(results) == len(d.trials["trial_index"])
    # every stored onset is the flip that put the image up, as the presenter stamped it
    stored = []
    for r in results:
        first_on = [np.flatnonzero((r.frame_kind == KIND_CODE["stim_on"]) & (r.frame_pres == i))[0]
                    for i in range(r.completed)]
        stored.append(np.r_[r.frame_time_s[first_on], np.full(len(r.onset_s) - r.completed, np.nan)])
    np.testing.assert_array_equal(pres["onset_presenter_s"], np.concatenate(stored))
    shown = pres["shown"]
    assert (pres["frames_on"][shown] == 6).all() and (pres["frames_mask"][shown] == 6).all()
    # the sync pulses aligned the flips onto the monkey's acquisition clock (sub-ms photodiode jitter)
    np.testing.assert_allclose(pres["onset_acq_s"][shown], monkey.clock.to_acq(pres["onset_presenter_s"][shown]),
                               atol=1e-3)
    # and the recorded counts follow the monkey's ground truth
    truth = monkey.expected_counts(monkey.true_rates(ss.pixels))
    r = np.corrcoef(d.mean_responses().ravel(), truth.ravel())[0, 1]
    assert r > 0.6, f"recorded counts do not follow the simulated rates (r = {r:.2f})"
