"""Replay backend: a recorded day re-run offline reproduces it, recounts in a new window,
refuses other stimuli or a diverging queue, and never touches the source or an existing file."""
import argparse
import hashlib

import h5py
import numpy as np
import pytest

from rig.backend import SessionInfo, Trial
from rig.backends.replay import ReplayBackend, replay_day
from rig.cli.day_replay import add_replay_command
from rig.errors import UserError
from rig.session.clock import window_counts
from rig.session.runner import run_session
from rig.store.dayfile import DayFileError
from rig.store.reader import read_day
from stimuli.stimset import StimulusSet
from tests.fakes import CountingBackend
from tests.test_dayfile import _new, _stimuli, strip_epsilon_index


def _record(path, max_trials=None):
    ss = _stimuli()
    w, sch = _new(path, ss)
    be = CountingBackend(abort_at={1: 2}, drop_at={(3, 1)})
    with w:
        run_session(be, w, ss, sch, SessionInfo("test", 1), (70.0, 170.0), max_trials=max_trials)
    return be


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _equal(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "day.h5"
    be = _record(path)
    return path, be


def test_same_window_reproduces_the_recording(recorded, tmp_path):
    src, be = recorded
    before = _sha(src)
    out = replay_day(src, tmp_path / "replay.h5")
    assert _sha(src) == before  # the source is only read
    a, b = read_day(src), read_day(out)
    assert b.complete and b.attrs["backend"] == "replay" and b.attrs["replayed_from_file"] == str(src)
    assert b.origin.replayed_from == a.attrs["identifier"] and b.origin.kind == a.origin.kind
    assert (b.attrs["window_start_ms"], b.attrs["window_end_ms"]) == (70.0, 170.0)
    assert b.config_text == a.config_text and b.stim_ids == a.stim_ids and b.channel_names == a.channel_names
    assert _equal(b.schedule_stim_index, a.schedule_stim_index)
    # the recording had an aborted trial and a dropped frame: both reproduced
    assert not a.trials["fixation_ok"][1] and a.presentations["dropped_frame"].sum() == 1
    for name in a.trials:
        assert _equal(b.trials[name], a.trials[name]), name
    for name in a.presentations:  # includes onset_acq_s (clock refit) and valid
        assert _equal(b.presentations[name], a.presentations[name]), name
    assert _equal(b.counts, a.counts)
    assert _equal(b.spike_times_s, a.spike_times_s) and _equal(b.spike_channels, a.spike_channels)
    assert _equal(b.sync_presenter_s, a.sync_presenter_s) and _equal(b.sync_acq_s, a.sync_acq_s)
    # and the known answer of the fake still holds
    assert np.array_equal(b.mean_responses(), np.array([be.expected(s) for s in range(len(b.stimuli))]))
    with h5py.File(src, "r") as ha, h5py.File(out, "r") as hb:
        for k in ("fit_offset_s", "fit_drift", "fit_n_pairs"):
            assert ha["sync"].attrs[k] == hb["sync"].attrs[k], k


def test_trial_that_lost_all_its_pulses_replays_on_its_segment(tmp_path):
    """Only pulses store the clock segment: a trial without any keeps the segment it was timed on
    (its onsets still got acquisition times from the fit), so the replay gives the same times."""
    ss = _stimuli()
    src = tmp_path / "day.h5"
    w, sch = _new(src, ss)
    with w:
        run_session(CountingBackend(no_pulse_at={2}, segment="presenter-1"), w, ss, sch, SessionInfo("test", 1),
                    (70.0, 170.0))
    a = read_day(src)
    lost = a.presentations["trial_index"] == 2
    assert np.all(np.isfinite(a.presentations["onset_acq_s"][lost])) and not a.presentations["valid"][lost].any()
    b = read_day(replay_day(src, tmp_path / "replay.h5"))
    for name in a.presentations:
        assert _equal(b.presentations[name], a.presentations[name]), name


def test_other_window_recounts_from_raw_spikes(recorded, tmp_path):
    src, _ = recorded
    out = replay_day(src, tmp_path / "wide.h5", window_ms=(0.0, 300.0))
    a, b = read_day(src), read_day(out)
    assert (b.attrs["window_start_ms"], b.attrs["window_end_ms"]) == (0.0, 300.0)
    assert np.array_equal(read_day(out).presentations["valid"], a.presentations["valid"])
    recount = window_counts(a.spike_times_s, a.spike_channels, a.presentations["onset_acq_s"], a.n_channels, 0.0, 300.0)
    assert _equal(b.counts, recount.astype(np.float32))
    shown = a.presentations["shown"]
    assert np.all(b.counts[shown] > a.counts[shown])  # the wider window also holds the spikes outside 70-170 ms
    assert np.all(np.isnan(b.counts[~shown]))


def test_mismatched_stimuli_refused(recorded):
    src, _ = recorded
    d = read_day(src)
    other = StimulusSet(np.clip(d.stimuli.pixels.astype(int) + 1, 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="not the recorded one"):
        ReplayBackend(d).open(SessionInfo("x", 1), other)
    fewer = StimulusSet(d.stimuli.pixels[:-1])
    with pytest.raises(ValueError, match="stimuli were given"):
        ReplayBackend(d).open(SessionInfo("x", 1), fewer)


def test_trial_with_other_slots_refused(recorded):
    src, _ = recorded
    d = read_day(src)
    be = ReplayBackend(d)
    be.open(SessionInfo("x", 1), d.stimuli)
    k = int(d.trials["n_planned"][0])
    planned = tuple(int(i) for i in d.presentations["planned_index"][:k])
    stims = tuple(int(d.schedule_stim_index[i]) for i in planned)
    rec = be.run_trial(Trial(0, stims, planned))
    assert rec.completed == k and np.array_equal(rec.onset_presenter_s, d.presentations["onset_presenter_s"][:k])
    swapped = planned[::-1]
    with pytest.raises(ValueError, match="does not follow the recorded queue"):
        be.run_trial(Trial(0, tuple(int(d.schedule_stim_index[i]) for i in swapped), swapped))
    with pytest.raises(ValueError, match="was not recorded"):
        be.run_trial(Trial(len(d.trials["trial_index"]), stims, planned))


def test_output_never_overwritten(recorded, tmp_path):
    src, _ = recorded
    before = _sha(src)
    existing = tmp_path / "taken.h5"
    existing.write_bytes(b"precious")
    with pytest.raises(DayFileError, match="already exists"):
        replay_day(src, existing)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(ValueError, match="is the source file"):
        replay_day(src, src)
    assert _sha(src) == before


def test_day_recorded_before_epsilon_index_replays(recorded, tmp_path):
    """A day file from before /stimuli/epsilon_index: replayed, the copy carries the grid the reader gave it."""
    old = tmp_path / "old.h5"
    old.write_bytes(recorded[0].read_bytes())
    strip_epsilon_index(old)
    out = replay_day(old, tmp_path / "old_replay.h5")
    a, b = read_day(old), read_day(out)
    assert b.complete and _equal(b.counts, a.counts)
    assert _equal(b.stimuli.epsilon_index, a.stimuli.epsilon_index) and _equal(b.stimuli.epsilons, np.array([0.5, 2.0]))
    with h5py.File(out, "r") as h5:
        assert "epsilon_index" in h5["stimuli"] and list(h5["stimuli"].attrs["epsilons"]) == [0.5, 2.0]


def test_incomplete_recording_replays_incomplete(tmp_path):
    _record(tmp_path / "part.h5", max_trials=3)
    out = replay_day(tmp_path / "part.h5", tmp_path / "part_replay.h5")
    a, b = read_day(tmp_path / "part.h5"), read_day(out)
    assert not a.complete and not b.complete and len(b.trials["trial_index"]) == 3
    assert _equal(b.counts, a.counts) and _equal(b.presentations["valid"], a.presentations["valid"])


def test_cli(recorded, tmp_path, capsys):
    src, _ = recorded
    parser = argparse.ArgumentParser()
    add_replay_command(parser.add_subparsers(dest="day_command"))
    args = parser.parse_args(["replay", str(src), "--out", str(tmp_path / "c.h5"), "--window", "50", "200", "--no-progress"])
    assert args.func(args) == 0
    assert "replayed" in capsys.readouterr().out
    d = read_day(tmp_path / "c.h5")
    assert (d.attrs["window_start_ms"], d.attrs["window_end_ms"]) == (50.0, 200.0) and d.complete
    args = parser.parse_args(["replay", str(src), "--out", str(tmp_path / "c.h5"), "--no-progress"])
    with pytest.raises(UserError, match="already exists"):
        args.func(args)
    args = parser.parse_args(["replay", str(src), "--out", str(tmp_path / "e.h5"), "--window", "200", "50"])
    with pytest.raises(UserError, match="is empty"):
        args.func(args)
    assert not (tmp_path / "e.h5").exists()


def test_recording_that_a_fresh_queue_cannot_reproduce_is_refused_up_front(recorded):
    from rig.backends.replay import _check_queue_matches

    src, _ = recorded
    d = read_day(src)
    _check_queue_matches(d)  # the real recording follows the queue
    d.presentations["planned_index"] = d.presentations["planned_index"].copy()
    d.presentations["planned_index"][[0, 1]] = d.presentations["planned_index"][[1, 0]]
    with pytest.raises(ValueError, match="cannot be replayed"):
        _check_queue_matches(d)
