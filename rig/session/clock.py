"""Presenter clock -> acquisition clock, fitted from matched sync pulses, per presenter session.

Model per *segment* (one presenter process: its PsychoPy clock starts again when it is
restarted): ``acq = offset + (1 + drift) * presenter``. Each segment is fitted on its own
robust line (least squares, refitted without pairs beyond 5 robust SDs, so one missed or
spurious pulse does not bend it); residuals are kept for checking. No drift is estimated
until the pairs span ``min_drift_span_s`` (default 5 s: with 0.5 ms pulse jitter a shorter
span allows any slope, and one trial's 0.8 s once gave 1,794 ppm): before that the line is
offset only. A fit outside physical bounds (``|drift| > max_drift_ppm`` or ``|offset| >
max_offset_s``) raises :class:`ClockFitError` at once (one line; bounded time) instead of
mapping every onset to nonsense.

Matching pulses to flips (:func:`match_pulses`): with a fitted segment each onset is
predicted on the acquisition clock and paired with the nearest pulse within a tolerance;
before the first fit, :func:`vote_offset` finds the single offset that pairs the most
onsets with pulses (missing and extra pulses only lower its vote). An onset with no pulse
is reported, so its presentation can be marked invalid (a gap in the acquisition stream,
or a photodiode miss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rig.backend import ClockState
from rig.errors import UserError

MAX_DRIFT_PPM = 1000.0       # |drift| above this is not a crystal, it is a wrong match
MAX_OFFSET_S = 1.0e7         # |offset| above this (~116 days) is not a clock, it is garbage
MIN_DRIFT_SPAN_S = 5.0       # pairs must span this long before a drift is fitted (offset only before)


class ClockFitError(UserError):
    """A clock fit outside physical bounds; the message names the segment and the fix."""


@dataclass
class SegmentFit:
    """One presenter session's line ``acq = offset_s + (1 + drift) * presenter``."""

    label: str
    offset_s: float = 0.0
    drift: float = 0.0
    residual_sd_s: float = float("nan")
    max_abs_residual_s: float = float("nan")
    n_pairs: int = 0
    n_outliers: int = 0
    p: list = field(default_factory=list, repr=False)
    a: list = field(default_factory=list, repr=False)

    def to_acq(self, presenter_s) -> np.ndarray:
        return self.offset_s + (1.0 + self.drift) * np.asarray(presenter_s, float)

    def to_presenter(self, acq_s) -> np.ndarray:
        """Acquisition-clock seconds -> presenter-clock seconds (the inverse of :meth:`to_acq`)."""
        return (np.asarray(acq_s, float) - self.offset_s) / (1.0 + self.drift)

    def summary(self) -> dict:
        return {"label": self.label, "offset_s": self.offset_s, "drift_ppm": self.drift * 1e6,
                "residual_sd_s": self.residual_sd_s, "max_abs_residual_s": self.max_abs_residual_s,
                "n_pairs": self.n_pairs, "n_outliers": self.n_outliers}


