"""Simulated clocks: presenter vs acquisition clock, frame-locked flips, photodiode jitter.

``acq = offset_s + (1 + drift_ppm * 1e-6) * presenter`` (seconds on both sides).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PHOTODIODE_JITTER_S = 0.00025  # half-width of the uniform photodiode latency jitter, s (< 0.5 ms)


@dataclass(frozen=True)
class ClockMap:
    """Affine map from the presenter clock to the acquisition clock."""

    offset_s: float
    drift_ppm: float

    @property
    def slope(self) -> float:
        return 1.0 + self.drift_ppm * 1e-6

    def to_acq(self, presenter_s):
        """Presenter-clock seconds -> acquisition-clock seconds."""
        return self.offset_s + self.slope * np.asarray(presenter_s, dtype=np.float64)

    def to_presenter(self, acq_s):
        """Acquisition-clock seconds -> presenter-clock seconds."""
        return (np.asarray(acq_s, dtype=np.float64) - self.offset_s) / self.slope


def fit_clock_map(presenter_s: np.ndarray, acq_s: np.ndarray) -> tuple[ClockMap, np.ndarray]:
    """Least-squares line through sync pairs; returns the map and residuals (s).

    A plain fit for checking the simulation; the rig has its own robust alignment.
    """
    p = np.asarray(presenter_s, dtype=np.float64)
    a = np.asarray(acq_s, dtype=np.float64)
    if len(p) < 2 or len(p) != len(a):
        raise ValueError(f"need >= 2 sync pairs of equal length; got {len(p)} and {len(a)}")
    p0 = p.mean()  # centre for numerical accuracy
    slope, icpt = np.polyfit(p - p0, a, 1)
    offset = icpt - slope * p0
    cmap = ClockMap(float(offset), float((slope - 1.0) * 1e6))
    return cmap, a - cmap.to_acq(p)


@dataclass(frozen=True)
class FrameClock:
    """A display refreshing at ``refresh_hz``: flips happen at whole multiples of the frame period."""

    refresh_hz: float = 60.0

    def __post_init__(self) -> None:
        if not self.refresh_hz > 0:
            raise ValueError(f"refresh_hz must be > 0 Hz; got {self.refresh_hz}")

    @property
    def frame_s(self) -> float:
        return 1.0 / self.refresh_hz

    def frames(self, duration_ms: float, what: str, tolerance: float = 0.1) -> int:
        """Whole frames for ``duration_ms``; ValueError if it is not within ``tolerance`` frames."""
        n = duration_ms * self.refresh_hz / 1000.0
        k = round(n)
        if k < 1 or abs(n - k) > tolerance:
            raise ValueError(f"{what} = {duration_ms} ms is not a whole number of frames at "
                             f"{self.refresh_hz} Hz ({n:.2f} frames); choose a multiple of "
                             f"{1000.0 / self.refresh_hz:.3f} ms")
        return int(k)

    def next_flip(self, t_s: float) -> float:
        """First flip time at or after ``t_s`` (presenter clock, s)."""
        k = math.ceil(t_s * self.refresh_hz - 1e-9)
        return k / self.refresh_hz


def photodiode_jitter(rng: np.random.Generator, n: int, half_width_s: float = PHOTODIODE_JITTER_S) -> np.ndarray:
    """Light-onset minus flip-stamp differences, uniform in [-half_width_s, half_width_s] s."""
    return rng.uniform(-half_width_s, half_width_s, size=n)


def rsync_times(rng: np.random.Generator, duration_s: float, mean_interval_s: float = 1.0, t0_s: float = 0.0) -> np.ndarray:
    """A sync line with random inter-pulse intervals (pyControl's Rsync idea: intervals
    uniform in [0.1, 1.9] x the mean), pulse times on the sender's clock in [t0_s, t0_s +
    duration_s), s. The interval sequence identifies where any stretch of the train lies."""
    n = int(duration_s / mean_interval_s * 1.2) + 2
    t = t0_s + np.cumsum(rng.uniform(0.1 * mean_interval_s, 1.9 * mean_interval_s, n))
    return t[t < t0_s + duration_s]


def received_pulses(rng: np.random.Generator, sent_s: np.ndarray, clock: ClockMap, drop_p: float = 0.01,
                    n_spurious: int = 0, jitter_half_width_s: float = PHOTODIODE_JITTER_S,
                    sample_rate_hz: float = 30000.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the acquisition side records of a sync line: each pulse dropped with probability
    ``drop_p``, the rest moved to the acquisition clock with uniform latency jitter and rounded
    to whole samples, plus ``n_spurious`` extra pulses within the train's span.

    Returns ``(received acquisition times sorted, s; index into sent_s per received pulse, -1
    for a spurious one; true acquisition time of every sent pulse, s)``.
    """
    sent = np.asarray(sent_s, float)
    true_acq = clock.to_acq(sent + photodiode_jitter(rng, len(sent), jitter_half_width_s))
    keep = rng.random(len(sent)) >= drop_p
    t = np.r_[np.round(true_acq[keep] * sample_rate_hz) / sample_rate_hz,
              rng.uniform(true_acq.min(), true_acq.max(), n_spurious) if len(sent) else np.zeros(0)]
    src = np.r_[np.flatnonzero(keep), np.full(n_spurious if len(sent) else 0, -1)]
    order = np.argsort(t, kind="stable")
    return t[order], src[order], true_acq
