"""Presenter clock -> acquisition clock, fitted from matched sync pulses.

Model: ``acq = offset + (1 + drift) * presenter``. The fit is a robust line (least
squares, then refitted without pairs whose residual exceeds 5 robust SDs, so a missed
or spurious photodiode pulse does not bend it); residuals are kept for checking.
"""
from __future__ import annotations

import numpy as np


class ClockAligner:
    """Accumulate sync pairs and map presenter times onto the acquisition clock."""

    def __init__(self) -> None:
        self._p: list[np.ndarray] = []
        self._a: list[np.ndarray] = []
        self.offset_s = 0.0
        self.drift = 0.0
        self.residual_sd_s = float("nan")
        self.n_pairs = 0

    def add(self, presenter_s: np.ndarray, acq_s: np.ndarray) -> None:
        presenter_s, acq_s = np.asarray(presenter_s, float), np.asarray(acq_s, float)
        if len(presenter_s) != len(acq_s):
            raise ValueError("sync pulses: presenter and acquisition lists differ in length")
        if len(presenter_s):
            self._p.append(presenter_s)
            self._a.append(acq_s)
            self._fit()

    def _fit(self) -> None:
        p, a = np.concatenate(self._p), np.concatenate(self._a)
        self.n_pairs = len(p)
        if len(p) == 1:
            self.offset_s, self.drift, self.residual_sd_s = float(a[0] - p[0]), 0.0, float("nan")
            return
        keep = np.ones(len(p), bool)
        for _ in range(3):
            p0 = p[keep].mean()
            slope, icpt = np.polyfit(p[keep] - p0, a[keep], 1) if np.ptp(p[keep]) > 0 else (1.0, a[keep].mean())
            resid = a - (icpt + slope * (p - p0))
            mad = np.median(np.abs(resid[keep] - np.median(resid[keep]))) * 1.4826
            new_keep = np.abs(resid) <= max(5 * mad, 1e-6)
            if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        self.drift = float(slope - 1.0)
        self.offset_s = float(icpt - slope * p0)
        self.residual_sd_s = float(np.std(resid[keep])) if keep.sum() > 2 else 0.0

    def to_acq(self, presenter_s: np.ndarray) -> np.ndarray:
        """Presenter-clock times (s) on the acquisition clock (s)."""
        if self.n_pairs == 0:
            raise RuntimeError("no sync pulses yet: the clocks cannot be aligned")
        return self.offset_s + (1.0 + self.drift) * np.asarray(presenter_s, float)


def window_counts(spike_times_s: np.ndarray, spike_channels: np.ndarray, onsets_s: np.ndarray,
                  n_channels: int, start_ms: float, end_ms: float) -> np.ndarray:
    """Spikes per onset x channel in ``[onset + start_ms, onset + end_ms)``.

    Times in seconds on one clock; NaN onsets give NaN rows. Returns float (n_onsets, n_channels).
    """
    onsets_s = np.asarray(onsets_s, float)
    out = np.full((len(onsets_s), n_channels), np.nan)
    ok = np.isfinite(onsets_s)
    if not ok.any():
        return out
    lo, hi = onsets_s[ok] + start_ms / 1000.0, onsets_s[ok] + end_ms / 1000.0
    counts = np.zeros((ok.sum(), n_channels))
    t, c = np.asarray(spike_times_s, float), np.asarray(spike_channels, int)
    for ch in range(n_channels):
        tc = np.sort(t[c == ch])
        counts[:, ch] = np.searchsorted(tc, hi, "left") - np.searchsorted(tc, lo, "left")
    out[ok] = counts
    return out
