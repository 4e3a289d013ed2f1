"""Frame arithmetic: durations as whole frames, refusal with workable rates, dropped frames."""
from __future__ import annotations

import math

import numpy as np

from rig.config import frames_for

# refresh rates monitors commonly offer (Hz); used to suggest rates that would work
COMMON_RATES_HZ = (50.0, 60.0, 72.0, 75.0, 85.0, 90.0, 100.0, 120.0, 144.0, 165.0, 180.0, 200.0, 240.0)


def workable_rates(durations_ms: list[float], tolerance: float,
                   rates_hz: tuple[float, ...] = COMMON_RATES_HZ) -> list[float]:
    """The rates among ``rates_hz`` at which every duration is a whole number of frames."""
    return [r for r in rates_hz if all(frames_for(d, r, tolerance) is not None for d in durations_ms)]


def frame_counts(stim_on_ms: float, mask_ms: float, refresh_hz: float, tolerance: float) -> tuple[int, int]:
    """(N_on, N_mask) frames; ValueError naming workable rates if either is not whole."""
    if not refresh_hz > 0:
        raise ValueError(f"refresh rate {refresh_hz} Hz must be > 0")
    n_on = frames_for(stim_on_ms, refresh_hz, tolerance)
    n_mask = frames_for(mask_ms, refresh_hz, tolerance)
    if n_on is None or n_mask is None:
        rates = workable_rates([stim_on_ms, mask_ms], tolerance)
        raise ValueError(
            f"{stim_on_ms:g} ms on / {mask_ms:g} ms mask is not a whole number of frames at {refresh_hz:.2f} Hz "
            f"({stim_on_ms * refresh_hz / 1000:.2f} and {mask_ms * refresh_hz / 1000:.2f} frames, tolerance "
            f"{tolerance} frame); set the monitor to one of {', '.join(f'{r:g}' for r in rates) or 'no common rate'} Hz "
            "or change rsvp.stim_on_ms / rsvp.mask_ms")
    return n_on, n_mask


def frames_at_least(duration_ms: float, refresh_hz: float) -> int:
    """Smallest whole number of frames lasting at least ``duration_ms`` (for fixation, waits)."""
    return max(0, math.ceil(duration_ms * refresh_hz / 1000.0 - 1e-9))


def long_intervals(frame_times_s: np.ndarray, refresh_hz: float, threshold: float = 1.5) -> np.ndarray:
    """Bool per interval ``t[k+1] - t[k]``: longer than ``threshold`` frame periods (a drop)."""
    t = np.asarray(frame_times_s, dtype=np.float64)
    return np.diff(t) > threshold / refresh_hz


def interval_stats(frame_times_s: np.ndarray, refresh_hz: float) -> dict:
    """Summary of flip intervals in ms: mean, sd, min, max, and drops (> 1.5 periods)."""
    dt = np.diff(np.asarray(frame_times_s, dtype=np.float64)) * 1000.0
    if len(dt) == 0:
        return {"n_intervals": 0}
    return {"n_intervals": int(len(dt)), "mean_ms": float(dt.mean()), "sd_ms": float(dt.std()),
            "min_ms": float(dt.min()), "max_ms": float(dt.max()),
            "measured_hz": float(1000.0 / dt.mean()),
            "dropped": int(long_intervals(frame_times_s, refresh_hz).sum())}
