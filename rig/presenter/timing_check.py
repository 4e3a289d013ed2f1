"""``itloop present --timing-check``: a long RSVP of test images and its frame statistics.

Run it on the rig before a session with the photodiode attached: the printed refresh rate,
flip intervals and dropped frames validate the monitor; the photodiode trace should show
one pulse per image onset, ``n_on`` frames long. With ``--acquisition`` the acquisition
system's photodiode TTLs are paired with the onset flips after a robust clock fit
(``rig.session.clock.fit_pulse_train``) and :func:`format_fitted_latency` prints them.
"""
from __future__ import annotations

import numpy as np

from rig.backend import IMAGE_SIZE_DEG
from rig.presenter.stage import Stage
from rig.presenter.timing import frame_counts, interval_stats
from rig.presenter.trial import run_frames


def check_images(n: int = 16, size_px: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` uint8 (size, size, 3) checkerboards of different colours and scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size_px, :size_px]
    out = np.empty((n, size_px, size_px, 3), np.uint8)
    for i in range(n):
        cell = int(rng.integers(8, 56))
        board = ((yy // cell + xx // cell) % 2).astype(bool)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        out[i] = np.where(board[..., None], a, b)
    return out


def run_timing_check(stage: Stage, *, stim_on_ms: float, mask_ms: float, refresh_hz: float,
                     frame_tolerance: float, seconds: float = 30.0, image_size_deg: float = IMAGE_SIZE_DEG,
                     pace: bool = False, marker=None) -> dict:
    """Show ``seconds`` of RSVP and return frame statistics (intervals in ms, drops, counts)."""
    n_on, n_mask = frame_counts(stim_on_ms, mask_ms, refresh_hz, frame_tolerance)
    images = check_images()
    stage.set_image_size(image_size_deg)
    stage.preload(images)
    n_pres = max(1, int(round(seconds * 1000.0 / (stim_on_ms + mask_ms))))
    order = [i % len(images) for i in range(n_pres)]
    log = run_frames(stage, order, 0, n_on, n_mask, marker=marker, pace_hz=refresh_hz if pace else None)
    per = log.presentations(n_pres, n_on, n_mask, refresh_hz)
    onsets = per["onset_s"]
    soa = np.diff(onsets) * 1000.0
    return {"refresh_hz": refresh_hz, "n_on": n_on, "n_mask": n_mask, "presentations": n_pres,
            "flips": int(len(log.frame_time_s)), **interval_stats(log.frame_time_s, refresh_hz),
            "presentations_with_drop": int(per["dropped"].sum()),
            "soa_mean_ms": float(soa.mean()) if len(soa) else float("nan"),
            "soa_sd_ms": float(soa.std()) if len(soa) else float("nan"),
            "expected_soa_ms": (n_on + n_mask) * 1000.0 / refresh_hz,
            "onset_s": onsets}                  # stimulus-on flip times, presenter clock (s)


def format_report(stats: dict) -> str:
    """The statistics as a short table for the terminal."""
    lines = [f"refresh rate        {stats['refresh_hz']:.3f} Hz (frames: {stats['n_on']} on, {stats['n_mask']} mask)",
             f"flips               {stats['flips']} over {stats['presentations']} presentations",
             f"flip interval       mean {stats['mean_ms']:.3f} ms, sd {stats['sd_ms']:.3f}, "
             f"min {stats['min_ms']:.3f}, max {stats['max_ms']:.3f} (measured {stats['measured_hz']:.2f} Hz)",
             f"dropped frames      {stats['dropped']} (intervals > 1.5 frames); presentations hit: "
             f"{stats['presentations_with_drop']}",
             f"onset-to-onset      mean {stats['soa_mean_ms']:.3f} ms, sd {stats['soa_sd_ms']:.3f} "
             f"(expected {stats['expected_soa_ms']:.3f})"]
    verdict = "OK" if stats["dropped"] == 0 else "CHECK: frames were dropped"
    return "\n".join(lines + [f"verdict             {verdict}"])


def photodiode_latency(ttl_s: np.ndarray, flip_s: np.ndarray, max_latency_s: float = 0.1,
                       min_latency_s: float = 0.0) -> dict:
    """Photodiode-to-flip latency: each stimulus-on flip matched to the first photodiode TTL
    edge at or after ``flip + min_latency_s`` (and within ``max_latency_s``); both on one
    clock (s). ``min_latency_s < 0`` for edges mapped through a fitted clock line, which
    scatter on both sides of their flips.

    For ``itloop present --timing-check`` when the acquisition system records the photodiode
    TTL: pass its rising-edge times mapped onto the presenter clock (``rig.session.clock.SegmentedClock``) and the
    flips' stamps. Returns the latencies (ms) and their distribution; flips without a TTL are
    counted as ``missing`` (a dropped or unlit frame), TTLs without a flip as ``extra``.
    """
    ttl = np.sort(np.asarray(ttl_s, float).ravel())
    flips = np.sort(np.asarray(flip_s, float).ravel())
    idx = np.searchsorted(ttl, flips + min_latency_s, side="left")
    lat = np.full(len(flips), np.nan)
    used = np.zeros(len(ttl), bool)
    for k, (f, i) in enumerate(zip(flips, idx)):
        while i < len(ttl) and used[i]:
            i += 1
        if i < len(ttl) and ttl[i] - f <= max_latency_s:
            lat[k] = ttl[i] - f
            used[i] = True
    ok = np.isfinite(lat)
    ms = lat[ok] * 1000.0
    q = (lambda p: float(np.percentile(ms, p))) if len(ms) else (lambda p: float("nan"))
    return {"latency_ms": ms, "matched": int(ok.sum()), "missing": int((~ok).sum()), "extra": int((~used).sum()),
            "mean_ms": float(ms.mean()) if len(ms) else float("nan"), "sd_ms": float(ms.std()) if len(ms) else float("nan"),
            "p5_ms": q(5), "median_ms": q(50), "p95_ms": q(95), "max_ms": float(ms.max()) if len(ms) else float("nan")}


def format_latency(stats: dict) -> str:
    """One line: the photodiode-to-flip latency distribution."""
    return (f"photodiode latency  median {stats['median_ms']:.2f} ms (5-95%: {stats['p5_ms']:.2f}-{stats['p95_ms']:.2f}, "
            f"max {stats['max_ms']:.2f}); {stats['matched']} matched, {stats['missing']} flips without a pulse, "
            f"{stats['extra']} pulses without a flip")


def format_fitted_latency(stats: dict, fit: dict, ambiguous: bool = False) -> str:
    """The photodiode pulses against their flips after the clock fit (``--acquisition``).

    ``stats``: :func:`photodiode_latency` of the pulses mapped onto the presenter clock by
    the fitted line ``acq = offset + (1 + drift) * presenter`` (``fit``: a
    ``SegmentFit.summary()``). The two clocks differ by an unknown offset, so the constant
    part of the latency is inside the offset: what is printed is each pulse's residual
    from the line (pulse - flip - fitted constant), i.e. the latency's spread, in ms.
    """
    ms = np.asarray(stats["latency_ms"], float)
    worst = float(np.abs(ms).max()) if len(ms) else float("nan")
    lines = [f"photodiode pulses   {stats['matched']} matched to flips, {stats['missing']} flips without a pulse, "
             f"{stats['extra']} pulses without a flip",
             f"pulse - flip        residual after the clock fit (constant latency absorbed in the offset): median "
             f"{stats['median_ms']:.3f} ms, 5-95% {stats['p5_ms']:.3f} to {stats['p95_ms']:.3f}, max |.| {worst:.3f}, "
             f"sd {stats['sd_ms']:.3f}",
             f"clock fit           acquisition = {fit['offset_s']:.6f} s + (1 {fit['drift_ppm']:+.2f} ppm) x presenter "
             f"({fit['n_pairs']} pairs, {fit['n_outliers']} outliers)"]
    if ambiguous:
        lines.append("note                the pulse train is periodic and its first or last pulse is missing: a shift by "
                     "one onset-to-onset interval fits as well, so the counts may be off by one (the spread is not affected)")
    return "\n".join(lines)
