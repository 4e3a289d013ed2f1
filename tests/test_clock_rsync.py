"""Rsync-style sync line (random inter-pulse intervals) against the simulator's truth."""
from __future__ import annotations

import numpy as np

from rig.session.clock import match_rsync, vote_offset
from sim.clocks import ClockMap, received_pulses, rsync_times


def test_rsync_alignment_below_half_a_millisecond_with_drift_drops_and_spurious_pulses():
    rng = np.random.default_rng(11)
    clock = ClockMap(offset_s=1234.5678, drift_ppm=50.0)
    sent = rsync_times(rng, 600.0, t0_s=5.0)                      # 10 min of pulses, 1 s mean interval
    got, src, true_acq = received_pulses(rng, sent, clock, drop_p=0.01, n_spurious=5)
    dropped = np.setdiff1d(np.arange(len(sent)), src[src >= 0])
    assert len(dropped) > 0
    seg, idx = match_rsync(sent, got)
    assert seg is not None
    want = np.full(len(sent), -1)
    want[src[src >= 0]] = np.flatnonzero(src >= 0)                 # each kept pulse's place in `got`
    assert np.array_equal(idx, want), "a pulse was paired with the wrong one, or a dropped one was paired"
    err = np.abs(seg.to_acq(sent) - true_acq)
    assert err.max() < 0.5e-3, err.max()
    assert abs(seg.drift * 1e6 - 50.0) < 2.0


def test_a_train_missing_its_first_pulses_is_not_ambiguous():
    rng = np.random.default_rng(12)
    clock = ClockMap(offset_s=-37.25, drift_ppm=-20.0)
    sent = rsync_times(rng, 20.0)
    got, src, true_acq = received_pulses(rng, sent, clock, drop_p=0.0)
    seg, idx = match_rsync(sent, got[2:])                          # recording started late
    assert np.array_equal(idx, np.r_[-1, -1, np.arange(len(sent) - 2)])
    assert np.abs(seg.to_acq(sent) - true_acq).max() < 0.5e-3
    # a regular train with its first pulse missing: ambiguous by one period for vote_offset ...
    regular = 0.2 * np.arange(6)
    assert vote_offset(regular, (regular + 50.0)[1:], 0.003)[0] is None
    # ... and gives the interval matcher nothing to go on: no fit rather than a wrong one
    assert match_rsync(regular, (regular + 50.0)[1:])[0] is None


def test_pulses_of_another_session_do_not_match():
    rng = np.random.default_rng(13)
    a, b = rsync_times(rng, 120.0), rsync_times(rng, 120.0)
    seg, idx = match_rsync(a, b + 10.0)
    assert seg is None and (idx == -1).all()
