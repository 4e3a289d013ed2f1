"""Issue 10 items 6-7 through the session runner and the day file: a restarted presenter is
its own clock segment, segments and residuals are stored and checked, absurd fits refused."""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest

from rig.backend import SessionInfo
from rig.config import Config
from rig.session.clock import MIN_DRIFT_SPAN_S, ClockFitError, SegmentedClock
from rig.session.runner import SessionLimits, run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayWriter
from rig.store.journal import journal_path, read_journal
from rig.store.reader import read_day
from rig.store.repair import check_day, recover_day
from sim.backend import SimBackend
from sim.monkey import SimParams, SimulatedMonkey
from sim.refimages import reference_images
from stimuli.stimset import StimulusSet

K = 4


@pytest.fixture(scope="module")
def setup():
    stim = StimulusSet(reference_images(6, 32, seed=5))
    monkey = SimulatedMonkey(SimParams(n_channels=3, hidden_width=8, fixation_break_prob=0.0, clock_drift_ppm=30.0,
                                       clock_offset_s=2.5), n_reference_images=16)
    return stim, monkey


class Tamper:
    """Wraps a backend and rewrites what it reports, as a broken or restarted rig would."""

    def __init__(self, inner, edit):
        self.inner, self.edit, self.name = inner, edit, "sim"

    def open(self, session, stimuli):
        self.inner.open(session, stimuli)

    def run_trial(self, trial):
        return self.edit(trial, self.inner.run_trial(trial))

    def close(self):
        self.inner.close()


def _record(tmp_path, setup, edit, repeats=4, limits=None):
    stim, monkey = setup
    sched = build_schedule(stim.parent, repeats, K, 0, 0.3)
    path = tmp_path / "day_000.h5"
    writer = DayWriter.create(path, config_text=Config().to_toml(), day=0, session_id="s", stimuli=stim,
                              schedule_stim_index=sched.stim_index, presentations_per_trial=K,
                              seconds_per_presentation=0.3, channel_names=["a", "b", "c"], backend="sim",
                              window_ms=(70.0, 170.0))
    backend = Tamper(SimBackend(monkey, refresh_hz=60.0), edit)
    with writer:
        run_session(backend, writer, stim, sched, SessionInfo("s", 0, n_channels=3), (70.0, 170.0), limits=limits)
    return path


def test_a_restarted_presenter_clock_is_fitted_as_its_own_segment(tmp_path, setup):
    _, monkey = setup
    truth = {}

    def restart_after_3(trial, rec):
        truth[trial.trial_index] = monkey.clock.to_acq(rec.onset_presenter_s)
        if trial.trial_index >= 3:              # the new process's PsychoPy clock started 13.5 s later
            rec.onset_presenter_s = rec.onset_presenter_s - 13.5
            rec.sync_presenter_s = rec.sync_presenter_s - 13.5
            rec.end_presenter_s -= 13.5
            rec.clock_segment = "presenter-2"
        else:
            rec.clock_segment = "presenter-1"
        return rec

    path = _record(tmp_path, setup, restart_after_3)
    d = read_day(path)
    p = d.presentations
    want = np.concatenate([truth[t] for t in d.trials["trial_index"]])
    # sync pulses carry the sim's sub-ms photodiode jitter: the fit recovers the flips' acq time to < 0.5 ms
    assert np.nanmax(np.abs(p["onset_acq_s"] - want)) < 0.5e-3
    summary, problems = check_day(path)
    assert problems == []
    assert [s["label"] for s in summary["clock_segments"]] == ["presenter-1", "presenter-2"]
    with h5py.File(path) as h5:
        assert set(h5["sync/segment"].asstr()[:]) == {"presenter-1", "presenter-2"}


def test_day_check_fails_on_residuals_above_the_configured_limit(tmp_path, setup):
    rng = np.random.default_rng(0)

    def noisy(trial, rec):
        rec.sync_acq_s = rec.sync_acq_s + rng.uniform(-2e-3, 2e-3, len(rec.sync_acq_s))
        return rec

    path = _record(tmp_path, setup, noisy)
    summary, problems = check_day(path)
    assert any("exceeds acquisition.max_residual_ms = 0.5 ms" in p for p in problems), problems


@pytest.mark.parametrize("slope, offset", [(0.0, 0.0), (1e12 * 1e-6, 0.0), (1.0, 1e15)])
def test_absurd_clock_fits_stop_the_session_with_one_message_quickly(tmp_path, setup, slope, offset):
    def absurd(trial, rec):
        rec.sync_acq_s = offset + slope * rec.sync_presenter_s
        return rec

    t0 = time.monotonic()
    with pytest.raises(ClockFitError, match="outside ±"):
        _record(tmp_path, setup, absurd, repeats=2)
    assert time.monotonic() - t0 < 60


def _stored_clock(path):
    with h5py.File(path) as h5:
        return dict(h5["sync"].attrs), json.loads(h5.attrs["clock_segments"])


def test_the_day_file_stores_the_runners_fits_made_with_the_sessions_limits(tmp_path, setup):
    """The store writes the fits the session runner made with the session's clock limits (it never
    refits with defaults of its own), journals them with each trial, and a rebuild from the
    journal stores the same."""
    path = _record(tmp_path, setup, lambda trial, rec: rec, limits=SessionLimits(min_drift_span_s=1e6))
    fit, segments = _stored_clock(path)
    d = read_day(path)
    p, a = d.sync_presenter_s, d.sync_acq_s
    assert len(p) > 8 and np.ptp(p) > MIN_DRIFT_SPAN_S
    # the session's limits: pairs never span 1e6 s, so its fit is offset-only (drift exactly 0) ...
    assert fit["fit_drift"] == 0.0 and fit["fit_n_pairs"] == len(p)
    assert [s["drift_ppm"] for s in segments] == [0.0] and segments[0]["n_pairs"] == len(p)
    # ... where a refit with the default limits (what the store used to do) fits a drift (the sim's 30 ppm
    # crystal, seen through the pulses' jitter over a few seconds)
    default = SegmentedClock()
    default.add(segments[0]["label"], p, a)
    assert abs(default.segments[segments[0]["label"]].drift) > 5e-6
    journal = read_journal(journal_path(path))
    assert journal[-1].clock.drift == 0.0 and journal[-1].clock.n_pairs == len(p)
    recover_day(path)
    assert _stored_clock(path) == (fit, segments)