def fit_line(p: np.ndarray, a: np.ndarray, label: str = "", max_drift_ppm: float = MAX_DRIFT_PPM,
             max_offset_s: float = MAX_OFFSET_S,
             min_drift_span_s: float = MIN_DRIFT_SPAN_S) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Robust line through sync pairs: ``(offset_s, drift, residuals_s, kept)``.

    Offset only (drift 0) while the pairs span less than ``min_drift_span_s`` presenter
    seconds. Raises :class:`ClockFitError` when the pairs are not finite or the line is
    outside physical bounds (``|drift| <= max_drift_ppm`` always). At most 4 least-squares
    passes: bounded time for any input.
    """
    p, a = np.asarray(p, float), np.asarray(a, float)
    where = f"presenter session {label!r}" if label else "the sync pulses"
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(a))):
        raise ClockFitError(f"clock fit for {where}: sync times are not finite; the acquisition stream sent garbage "
                            "(check acquisition.system and its stream)")
    rough = float(np.median(a - p)) if len(p) else 0.0
    if not abs(rough) <= max_offset_s:
        raise ClockFitError(f"clock fit for {where}: offset {rough:.4g} s is outside ±{max_offset_s:g} s; "
                            "the acquisition timestamps are not a clock (check acquisition.system and its sample rate)")
    if len(p) == 1 or np.ptp(p) < max(min_drift_span_s, 1e-12):
        offset, keep = _robust_offset(a - p)
        slope, resid = 1.0, a - (offset + p)
        gross = float(np.polyfit(p - p.mean(), a, 1)[0]) - 1.0 if len(p) > 1 and np.ptp(p) > 0 else 0.0
        if not (math.isfinite(gross) and abs(gross) <= 0.05):     # not a clock at all, whatever the jitter
            raise ClockFitError(f"clock fit for {where}: drift {gross * 1e6:.4g} ppm is outside ±{max_drift_ppm:g} ppm; "
                                "the pulses do not belong to these flips (check acquisition.ttl_line and the photodiode cable)")
    else:
        keep = np.ones(len(p), bool)
        for _ in range(4):
            p0 = p[keep].mean()
            slope, icpt = np.polyfit(p[keep] - p0, a[keep], 1)
            resid = a - (icpt + slope * (p - p0))
            mad = np.median(np.abs(resid[keep] - np.median(resid[keep]))) * 1.4826
            new_keep = np.abs(resid) <= max(5 * mad, 20e-6)
            if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        offset = float(icpt - slope * p0)
    drift = float(slope - 1.0)
    if not (math.isfinite(drift) and abs(drift) * 1e6 <= max_drift_ppm):
        raise ClockFitError(f"clock fit for {where}: drift {drift * 1e6:.4g} ppm is outside ±{max_drift_ppm:g} ppm; "
                            "the pulses do not belong to these flips (check acquisition.ttl_line and the photodiode cable)")
    if not (math.isfinite(offset) and abs(offset) <= max_offset_s):
        raise ClockFitError(f"clock fit for {where}: offset {offset:.4g} s is outside ±{max_offset_s:g} s; "
                            "the acquisition timestamps are not a clock (check acquisition.system and its sample rate)")
    return offset, drift, resid, keep


def _robust_offset(d: np.ndarray) -> tuple[float, np.ndarray]:
    """Median of ``a - p`` without the differences beyond 5 robust SDs (at least 20 us)."""
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826
    keep = np.abs(d - med) <= max(5 * mad, 20e-6)
    return (float(np.median(d[keep])) if keep.any() else med), keep


class SegmentedClock:
    """Sync pairs and fits, one segment per presenter session (label)."""

    def __init__(self, max_drift_ppm: float = MAX_DRIFT_PPM, max_offset_s: float = MAX_OFFSET_S,
                 min_drift_span_s: float = MIN_DRIFT_SPAN_S):
        self.segments: dict[str, SegmentFit] = {}
        self.order: list[str] = []
        self.max_drift_ppm = max_drift_ppm
        self.max_offset_s = max_offset_s
        self.min_drift_span_s = min_drift_span_s

    def add(self, label: str, presenter_s, acq_s) -> SegmentFit:
        """Add pairs to segment ``label`` (created on first use) and refit it."""
        presenter_s, acq_s = np.asarray(presenter_s, float).ravel(), np.asarray(acq_s, float).ravel()
        if len(presenter_s) != len(acq_s):
            raise ValueError("sync pulses: presenter and acquisition lists differ in length")
        seg = self.segments.get(label)
        if seg is None:
            seg = self.segments[label] = SegmentFit(label)
            self.order.append(label)
        if len(presenter_s):
            p, a = np.r_[np.asarray(seg.p, float), presenter_s], np.r_[np.asarray(seg.a, float), acq_s]
            offset, drift, resid, keep = fit_line(p, a, label, self.max_drift_ppm, self.max_offset_s, self.min_drift_span_s)
            seg.p, seg.a = p.tolist(), a.tolist()
            seg.offset_s, seg.drift, seg.n_pairs = offset, drift, len(p)
            seg.n_outliers = int((~keep).sum())
            seg.residual_sd_s = float(np.std(resid[keep])) if keep.sum() > 2 else 0.0
            seg.max_abs_residual_s = float(np.max(np.abs(resid[keep]))) if keep.any() else float("nan")
        return seg

    def fitted(self, label: str) -> SegmentFit | None:
        seg = self.segments.get(label)
        return seg if seg is not None and seg.n_pairs > 0 else None

    def to_acq(self, label: str, presenter_s) -> np.ndarray:
        seg = self.fitted(label)
        if seg is None:
            raise RuntimeError(f"presenter session {label!r} has no sync pulses yet: the clocks cannot be aligned")
        return seg.to_acq(presenter_s)

    def summaries(self) -> list[dict]:
        return [self.segments[k].summary() for k in self.order]

    def state(self, label: str) -> ClockState:
        """What the day file stores after a trial of segment ``label``: its fit and every segment's summary."""
        seg = self.segments.get(label) or SegmentFit(label)
        return ClockState(seg.offset_s, seg.drift, seg.residual_sd_s, seg.n_pairs, self.summaries())


