"""Issue 20 at the unit level: Open Ephys streams and the RECORD answer over real sockets,
the acquisition clock's zero from event times, invalid reasons, bounded re-queues and the
runner's status line and stop rule (through a real day file)."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from rig.backend import InvalidReason, TrialRecord, invalid_reasons
from rig.session.schedule import PresentationQueue, Schedule
from rig.sources.clockzero import ClockZero
from rig.sources.openephys import OpenEphysError, OpenEphysSource
from sim.acquisition import SECOND_STREAM, BroadcasterPub, FakeGuiHttp
from tests.configs import free_port


def _connected(src, pub) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not np.isfinite(src.latest_s):
        pub.ttl(1, 5, True)
        src.events_since(0.05)


def test_events_of_another_stream_are_counted_not_mixed():
    port = free_port()
    pub = BroadcasterPub(f"tcp://127.0.0.1:{port}", 30000.0, stream="probe")
    src = OpenEphysSource("127.0.0.1", port, http_control=False, n_channels=2, spike_stream="probe")
    try:
        src.open()
        _connected(src, pub)
        for n in (30000, 60000):
            pub.spike(n, "Electrode 1")
            pub.ttl(n, 0, True)
            pub.ttl(n * 5 // 6 + 999, 0, True, stream=SECOND_STREAM, sample_rate=25000.0)   # its own counter
            pub.sock.send_multipart(pub.encode_spike(n + 7, "Electrode 2")[:1] + [
                pub.encode_spike(n + 7, "Electrode 2")[1].replace(b'"probe"', b'"other probe"')])
        got_t, got_s, ttl = [], [], []
        deadline = time.monotonic() + 10
        while (len(got_t) < 2 or len(ttl) < 2) and time.monotonic() < deadline:
            ev = src.events_since(0.05)
            got_t += ev.spike_times_s.tolist()
            got_s += ev.spike_channels.tolist()
            ttl += ev.ttl_times_s[ev.ttl_lines == 0].tolist()
        time.sleep(0.1)
        src.events_since(0.05)
        assert got_t == [1.0, 2.0] and got_s == [0, 0] and ttl == [1.0, 2.0]
        assert src.counters["other_stream_ttl"] == 2 and src.counters["other_stream_spikes"] == 2
        assert src.latest_s == 2.0 and src.describe()["clock_stream"] == "probe"
    finally:
        src.close()
        pub.close()


def test_two_different_streams_in_the_config_are_one_clear_error():
    with pytest.raises(OpenEphysError, match="separate sample counters"):
        OpenEphysSource(spike_stream="probe", ttl_stream="NI-DAQ")


def test_a_gui_that_does_not_record_is_refused():
    port, http_port = free_port(), free_port()
    gui = FakeGuiHttp(http_port, refuse_record=True)
    src = OpenEphysSource("127.0.0.1", port, http_port, True, n_channels=1)
    try:
        src.open()
        with pytest.raises(OpenEphysError, match="answered mode 'ACQUIRE' to RECORD.*Record Node"):
            src.start_recording("day0")
        gui.refuse_record = False
        src.start_recording("day0")
        assert gui.mode == "RECORD"
    finally:
        src.close()
        gui.close()
    assert gui.mode == "ACQUIRE"


def test_clock_zero_is_the_smallest_receive_minus_sample_time(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("rig.sources.clockzero.time.time", lambda: now[0])
    z = ClockZero()
    for t, lag in ((5.0, 0.004), (5.1, 0.0012), (5.1, 0.5), (5.3, 0.002)):   # a repeated latest does not count
        now[0] = 900.0 + t + lag
        z.observe(t)
    z.running()
    now[0] = 900.0 + 60.0 + 0.0015
    z.observe(60.0)
    z.ending(None)
    now[0] = 900.0 + 61.0 + 0.003
    z.observe(61.0)
    start, end = z.start_attrs("X"), z.end_attrs("X")
    assert start["acq_clock_zero_start_unix_s"] == pytest.approx(900.0012) and z.n_start == 3
    assert end["acq_clock_zero_end_unix_s"] == pytest.approx(900.0015)
    assert end["acq_clock_zero_change_s"] == pytest.approx(0.0003)


def _rec(completed, **kw):
    n = completed
    return TrialRecord(0, completed, kw.pop("fixation_ok", True), np.arange(n, dtype=float), np.full(n, 6), np.full(n, 6),
                       np.zeros(n, bool), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, int), **kw)


def test_invalid_reasons_name_the_first_cause():
    R = InvalidReason
    rec = _rec(3, fixation_ok=False, pulse_ok=[True, False, True])
    rec.dropped_frame = np.array([False, False, True])
    valid = np.array([True, False, False, False])
    assert invalid_reasons(rec, 4, valid).tolist() == [R.VALID, R.NO_SYNC_PULSE, R.DROPPED_FRAME, R.FIXATION_BREAK]
    rec = _rec(2, pulse_ok=[False, False], clock_aligned=False)
    assert invalid_reasons(rec, 3, np.zeros(3, bool)).tolist() == [R.CLOCK_NOT_ALIGNED] * 2 + [R.NOT_SHOWN]
    rec = _rec(2, acquisition_ok=False, pulse_ok=[False, False])
    assert invalid_reasons(rec, 2, np.zeros(2, bool)).tolist() == [R.ACQUISITION_GAP] * 2


def test_each_planned_presentation_is_tried_a_bounded_number_of_times():
    q = PresentationQueue(Schedule(np.array([0, 1, 2, 3]), 2, 0.3), max_attempts=3)
    trials = 0
    while (t := q.next_trial()) is not None:
        q.complete([p != 1 for p in t.planned_indices])          # planned slot 1 never records
        trials += 1
        assert trials < 20
    assert q.given_up == [1] and len(q) == 0 and trials == 4


def test_status_line_and_stop_through_a_real_day(tmp_path, caplog):
    from rig.backend import SessionInfo
    from rig.config import Config
    from rig.session.runner import SessionLimits, SessionStopped, run_session
    from rig.session.schedule import build_schedule
    from rig.store.dayfile import DayWriter
    from rig.store.reader import read_day
    from sim.backend import SimBackend
    from sim.monkey import SimParams, SimulatedMonkey
    from sim.refimages import reference_images
    from stimuli.stimset import StimulusSet

    class PulsesStop:
        name = "sim"

        def __init__(self, inner):
            self.inner = inner

        def open(self, s, st):
            self.inner.open(s, st)

        def run_trial(self, trial):
            rec = self.inner.run_trial(trial)
            if trial.trial_index >= 3:
                rec.sync_presenter_s, rec.sync_acq_s = rec.sync_presenter_s[:0], rec.sync_acq_s[:0]
                rec.pulse_ok = np.zeros(rec.completed, bool)
            return rec

        def close(self):
            self.inner.close()

    stim = StimulusSet(reference_images(6, 32, seed=5))
    monkey = SimulatedMonkey(SimParams(n_channels=2, hidden_width=8, fixation_break_prob=0.0), n_reference_images=16)
    sched = build_schedule(stim.parent, 4, 4, 0, 0.3)
    path = tmp_path / "day_000.h5"
    writer = DayWriter.create(path, config_text=Config().to_toml(), day=0, session_id="s", stimuli=stim,
                              schedule_stim_index=sched.stim_index, presentations_per_trial=4,
                              seconds_per_presentation=0.3, channel_names=["a", "b"], backend="sim", window_ms=(70.0, 170.0))
    caplog.set_level(logging.INFO, logger="rig.session.runner")
    with writer, pytest.raises(SessionStopped, match=r"day 0 stopped: 12 presentations in a row without a sync pulse \(no sync pulse x12\)"):
        run_session(PulsesStop(SimBackend(monkey, refresh_hz=60.0)), writer, stim, sched, SessionInfo("s", 0, n_channels=2),
                    (70.0, 170.0), limits=SessionLimits(max_without_pulse=10, status_every_trials=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "rig.session.runner" and "preparing" not in r.getMessage()]
    assert any("leading invalid reason: no sync pulse" in x and "valid" in x for x in lines)   # pytest's output is no tty
    assert len(lines) == len(set(lines)) == 3                 # every 2 trials; the closing line is not repeated
    d = read_day(path)
    assert len(d.trials["trial_index"]) == 6                                   # 3 good trials, then 12 without >= 10
    assert (d.presentations["invalid_reason"][12:] == InvalidReason.NO_SYNC_PULSE).all()
    assert (d.presentations["invalid_reason"][:12] == 0).all() and (d.presentations["fixation"][:12] == 1).all()
