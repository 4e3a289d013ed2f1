"""Continuous-time spikes of the simulated sites (times in seconds, rates in Hz).

Response profile of site ``c`` to a presentation with true onset ``t`` (the moment the image
reached the screen), on-duration ``on`` and stimulus rate ``r`` (Hz, from the true rate
function):

    intensity = baseline_c                      outside driven intervals
    intensity = r                               in [t + L_c, t + L_c + on + RESPONSE_TAIL_S)

where ``L_c`` is the site's latency (70-100 ms by default). A driven interval is cut short
where the next presentation's driven interval starts, so intervals never overlap and the
intensity is piecewise constant. On top, each trial draws one multiplicative gain per site,
``G ~ Gamma(shape=1/cv^2, scale=cv^2)`` (mean 1, coefficient of variation ``cv``), that
scales the whole intensity for that trial; spikes are then an inhomogeneous Poisson process.

Hence a count ``N`` in any window with expected count ``mu`` (given ``G = 1``) has
``E[N] = mu`` and ``Var[N] = E[Var(N|G)] + Var(E[N|G]) = mu + mu^2 * cv^2``.
"""
from __future__ import annotations

import numpy as np

RESPONSE_TAIL_S = 0.05  # the driven response outlasts the image by this much, s


def draw_gains(rng: np.random.Generator, n_channels: int, cv: float) -> np.ndarray:
    """Per-site trial gains, mean 1 and coefficient of variation ``cv`` (Gamma); ones if cv == 0."""
    if cv < 0:
        raise ValueError(f"gain noise cv must be >= 0; got {cv}")
    if cv == 0:
        return np.ones(n_channels)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / shape, size=n_channels)


def expected_counts(rates: np.ndarray, baseline_hz: np.ndarray, latency_s: np.ndarray,
                    window_s: tuple[float, float] = (0.07, 0.17), on_s: float = 0.1,
                    tail_s: float = RESPONSE_TAIL_S) -> np.ndarray:
    """Exact expected spike count (gain 1) in ``[onset + window_s[0], onset + window_s[1])``.

    ``rates`` (N, C) stimulus rates in Hz, ``baseline_hz`` and ``latency_s`` (C,). Exact for
    an isolated presentation, and in RSVP whenever neighbouring presentations' driven
    intervals do not reach into the window (true for 100 ms on / 100 ms mask with latencies
    up to 120 ms and this module's 50 ms tail). Returns (N, C) counts (spikes).
    """
    rates = np.atleast_2d(np.asarray(rates, dtype=np.float64))
    baseline = np.asarray(baseline_hz, dtype=np.float64)[None, :]
    lat = np.asarray(latency_s, dtype=np.float64)[None, :]
    w0, w1 = float(window_s[0]), float(window_s[1])
    if not w1 > w0:
        raise ValueError(f"window_s must be (start, end) with end > start; got {window_s}")
    driven = np.clip(np.minimum(w1, lat + on_s + tail_s) - np.maximum(w0, lat), 0.0, None)
    return rates * driven + baseline * ((w1 - w0) - driven)


def generate_spikes(rates: np.ndarray, baseline_hz: np.ndarray, latency_s: np.ndarray,
                    onsets_s: np.ndarray, on_s: np.ndarray | float, t_start_s: float, t_stop_s: float,
                    rng: np.random.Generator, gain: np.ndarray | None = None,
                    tail_s: float = RESPONSE_TAIL_S) -> tuple[np.ndarray, np.ndarray]:
    """Spikes of every site in ``[t_start_s, t_stop_s)`` for K presentations.

    ``rates`` (K, C) Hz, ``onsets_s`` (K,) true onsets ascending, ``on_s`` scalar or (K,)
    seconds, ``baseline_hz``/``latency_s``/``gain`` (C,). Returns ``(times_s, channels)``
    sorted by time; all times on the clock ``onsets_s`` is on.
    """
    baseline = np.asarray(baseline_hz, dtype=np.float64)
    lat = np.asarray(latency_s, dtype=np.float64)
    n_ch = len(baseline)
    onsets = np.asarray(onsets_s, dtype=np.float64).reshape(-1)
    k = len(onsets)
    rates = np.asarray(rates, dtype=np.float64).reshape(k, n_ch)
    on = np.broadcast_to(np.asarray(on_s, dtype=np.float64), (k,))
    gain = np.ones(n_ch) if gain is None else np.asarray(gain, dtype=np.float64)
    if not t_stop_s >= t_start_s:
        raise ValueError(f"t_stop_s ({t_stop_s}) must be >= t_start_s ({t_start_s})")
    if k > 1 and np.any(np.diff(onsets) < 0):
        raise ValueError("onsets_s must be in ascending order")
    if np.any(rates < 0):
        raise ValueError("rates must be >= 0 Hz")

    start = onsets[None, :] + lat[:, None]                      # (C, K) driven interval starts
    end = start + (on + tail_s)[None, :]
    if k > 1:
        end[:, :-1] = np.minimum(end[:, :-1], start[:, 1:])
    start = np.clip(start, t_start_s, t_stop_s)
    end = np.maximum(np.clip(end, t_start_s, t_stop_s), start)
    base_start = np.concatenate([np.full((n_ch, 1), t_start_s), end], axis=1)   # (C, K+1)
    base_end = np.concatenate([start, np.full((n_ch, 1), t_stop_s)], axis=1)

    seg_start = np.concatenate([start, base_start], axis=1).ravel()
    seg_len = np.concatenate([end - start, base_end - base_start], axis=1).ravel()
    seg_rate = (np.concatenate([rates.T, np.repeat(baseline[:, None], k + 1, axis=1)], axis=1)
                * gain[:, None]).ravel()
    seg_chan = np.repeat(np.arange(n_ch), 2 * k + 1)
    counts = rng.poisson(seg_rate * np.maximum(seg_len, 0.0))
    times = np.repeat(seg_start, counts) + rng.random(int(counts.sum())) * np.repeat(seg_len, counts)
    chans = np.repeat(seg_chan, counts).astype(np.int32)
    order = np.argsort(times, kind="stable")
    return times[order], chans[order]