# --------------------------------------------------------------------------- matching
def match_pulses(predicted_acq_s: np.ndarray, pulses_acq_s: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index into ``pulses_acq_s`` of the pulse nearest each prediction, -1 if none within
    ``tolerance_s``; each pulse is used at most once (nearest prediction wins)."""
    pred = np.asarray(predicted_acq_s, float)
    pulses = np.sort(np.asarray(pulses_acq_s, float))
    out = np.full(len(pred), -1, int)
    if not len(pulses) or not len(pred):
        return out
    j = np.clip(np.searchsorted(pulses, pred), 1, len(pulses) - 1) if len(pulses) > 1 else np.zeros(len(pred), int)
    cand = np.stack([j - 1, j]) if len(pulses) > 1 else np.stack([j, j])
    dist = np.abs(pulses[cand] - pred[None, :])
    best = cand[np.argmin(dist, axis=0), np.arange(len(pred))]
    err = np.abs(pulses[best] - pred)
    order = np.argsort(err)
    used = set()
    for i in order:
        if np.isfinite(err[i]) and err[i] <= tolerance_s and best[i] not in used:
            out[i] = best[i]
            used.add(int(best[i]))
    return out


def vote_offset(onsets_s: np.ndarray, pulses_acq_s: np.ndarray, tolerance_s: float,
                best_on_tie: bool = False, candidates_from: np.ndarray | None = None) -> tuple[float | None, int, int]:
    """The offset ``acq - presenter`` that pairs the most onsets with pulses.

    Returns ``(offset_s or None, votes, runner_up_votes)``; None when no offset wins
    outright (a regular pulse train with a hole at its end is ambiguous by one period:
    the caller then waits for more onsets, whose irregular inter-trial gaps decide).
    ``best_on_tie``: return the first of the tied offsets instead of None (for a caller
    that has no more onsets to wait for; ``votes == runner_up_votes`` tells it so).
    ``candidates_from``: onsets whose pairings with the pulses are the candidate offsets
    (default all; a subset such as the latest trial's bounds the work).
    """
    on, pu = np.asarray(onsets_s, float), np.sort(np.asarray(pulses_acq_s, float))
    on = on[np.isfinite(on)]
    if not len(on) or not len(pu):
        return None, 0, 0
    src = on if candidates_from is None else np.asarray(candidates_from, float)
    src = src[np.isfinite(src)]
    cands = (pu[None, :] - src[:, None]).ravel()
    if len(cands) > 200_000:           # bounded work: subsample candidates, every offset still seen via others
        cands = cands[np.linspace(0, len(cands) - 1, 200_000).astype(int)]
    cands = np.sort(cands)
    # votes(c) = onsets with a pulse within tolerance of on + c
    votes = np.zeros(len(cands), int)
    for o in on:
        lo = np.searchsorted(pu, o + cands - tolerance_s, "left")
        hi = np.searchsorted(pu, o + cands + tolerance_s, "right")
        votes += hi > lo
    best = int(np.argmax(votes))
    top = votes[best]
    far = np.abs(cands - cands[best]) > 2 * tolerance_s
    runner = int(votes[far].max()) if far.any() else 0
    if top < 2 or (top <= runner and not best_on_tie):
        return None, int(top), runner
    near = np.abs(cands - cands[best]) <= tolerance_s
    return float(np.median(cands[near & (votes == top)])), int(top), runner


def fit_pulse_train(onsets_s: np.ndarray, pulses_acq_s: np.ndarray, tolerance_s: float,
                    max_drift_ppm: float = MAX_DRIFT_PPM, label: str = "timing check") -> tuple[SegmentFit | None, np.ndarray, bool]:
    """Pair a whole run's onsets (presenter clock, s) with its pulses (acquisition clock, s)
    and fit the robust clock line through the pairs.

    :func:`vote_offset` (ties broken towards the first offset) gives the first pairing,
    :func:`match_pulses` pairs each onset with the nearest pulse within ``tolerance_s``;
    the line is fitted (:func:`fit_line`), the onsets are paired again against the fitted
    line and the line refitted. Returns ``(fit or None when fewer than 2 pairs, index into
    sorted(pulses_acq_s) per onset or -1, ambiguous)``; ``ambiguous`` is True when another
    offset paired as many onsets (a strictly periodic train whose first or last pulse is
    missing cannot be told from the same train shifted by one period).
    """
    on = np.asarray(onsets_s, float).ravel()
    pu = np.sort(np.asarray(pulses_acq_s, float).ravel())
    idx = np.full(len(on), -1, int)
    ok = np.isfinite(on)
    offset, votes, runner = vote_offset(on[ok], pu, tolerance_s, best_on_tie=True)
    if offset is None:
        return None, idx, False
    clock = SegmentedClock(max_drift_ppm=max_drift_ppm)
    pred = on + offset
    for _ in range(2):
        idx = match_pulses(np.where(ok, pred, np.inf), pu, tolerance_s)
        got = idx >= 0
        if got.sum() < 2:
            return None, idx, votes <= runner
        clock.segments.pop(label, None)
        clock.order = []
        seg = clock.add(label, on[got], pu[idx[got]])
        pred = seg.to_acq(on)
    return seg, idx, votes <= runner


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


# --------------------------------------------------------------------------- Rsync
def match_rsync(sent_s: np.ndarray, received_s: np.ndarray, tolerance_s: float = 0.003, chunk: int = 4,
                max_drift_ppm: float = MAX_DRIFT_PPM, label: str = "rsync") -> tuple[SegmentFit | None, np.ndarray]:
    """Pair a sync line with random inter-pulse intervals (pyControl's Rsync idea) sent on
    one clock with the pulses another clock recorded, and fit the clock line.

    Every run of ``chunk`` consecutive received intervals is looked up among the sent
    intervals (each within ``tolerance_s``, which must cover the pulse jitter plus drift
    over one interval); with random intervals a run matches at one place only, so no
    offset has to be guessed and a missing first pulse (ambiguous for a regular train, see
    :func:`vote_offset`) is no problem. A dropped or spurious pulse only spoils the runs
    that contain it. The pairs from the matched runs give a robust line
    (:func:`fit_line`); then every sent pulse is paired with the nearest received pulse
    within ``tolerance_s`` of the line's prediction and the line refitted.

    Returns ``(fit, or None when no run matched; index into sorted(received_s) per sent
    pulse, -1 where none was recorded)``.
    """
    a = np.asarray(sent_s, float).ravel()
    b = np.sort(np.asarray(received_s, float).ravel())
    b = b[np.isfinite(b)]
    idx = np.full(len(a), -1, int)
    ok = np.isfinite(a)
    ai = np.flatnonzero(ok)
    a_ok = a[ok]
    order_a = np.argsort(a_ok, kind="stable")
    a_sorted, a_index = a_ok[order_a], ai[order_a]
    da, db = np.diff(a_sorted), np.diff(b)
    if len(da) < chunk or len(db) < chunk:
        return None, idx
    wa = np.lib.stride_tricks.sliding_window_view(da, chunk)
    wb = np.lib.stride_tricks.sliding_window_view(db, chunk)
    by_first = np.argsort(wa[:, 0], kind="stable")
    first = wa[by_first, 0]
    pi: list[int] = []
    pj: list[int] = []
    for j in range(len(wb)):
        lo, hi = np.searchsorted(first, wb[j, 0] - tolerance_s), np.searchsorted(first, wb[j, 0] + tolerance_s, "right")
        if hi - lo > 64:              # a degenerate (regular) train: intervals do not identify anything
            continue
        cand = by_first[lo:hi]
        hit = cand[np.all(np.abs(wa[cand] - wb[j]) <= tolerance_s, axis=1)]
        if len(hit) == 1:             # a run that matches at two places proves nothing
            pi.extend(range(hit[0], hit[0] + chunk + 1))
            pj.extend(range(j, j + chunk + 1))
    if not pi:
        return None, idx
    pairs = np.unique(np.c_[pi, pj], axis=0)
    clock = SegmentedClock(max_drift_ppm=max_drift_ppm)
    seg = clock.add(label, a_sorted[pairs[:, 0]], b[pairs[:, 1]])
    for _ in range(2):
        m = match_pulses(seg.to_acq(a_sorted), b, tolerance_s)
        got = m >= 0
        if got.sum() < 2:
            return None, idx
        clock = SegmentedClock(max_drift_ppm=max_drift_ppm)
        seg = clock.add(label, a_sorted[got], b[m[got]])
    idx[a_index] = m
    return seg, idx
