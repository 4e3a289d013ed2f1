"""Spike statistics of the simulated monkey, end to end through the in-process backend.

Known answers: with trial gain G (mean 1, CV c) and Poisson spiking, a count N in a window
whose expected count is mu (at G = 1) has E[N] = mu and
Var[N] = E[Var(N|G)] + Var(E[N|G]) = E[G mu] + Var(G mu) = mu + mu^2 c^2.
"""
from __future__ import annotations

import numpy as np
import pytest

from rig.backend import SessionInfo, Trial
from sim import spikes
from sim.backend import SimBackend
from sim.clocks import fit_clock_map
from sim.monkey import SimParams, SimulatedMonkey

N_CH = 6
CV = 0.3
WINDOW = (0.07, 0.17)


def _images(n: int, seed: int) -> np.ndarray:
    from stimuli.images import builtin_images

    return builtin_images(n, 64, seed=seed)


def _run(monkey: SimulatedMonkey, pixels: np.ndarray, trials: list[tuple[int, ...]], session_seed: int = 0):
    backend = SimBackend(monkey)
    backend.open(SessionInfo("test", day=0, seed=session_seed), pixels)
    recs = [backend.run_trial(Trial(i, t, tuple(range(len(t))))) for i, t in enumerate(trials)]
    backend.close()
    return backend, recs


def _window_counts(recs, clock, window):
    """(presentation, channel) counts in [onset + w0, onset + w1), onsets mapped to the acquisition clock."""
    rows = []
    for r in recs:
        onsets_acq = clock.to_acq(r.onset_presenter_s)
        for t in onsets_acq:
            sel = (r.spike_times_s >= t + window[0]) & (r.spike_times_s < t + window[1])
            rows.append(np.bincount(r.spike_channels[sel], minlength=N_CH))
    return np.array(rows)


@pytest.fixture(scope="module")
def recorded():
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, gain_noise_cv=CV, fixation_break_prob=0.0, seed=7))
    pixels = _images(4, seed=11)
    n_trials = 1500
    trials = [tuple(np.roll(np.arange(4), i)) for i in range(n_trials)]  # every stimulus once per trial
    backend, recs = _run(monkey, pixels, trials)
    return monkey, backend, recs, trials


def test_window_count_mean_and_variance_match_rates(recorded):
    monkey, backend, recs, trials = recorded
    # the rig's path: fit the clock from the sync pairs, map presenter onsets, count in the window
    clock, resid = fit_clock_map(np.concatenate([r.sync_presenter_s for r in recs]),
                                 np.concatenate([r.sync_acq_s for r in recs]))
    counts = _window_counts(recs, clock, WINDOW)
    stim = np.concatenate(trials)
    mu = monkey.expected_counts(backend.monkey.true_rates(_images(4, seed=11)), WINDOW, on_s=6 / 60)
    var_pred = mu + mu**2 * CV**2
    assert mu.min() > 0.3 and mu.max() > 3.0  # the test has power: real counts, not zeros

    z_mean, z_var, gain_term = [], [], []
    for s in range(4):
        c = counts[stim == s]
        n = len(c)
        z_mean.append((c.mean(0) - mu[s]) / np.sqrt(var_pred[s] / n))
        s2 = c.var(0, ddof=1)
        se_s2 = ((c - c.mean(0)) ** 2).std(0, ddof=1) / np.sqrt(n)
        z_var.append((s2 - var_pred[s]) / se_s2)
        gain_term.append((s2 - mu[s]) / (mu[s] ** 2 * CV**2))
    z_mean, z_var = np.array(z_mean), np.array(z_var)
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    assert np.all(np.abs(z_var) < 4.5), z_var
    assert np.sum(z_mean**2) < z_mean.size + 5 * np.sqrt(2 * z_mean.size)  # chi-square, 24 dof
    # the excess over Poisson is the gain-noise term mu^2 CV^2, not zero and not double
    assert 0.75 < np.mean(gain_term) < 1.25, np.mean(gain_term)


