"""What the live page shows, accumulated trial by trial from the session runner's observer.

Everything is kept small (the last few eye traces, per-site running sums, per-trial
figures) and read under a lock as one JSON-ready dict. Units: seconds, degrees, Hz, ms.
"""
from __future__ import annotations

import base64
import math
import struct
import threading
import time
import zlib

import numpy as np

from rig.backend import COUNT_WINDOW_MS, INVALID_REASON_TEXT, Fixation, InvalidReason

PSTH_EDGES_S = np.arange(-0.05, 0.2501, 0.01)     # -50 .. 250 ms around each onset, 10 ms bins
MAX_TRACE_POINTS = 400                           # per trial, after decimation


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def png_data_url(rgb: np.ndarray, max_px: int = 96) -> str:
    """A uint8 (H, W, 3) image as a ``data:image/png`` URL (stdlib zlib only), at most ``max_px`` wide."""
    img = np.asarray(rgb, np.uint8)
    step = max(1, math.ceil(img.shape[1] / max_px))
    img = np.ascontiguousarray(img[::step, ::step, :3])
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


class MonitorState:
    """The session as the page sees it; ``observe(rows, status)`` is the runner's observer."""

    def __init__(self, *, session_id: str = "", day: int = 0, backend: str = "", window_ms=COUNT_WINDOW_MS,
                 fixation_window_deg: float = 2.0, trace_trials: int = 3, channel_names: list[str] | None = None,
                 stimuli=None, reward_device: str = "", adapter=None):
        self._lock = threading.Lock()
        self._window_ms = (float(window_ms[0]), float(window_ms[1]))
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
        self.info["reward_device"] = reward_device
        self.stimuli = stimuli               # a StimulusSet (pixels, kind) for the current-stimulus panel, or None
        self.adapter = adapter               # callable -> {counter: value} of the acquisition adapter, or None
        self.reasons: dict[int, int] = {}
        self.fixation_monitored: bool | None = None
        self.last_notes: list[dict] = []
        self.current: dict = {}

    # ------------------------------------------------------------------ input
    def observe(self, rows, status) -> None:
        r = rows.record
        k = len(rows.trial.stim_indices)
        counts = np.asarray(rows.counts, float)
        n_ch = counts.shape[1] if counts.ndim == 2 else 0
        onsets = np.asarray(rows.onset_acq_s, float)
        onsets = onsets[np.isfinite(onsets)]
        with self._lock:
            self.updates += 1
            if self.count_sum is None or self.psth_sum is None:   # (both are set together)
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
            p = status
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
            self._warnings(rows)

    def _warnings(self, rows) -> None:
        """Invalid reasons, the trial's note, whether fixation is watched, the current stimulus."""
        r = rows.record
        reasons = np.asarray(rows.invalid_reason if rows.invalid_reason is not None else [], int)
        for code in reasons[reasons != 0]:
            self.reasons[int(code)] = self.reasons.get(int(code), 0) + 1
        self.fixation_monitored = bool(r.fixation_monitored)
        if r.note:
            self.last_notes = (self.last_notes + [{"trial_index": int(rows.trial.trial_index), "note": r.note[:300]}])[-5:]
        last = int(rows.trial.stim_indices[-1]) if len(rows.trial.stim_indices) else -1
        cur = {"trial_index": int(rows.trial.trial_index), "stim_indices": [int(i) for i in rows.trial.stim_indices],
               "last": last, "reasons": [INVALID_REASON_TEXT[InvalidReason(int(c))] for c in reasons]
               if all(int(c) in InvalidReason._value2member_map_ for c in reasons) else []}
        if self.stimuli is not None and 0 <= last < len(self.stimuli):
            cur["png"] = png_data_url(self.stimuli.pixels[last])
            cur["kind"] = str(self.stimuli.kind[last])
        self.current = cur

    # ------------------------------------------------------------------ output
    def snapshot(self) -> dict:
        """Everything the page draws, JSON-ready."""
        with self._lock:
            win_s = (self._window_ms[1] - self._window_ms[0]) / 1000.0
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
                    "rewards": dict(self.rewards), "served_utc": time.strftime("%H:%M:%S", time.gmtime()),
                    "warnings": self._warning_snapshot(), "current": dict(self.current)}

    def _warning_snapshot(self) -> dict:
        """Called under the lock: the warnings panel's content."""
        total = sum(self.reasons.values())
        reasons = [{"code": c, "reason": INVALID_REASON_TEXT.get(InvalidReason(c), f"code {c}")
                    if c in InvalidReason._value2member_map_ else f"code {c}", "n": n}
                   for c, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        try:
            counters = dict(self.adapter()) if self.adapter is not None else {}
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:   # the page renders regardless
            counters = {"adapter counters unavailable": repr(exc)[:80]}
        fix = ("fixation not monitored (no eye tracker): stored as unknown" if self.fixation_monitored is False else "")
        dev = self.info.get("reward_device")
        return {"invalid_total": total, "reasons": reasons, "notes": list(self.last_notes),
                "counters": {k: v for k, v in counters.items() if isinstance(v, (int, float, str))},
                "fixation": fix, "reward": "no reward device" if dev == "none" else "",
                "fixation_enum": {int(k): k.name.lower().replace("_", " ") for k in Fixation}}
