"""A deterministic backend with a known answer, for testing the session machinery."""
from __future__ import annotations

import numpy as np

from rig.backend import SessionInfo, Trial, TrialRecord


class CountingBackend:
    """Channel c fires exactly ``(stim % 5) + c`` spikes inside the 70-170 ms window of
    every presentation (plus spikes outside it that must not be counted). Presenter and
    acquisition clocks differ by ``offset`` and ``drift``. Trials listed in ``abort_at``
    (trial_index -> presentations completed) break fixation; trials in ``no_pulse_at`` lose all
    their sync pulses; every trial is stamped with clock segment ``segment``."""

    name = "counting"

    def __init__(self, n_channels: int = 3, offset: float = 5.0, drift: float = 30e-6,
                 abort_at: dict[int, int] | None = None, drop_at: set[tuple[int, int]] | None = None,
                 no_pulse_at: set[int] | None = None, segment: str = ""):
        self.n_channels, self.offset, self.drift = n_channels, offset, drift
        self.no_pulse_at, self.segment = no_pulse_at or set(), segment
        self.abort_at = abort_at or {}
        self.drop_at = drop_at or set()
        self.t = 100.0
        self.opened = self.closed = 0
        self.shown: list[int] = []

    def expected(self, stim: int) -> np.ndarray:
        return np.array([(stim % 5) + c for c in range(self.n_channels)], float)

    def open(self, session: SessionInfo, stimuli) -> None:
        self.opened += 1
        self.n_stim = len(stimuli)

    def acq(self, t):
        return self.offset + (1 + self.drift) * np.asarray(t)

    def run_trial(self, trial: Trial) -> TrialRecord:
        k = len(trial.stim_indices)
        if not self.shown and trial.trial_index > 0:
            # a resumed session: the clocks run on from where an uninterrupted one would be
            self.t = 100.0 + trial.trial_index * (0.8 + 0.2 * k)
        completed = self.abort_at.get(trial.trial_index, k)
        onsets = self.t + 0.3 + 0.2 * np.arange(completed)
        times, chans = [], []
        for on, s in zip(onsets, trial.stim_indices[:completed]):
            self.shown.append(s)
            for c, n in enumerate(self.expected(s)):
                inside = self.acq(on) + 0.075 + 0.09 * (np.arange(int(n)) + 0.5) / max(n, 1)
                outside = self.acq(on) + np.array([0.01, 0.18])
                times += list(inside) + list(outside)
                chans += [c] * (int(n) + 2)
        order = np.argsort(times)
        pulses = onsets[:0] if trial.trial_index in self.no_pulse_at else onsets
        rec = TrialRecord(trial.trial_index, completed, completed == k, onsets, np.full(completed, 6),
                          np.full(completed, 6), [(trial.trial_index, j) in self.drop_at for j in range(completed)],
                          pulses, self.acq(pulses), np.asarray(times)[order], np.asarray(chans, int)[order],
                          float(self.acq(self.t)), float(self.acq(self.t + 0.3 + 0.2 * k)),
                          clock_segment=self.segment, pulse_ok=np.isin(onsets, pulses))
        self.t += 0.3 + 0.2 * k + 0.5
        return rec

    def close(self) -> None:
        self.closed += 1
