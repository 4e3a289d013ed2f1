"""Trial-by-trial pairing of stimulus onsets (presenter clock) with sync pulses
(acquisition clock), for a live rig whose pulses arrive as a stream.

Rules that keep a wrong sync line from ever looking right:

- **First alignment only when it is unique** (:func:`unique_offset`): the offset that
  pairs the most pooled onsets with pulses must pair most of them (``min_coverage``),
  come from at least two trials (irregular inter-trial gaps decide) and beat every other
  offset clearly. Shifting a real photodiode's train by one RSVP period loses one pair per
  trial (the first or last presentation of each), so the winner must lead by at least
  ``max(2, trials // 2)`` pairs; a periodic line at the RSVP period (pulses in the gaps
  too) loses nothing when shifted and never aligns; a free-running line not locked to the
  flips pairs a trial's worth at best and fails the coverage.
- **Drift only when measurable**: see :mod:`rig.session.clock` (``min_drift_span_s``).
- **A clock jump only on evidence from several pulses**: after a fit, trials whose pulses
  all miss the line are pooled; a new clock segment is declared only when those onsets
  align uniquely, with at least ``jump_votes`` pairs, at an offset that is not the old one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rig.session.clock import (
    MAX_DRIFT_PPM,
    MIN_DRIFT_SPAN_S,
    ClockFitError,
    SegmentedClock,
    SegmentFit,
    match_pulses,
    vote_offset,
)


def unique_offset(trials: list[np.ndarray], pulses_acq_s: np.ndarray, tolerance_s: float, min_votes: int = 3,
                  min_coverage: float = 0.7) -> tuple[float | None, str]:
    """The offset ``acq - presenter`` pairing the onsets of ``trials`` (presenter clock, s,
    one array per trial) with ``pulses_acq_s``, or ``(None, why not)`` unless it is unique."""
    on = np.concatenate([np.asarray(t, float).ravel() for t in trials]) if trials else np.zeros(0)
    on = on[np.isfinite(on)]
    # candidates from the first and the latest trial only: the true offset pairs most onsets of
    # every trial (bounded work: K x pulses candidates, not pool x pulses)
    cand = np.concatenate([np.asarray(trials[0], float).ravel(), np.asarray(trials[-1], float).ravel()]) if trials else on
    offset, top, runner = vote_offset(on, pulses_acq_s, tolerance_s, best_on_tie=True, candidates_from=cand)
    n_trials = sum(1 for t in trials if len(t))
    if offset is None or top < min_votes:
        return None, f"{top} onsets paired with pulses, {min_votes} needed"
    if n_trials < 2 and not (top == len(on) and top - runner >= 1):
        # one trial: only when every onset has its pulse and the train shifted by one period loses
        # one (a periodic line, with pulses before and after the trial, loses none)
        return None, f"waiting for a second trial ({top} vs {runner} pairs at another offset)"
    if top < min_coverage * len(on):
        return None, f"the best offset pairs only {top} of {len(on)} onsets with pulses (a line not locked to the flips?)"
    lead = max(2, n_trials // 2) if n_trials >= 2 else 1
    if top - runner < lead:
        return None, (f"not unique: {top} pairs vs {runner} at another offset (a periodic line, not a photodiode?)")
    return offset, ""


@dataclass
class TrialAlignment:
    """One trial's onsets paired with pulses (arrays of length ``len(onsets)``)."""

    label: str                       # the clock segment the onsets belong to
    pulse_acq_s: np.ndarray          # matched pulse, acquisition clock, s; NaN where none
    aligned: bool                    # a clock line (or a unique first offset) was known for this trial
    segment: SegmentFit | None       # the segment's fit after this trial's pairs
    notes: list[str] = field(default_factory=list)
    n_extra: int = 0                 # pulses that paired with no onset and are now behind the trial

    @property
    def got(self) -> np.ndarray:
        return np.isfinite(self.pulse_acq_s)


