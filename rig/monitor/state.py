"""What the live page shows, accumulated trial by trial from the session runner's observer.

Everything is kept small (the last few eye traces, per-site running sums, per-trial
figures) and read under a lock as one JSON-ready dict. Units: seconds, degrees, Hz, ms.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from rig.backend import COUNT_WINDOW_MS

PSTH_EDGES_S = np.arange(-0.05, 0.2501, 0.01)     # -50 .. 250 ms around each onset, 10 ms bins
MAX_TRACE_POINTS = 400                           # per trial, after decimation


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class MonitorState:
    """The session as the page sees it; ``observe(rows, progress)`` is the runner's observer."""

    def __init__(self, *, session_id: str = "", day: int = 0, backend: str = "", window_ms=COUNT_WINDOW_MS,
                 fixation_window_deg: float = 2.0, trace_trials: int = 3, channel_names: list[str] | None = None):
        self._lock = threading.Lock()
        self.info = {"session_id": session_id, "day": int(day), "backend": backend,
                     "window_ms": [float(window_ms[0]), float(window_ms[1])],
                     "fixation_window_deg": float(fixation_window_deg), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        self.trace_trials = int(trace_trials)
        self.channel_names = list(channel_names or [])
        self.updates = 0
        self.progress: dict = {}
        self.traces: list[dict] = []
        self.per_trial: list[dict] = []
        self.count_sum: np.ndarray | None = None
        self.n_valid_pres = 0
        self.psth_sum: np.ndarray | None = None
        self.n_onsets = 0
        self.frames_dropped = 0
        self.presentations_shown = 0
        self.rewards = {"n": 0, "total_ms": 0.0}
        self.clock: dict = {}
        self.residuals_ms: list[float] = []

    # ------------------------------------------------------------------ input
    def observe(self, rows, progress) -> None:
        r = rows.record
        k = len(rows.trial.stim_indices)
        counts = np.asarray(rows.counts, float)
        n_ch = counts.shape[1] if counts.ndim == 2 else 0
        onsets = np.asarray(rows.onset_acq_s, float)
        onsets = onsets[np.isfinite(onsets)]
        with self._lock:
            self.updates += 1
            if self.count_sum is None:
                self.count_sum = np.zeros(n_ch)
                self.psth_sum = np.zeros((n_ch, len(PSTH_EDGES_S) - 1))
                if not self.channel_names:
                    self.channel_names = [f"ch{c}" for c in range(n_ch)]
            valid = np.asarray(rows.valid, bool)
            if valid.any():
                self.count_sum += np.nansum(counts[valid], axis=0)
                self.n_valid_pres += int(valid.sum())
            if len(onsets) and len(r.spike_times_s):
                rel = r.spike_times_s[None, :] - onsets[:, None]          # (n_onsets, n_spikes)
                for c in range(n_ch):
                    sel = r.spike_channels == c
                    if sel.any():
                        self.psth_sum[c] += np.histogram(rel[:, sel].ravel(), PSTH_EDGES_S)[0]
                self.n_onsets += len(onsets)
            elif len(onsets):
                self.n_onsets += len(onsets)
            self.frames_dropped += int(np.sum(r.dropped_frame))
            self.presentations_shown += int(r.completed)
            self.rewards["n"] += len(r.reward_ms)
            self.rewards["total_ms"] += float(np.sum(r.reward_ms))
            if len(r.eye_presenter_s):
                t = r.eye_presenter_s
                step = max(1, int(math.ceil(len(t) / MAX_TRACE_POINTS)))
                self.traces.append({"trial_index": int(rows.trial.trial_index), "aborted": not r.fixation_ok,
                                    "t": np.round(t[::step] - t[0], 4).tolist(),
                                    "x": np.round(r.eye_x_deg[::step], 3).tolist(),
                                    "y": np.round(r.eye_y_deg[::step], 3).tolist()})
                self.traces = self.traces[-self.trace_trials:]
            p = progress
            if len(r.sync_presenter_s):
                pred = p.clock_offset_s + (1.0 + p.clock_drift) * r.sync_presenter_s
                self.residuals_ms = (self.residuals_ms + ((r.sync_acq_s - pred) * 1000).round(4).tolist())[-200:]
            self.clock = {"offset_s": _num(p.clock_offset_s), "drift_ppm": _num(p.clock_drift * 1e6),
                          "residual_sd_ms": _num(p.clock_residual_sd_s * 1000), "n_pairs": int(p.clock_n_pairs)}
            rate = p.presentations_valid / p.elapsed_s if p.elapsed_s > 0 else 0.0
            self.progress = {"trials_run": p.trials_run, "presentations_valid": p.presentations_valid,
                             "presentations_total": p.presentations_total, "planned": p.planned,
                             "remaining": p.remaining, "elapsed_s": round(p.elapsed_s, 2),
                             "valid_fraction": _num(p.presentations_valid / p.presentations_total)
                             if p.presentations_total else None,
                             "eta_s": round(p.remaining / rate, 1) if rate > 0 else None}
            self.per_trial.append({"trial_index": int(rows.trial.trial_index), "n": k, "valid": int(valid.sum()),
                                   "dropped": int(np.sum(r.dropped_frame)), "fixation_ok": bool(r.fixation_ok)})
            self.per_trial = self.per_trial[-300:]

    # ------------------------------------------------------------------ output
    def snapshot(self) -> dict:
        """Everything the page draws, JSON-ready."""
        with self._lock:
            win_s = (self.info["window_ms"][1] - self.info["window_ms"][0]) / 1000.0
            rates = (self.count_sum / max(self.n_valid_pres, 1) / win_s).round(2).tolist() if self.count_sum is not None else []
            psth = ((self.psth_sum / max(self.n_onsets, 1) / np.diff(PSTH_EDGES_S)).round(2).tolist()
                    if self.psth_sum is not None else [])
            return {"info": self.info, "updates": self.updates, "progress": self.progress,
                    "eye": {"window_deg": self.info["fixation_window_deg"], "traces": list(self.traces)},
                    "sites": {"names": self.channel_names, "rate_hz": rates,
                              "psth_edges_ms": (PSTH_EDGES_S * 1000).round(1).tolist(), "psth_hz": psth,
                              "n_valid_presentations": self.n_valid_pres},
                    "frames": {"dropped": self.frames_dropped, "shown": self.presentations_shown,
                               "per_trial": [t["dropped"] for t in self.per_trial]},
                    "trials": list(self.per_trial[-100:]),
                    "clock": {**self.clock, "residuals_ms": list(self.residuals_ms)},
                    "rewards": dict(self.rewards), "served_utc": time.strftime("%H:%M:%S", time.gmtime())}
