"""The in-process sim backend: frame timing, fixation breaks, clocks, determinism, errors."""
from __future__ import annotations

import numpy as np
import pytest

from rig.backend import Backend, SessionInfo, Trial
from sim.backend import SimBackend
from sim.clocks import ClockMap, fit_clock_map
from sim.monkey import SimParams, SimulatedMonkey
from sim.refimages import reference_images
from stimuli.stimset import StimulusSet

K = 5


@pytest.fixture(scope="module")
def stimset() -> StimulusSet:
    return StimulusSet(reference_images(10, 64, seed=12))


def _monkey(**kw) -> SimulatedMonkey:
    kw.setdefault("n_channels", 4)
    kw.setdefault("hidden_width", 8)
    return SimulatedMonkey(SimParams(**kw), n_reference_images=32)


def _trials(n: int, n_stim: int = 10):
    return [Trial(i, tuple((np.arange(K) + i) % n_stim), tuple(range(i * K, i * K + K))) for i in range(n)]


def _run(backend: SimBackend, stimset, n: int, session=None):
    backend.open(session or SessionInfo("s", day=0), stimset)
    recs = [backend.run_trial(t) for t in _trials(n)]
    backend.close()
    return recs


def test_is_a_backend_with_frame_locked_rsvp_timing(stimset):
    backend = SimBackend(_monkey(fixation_break_prob=0.0), refresh_hz=60.0)
    assert isinstance(backend, Backend)
    recs = _run(backend, stimset, 20)
    frame = 1 / 60
    for r in recs:
        assert r.completed == K and r.fixation_ok
        assert np.all(r.frames_on == 6) and np.all(r.frames_mask == 6)  # 100 ms = 6 frames at 60 Hz
        np.testing.assert_allclose(np.diff(r.onset_presenter_s), 12 * frame, atol=1e-9)
        k = r.onset_presenter_s / frame
        np.testing.assert_allclose(k, np.round(k), atol=1e-6)         # every onset is a flip
        np.testing.assert_array_equal(r.sync_presenter_s, r.onset_presenter_s)
        assert np.all(np.abs(r.sync_acq_s - backend.monkey.clock.to_acq(r.sync_presenter_s)) < 0.0005)
        assert np.all((r.spike_times_s >= r.start_acq_s) & (r.spike_times_s < r.end_acq_s))
        assert np.all(np.diff(r.spike_times_s) >= 0)
        assert set(np.unique(r.spike_channels)) <= set(range(4))
    # trials tile the acquisition record: each starts where the previous one stopped
    np.testing.assert_allclose([r.start_acq_s for r in recs[1:]], [r.end_acq_s for r in recs[:-1]])
    # the fixation period (300 ms) and inter-trial interval (500 ms) are respected
    gaps = np.array([b.onset_presenter_s[0] - a.onset_presenter_s[-1] for a, b in zip(recs, recs[1:])])
    assert np.all(gaps >= 0.2 + 0.5 + 0.3 - 1e-9) and np.all(gaps < 0.2 + 0.5 + 0.3 + frame)


def test_fixation_break_rate_and_incomplete_presentations(stimset):
    p = 0.2
    n = 3000
    backend = SimBackend(_monkey(fixation_break_prob=p, seed=8))
    recs = _run(backend, stimset, n)
    broke = np.array([not r.fixation_ok for r in recs])
    se = np.sqrt(p * (1 - p) / n)
    assert abs(broke.mean() - p) < 4.5 * se, broke.mean()
    completed = np.array([r.completed for r in recs])
    assert np.all(completed[~broke] == K) and np.all(completed[broke] < K)
    # the break time is uniform over the trial (fixation 300 ms, then 5 x 200 ms): a break
    # completes k presentations with probability 200/1300 for k >= 1, and 500/1300 for k = 0
    frac = np.bincount(completed[broke], minlength=K) / broke.sum()
    expected = np.array([0.5, 0.2, 0.2, 0.2, 0.2]) / 1.3
    assert np.all(np.abs(frac - expected) < 4.5 * np.sqrt(expected * (1 - expected) / broke.sum())), frac
    for r in np.array(recs, dtype=object)[broke]:
        assert len(r.onset_presenter_s) == r.completed and "fixation broke" in r.note
        assert len(r.sync_presenter_s) >= r.completed  # a flip in progress at the break still sent its pulse


def test_sync_pairs_recover_configured_offset_and_drift(stimset):
    backend = SimBackend(_monkey(clock_offset_s=-3.21, clock_drift_ppm=35.0, fixation_break_prob=0.0))
    recs = _run(backend, stimset, 400)
    fit, resid = fit_clock_map(np.concatenate([r.sync_presenter_s for r in recs]),
                               np.concatenate([r.sync_acq_s for r in recs]))
    assert abs(fit.offset_s - (-3.21)) < 1e-4          # 0.1 ms
    assert abs(fit.drift_ppm - 35.0) < 0.5             # ppm
    assert np.max(np.abs(resid)) < 0.0005              # photodiode jitter < 0.5 ms
    c = ClockMap(-3.21, 35.0)
    np.testing.assert_allclose(c.to_presenter(c.to_acq([0.0, 100.0, 5000.0])), [0.0, 100.0, 5000.0])


def test_deterministic_for_a_seed_and_different_across_days(stimset):
    def spikes(seed, day):
        return [r.spike_times_s for r in _run(SimBackend(_monkey(seed=seed)), stimset, 30,
                                               SessionInfo("s", day=day, seed=1))]
    a, b, c = spikes(5, 0), spikes(5, 0), spikes(5, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))


def test_spikes_for_standalone_source():
    m = _monkey(gain_noise_cv=0.0, n_channels=3)
    rates = m.set_stimuli(reference_images(3, 64, seed=1))
    rng = np.random.default_rng(0)
    onsets = np.array([100.0, 100.2, 100.4])
    n = 400
    counts = np.zeros(3)
    for _ in range(n):
        t, ch = m.spikes_for([0, 1, 2], onsets, 0.1, rng)
        assert np.all((t >= 99.8) & (t < 100.8))
        sel = (t >= onsets[1] + 0.07) & (t < onsets[1] + 0.17)
        counts += np.bincount(ch[sel], minlength=3)
    mu = m.expected_counts(rates[1:2], (0.07, 0.17), 0.1)[0]
    assert np.all(np.abs(counts / n - mu) < 4.5 * np.sqrt(mu / n))
    with pytest.raises(ValueError, match="stim_indices must be in"):
        m.spikes_for([3], [1.0], 0.1, rng)


def test_bad_use_gets_one_clear_error(stimset):
    backend = SimBackend(_monkey())
    with pytest.raises(RuntimeError, match="before open"):
        backend.run_trial(Trial(0, (0,), (0,)))
    with pytest.raises(ValueError, match="session asks for 16 channels"):
        backend.open(SessionInfo("s", 0, n_channels=16), stimset)
    with pytest.raises(ValueError, match="stim_on_ms = 105.0 ms is not a whole number of frames"):
        backend.open(SessionInfo("s", 0, stim_on_ms=105.0), stimset)
    backend.open(SessionInfo("s", 0), stimset)
    with pytest.raises(ValueError, match="outside the 10 stimuli"):
        backend.run_trial(Trial(0, (3, 10), (0, 1)))
    backend.close()
    backend.close()  # safe twice
    with pytest.raises(TypeError, match="SimulatedMonkey"):
        SimBackend("monkey")