def test_latency_respected_and_response_starts_at_latency():
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, gain_noise_cv=0.1, fixation_break_prob=0.0, seed=3))
    pixels = _images(8, seed=5)
    rates = monkey.true_rates(pixels)
    best = int(np.argmax(rates.mean(1)))  # the most driving image: largest driven excess
    n = 1200
    _, recs = _run(monkey, pixels, [(best,)] * n)
    lat, base, r = monkey.latency_s, monkey.baseline_hz, rates[best]
    rel = [(rec.spike_times_s - rec.sync_acq_s[0], rec.spike_channels) for rec in recs]
    t_rel = np.concatenate([x[0] for x in rel])
    ch = np.concatenate([x[1] for x in rel])

    def total(c, a, b):
        return int(np.sum((ch == c) & (t_rel >= a) & (t_rel < b)))

    def z(observed, rate, dur):
        mu = rate * dur
        return (observed - n * mu) / np.sqrt(n * (mu + mu**2 * 0.1**2))

    powered = 0
    for c in range(N_CH):
        # from 250 ms before onset up to the latency: baseline only, no stimulus-driven excess
        assert abs(z(total(c, -0.25, lat[c]), base[c], 0.25 + lat[c])) < 4.5
        # the 5 ms just before the latency is baseline, the 5 ms just after is the driven rate
        assert abs(z(total(c, lat[c] - 0.005, lat[c]), base[c], 0.005)) < 4.5
        assert abs(z(total(c, lat[c], lat[c] + 0.005), r[c], 0.005)) < 4.5
        # the driven interval lasts on + tail (100 + 50 ms), then back to baseline
        assert abs(z(total(c, lat[c], lat[c] + 0.15), r[c], 0.15)) < 4.5
        assert abs(z(total(c, lat[c] + 0.15, lat[c] + 0.3), base[c], 0.15)) < 4.5
        # power: where the image drives the site well above baseline, the first 10 ms after
        # the latency is clearly not baseline, so a response starting 10 ms early or late
        # would have failed the checks above
        if z(n * r[c] * 0.01, base[c], 0.01) > 9:
            assert z(total(c, lat[c], lat[c] + 0.01), base[c], 0.01) > 4.5
            powered += 1
    assert powered >= N_CH // 2


def test_expected_counts_known_answer():
    # latency 80 ms, window 70-170 ms: 10 ms of baseline then 90 ms of the driven rate
    got = spikes.expected_counts(np.array([[100.0, 50.0]]), np.array([10.0, 20.0]), np.array([0.08, 0.07]))
    np.testing.assert_allclose(got, [[100 * 0.09 + 10 * 0.01, 50 * 0.10]])
    # a window reaching past the response (on 100 ms + tail 50 ms): baseline again at the end
    got = spikes.expected_counts(np.array([[100.0]]), np.array([10.0]), np.array([0.08]), window_s=(0.0, 0.3))
    np.testing.assert_allclose(got, [[100 * 0.15 + 10 * 0.15]])


def test_generate_spikes_intervals_do_not_overlap_and_respect_bounds():
    rng = np.random.default_rng(0)
    times, chans = spikes.generate_spikes(np.full((3, 2), 500.0), np.array([0.0, 0.0]), np.array([0.08, 0.08]),
                                          onsets_s=np.array([1.0, 1.1, 1.2]), on_s=0.1, t_start_s=0.5,
                                          t_stop_s=2.0, rng=rng)
    # baseline 0: spikes only in the union of driven intervals [1.08, 1.2 + 0.08 + 0.15)
    assert times.min() >= 1.08 and times.max() < 1.43
    assert np.all(np.diff(times) >= 0)
    # overlapping responses are cut, never summed: total rate stays 500 Hz over 0.35 s
    n = np.bincount(chans, minlength=2)
    assert np.all(np.abs(n - 500 * 0.35) < 4.5 * np.sqrt(500 * 0.35))


def test_gains_have_mean_one_and_requested_cv():
    g = spikes.draw_gains(np.random.default_rng(1), 200_000, 0.3)
    assert abs(g.mean() - 1) < 0.005 and abs(g.std() - 0.3) < 0.005
    assert np.all(spikes.draw_gains(np.random.default_rng(1), 5, 0.0) == 1.0)