class PulseAligner:
    """Pairs each trial's onsets with buffered pulses and keeps the clock fit per segment."""

    def __init__(self, tolerance_s: float = 0.003, max_drift_ppm: float = MAX_DRIFT_PPM,
                 min_drift_span_s: float = MIN_DRIFT_SPAN_S, min_votes: int = 3, jump_votes: int = 6,
                 pool_trials: int = 15):
        self.tol = float(tolerance_s)
        self.clock = SegmentedClock(max_drift_ppm=max_drift_ppm, min_drift_span_s=min_drift_span_s)
        self.min_votes, self.jump_votes, self.pool_trials = int(min_votes), int(jump_votes), int(pool_trials)
        self.pulses = np.zeros(0)
        self.epoch = 0                                # acquisition restarts seen
        self._boot: dict[str, list[np.ndarray]] = {}  # onsets per trial of a segment not aligned yet
        self._lost: list[np.ndarray] = []             # onsets of trials whose pulses all missed the fit

    def add_pulses(self, rising_acq_s: np.ndarray) -> None:
        if len(rising_acq_s):
            self.pulses = np.sort(np.r_[self.pulses, np.asarray(rising_acq_s, float)])

    def label(self, base: str) -> str:
        return base + (f"/acq{self.epoch}" if self.epoch else "")

    def trial_starting(self, base: str) -> int:
        """Call before a trial of presenter session ``base`` is started (after taking the pulses
        received so far). While its segment has neither a fit nor pooled onsets, every buffered
        pulse came from flips before this trial (a killed controller's last trial, a late
        stream) and can pair with none of the onsets to come; they are dropped, or a lone first
        trial would align on an earlier trial's train of the same RSVP spacing (a wrong offset,
        with the pacing difference of the two trials as residual). Returns how many."""
        label = self.label(base)
        if self.clock.fitted(label) is not None or self._boot.get(label):
            return 0
        n = len(self.pulses)
        self.pulses = np.zeros(0)
        return n

    def align(self, base: str, onsets_p: np.ndarray, end_p: float) -> TrialAlignment:
        """Pair ``onsets_p`` (presenter clock, s) with buffered pulses; ``end_p``: the trial's
        end (presenter clock): pulses before it that paired with nothing are dropped."""
        onsets = np.asarray(onsets_p, float).ravel()
        label = self.label(base)
        notes: list[str] = []
        seg = self.clock.fitted(label)
        if seg is not None:
            pred = seg.to_acq(onsets)
        else:
            pred = self._bootstrap(label, onsets, notes)
        idx = match_pulses(pred, self.pulses, self.tol) if len(onsets) else np.zeros(0, int)
        if seg is not None and len(onsets) and not (idx >= 0).any():
            jumped = self._jump(base, seg, onsets, notes)
            if jumped is not None:
                label, pred = self.label(base), jumped
                idx = match_pulses(pred, self.pulses, self.tol)
                seg = None
        elif (idx >= 0).any():
            self._lost = []
        aligned = bool(np.all(np.isfinite(pred))) if len(onsets) else seg is not None
        return self._fit(label, onsets, idx, end_p, aligned, notes)

    def _bootstrap(self, label: str, onsets: np.ndarray, notes: list[str]) -> np.ndarray:
        pool = self._boot.setdefault(label, [])
        pool.append(onsets)
        del pool[:-self.pool_trials]
        offset, why = unique_offset(pool, self.pulses, self.tol, self.min_votes)
        if offset is None:
            notes.append(f"clock of presenter {label} not aligned yet ({why})")
            return np.full(len(onsets), np.nan)
        return onsets + offset

    def _jump(self, base: str, seg: SegmentFit, onsets: np.ndarray, notes: list[str]) -> np.ndarray | None:
        """Pool a trial whose pulses all missed the fit; a new segment only if the pooled
        onsets align uniquely, with ``jump_votes`` pairs, somewhere else."""
        self._lost.append(onsets)
        del self._lost[:-self.pool_trials]
        offset, _ = unique_offset(self._lost, self.pulses, self.tol, self.jump_votes)
        old = float(np.median(seg.to_acq(onsets) - onsets))
        if offset is None or abs(offset - old) <= self.tol:
            return None
        self.epoch += 1
        self._lost = []
        notes.append(f"acquisition clock jumped by {offset - old:+.4f} s (several pulses agree): "
                     f"new clock segment {self.label(base)}")
        return onsets + offset

    def _fit(self, label: str, onsets: np.ndarray, idx: np.ndarray, end_p: float, aligned: bool,
             notes: list[str]) -> TrialAlignment:
        got = idx >= 0
        pulse = np.full(len(onsets), np.nan)
        pulse[got] = self.pulses[idx[got]]
        seg = self.clock.fitted(label)
        if got.any():
            try:
                seg = self.clock.add(label, onsets[got], pulse[got])
                self._boot.pop(label, None)
            except ClockFitError as exc:           # these pairs cannot be right: keep them out
                notes.append(f"pulses refused ({exc})")
                pulse[:], got[:] = np.nan, False
                aligned = False
        used = np.zeros(len(self.pulses), bool)
        used[idx[got]] = True
        n_extra = 0
        if seg is not None and got.any():            # pulses behind the trial that paired with nothing
            stale = self.pulses < float(seg.to_acq(end_p))
            n_extra = int((stale & ~used).sum())
            used |= stale
        self.pulses = self.pulses[~used][-1000:]      # bounded while unaligned or lost
        return TrialAlignment(label, pulse, aligned, seg, notes, n_extra)
