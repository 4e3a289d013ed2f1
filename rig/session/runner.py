"""The session runner: drive a backend through a schedule and record every trial.

For each trial: ask the backend to run it, align its flip times to the acquisition clock
through the sync pulses, count spikes in the response window, decide which
presentations are valid, write the trial (journal, then HDF5, then flush) and put the
invalid presentations back into the queue. Ctrl-C stops cleanly after the current
trial; the day can be resumed later.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import numpy as np

from modelfit.progressbars import bar as progress_bar
from rig.backend import (
    INVALID_REASON_TEXT,
    Backend,
    InvalidReason,
    SessionInfo,
    TrialRows,
    invalid_reasons,
)
from rig.errors import UserError
from rig.session.clock import (
    MAX_DRIFT_PPM,
    MIN_DRIFT_SPAN_S,
    SegmentedClock,
    window_counts,
)
from rig.session.schedule import PresentationQueue, Schedule
from stimuli.stimset import StimulusSet

log = logging.getLogger(__name__)


class TrialSink(Protocol):
    """Where the runner writes trials: a day file (``rig.store.dayfile.DayWriter``)."""

    n_channels: int

    def recorded_trials(self) -> list[tuple[tuple[int, ...], np.ndarray]]: ...
    def sync_pairs(self) -> tuple[np.ndarray, np.ndarray]: ...
    def append_trial(self, rows: TrialRows) -> None: ...
    def mark_complete(self) -> None: ...


@dataclass
class SessionResult:
    trials_run: int
    presentations_valid: int
    presentations_total: int
    remaining: int            # planned presentations still without a valid recording
    interrupted: bool
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.remaining == 0


class _StopFlag:
    """Set by SIGINT (Ctrl-C): finish the current trial, then stop."""

    def __init__(self) -> None:
        self.stop = False
        self._old: Callable[[int, FrameType | None], Any] | int | None = None   # the SIGINT handler before ours

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.stop = True
        log.warning("Ctrl-C: stopping after this trial (press again to abort at once; the day can be resumed).")

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class TrialProgress:
    """What an observer (the live monitor) is told after each stored trial."""

    trials_run: int
    presentations_valid: int
    presentations_total: int
    planned: int
    remaining: int
    elapsed_s: float
    clock_offset_s: float
    clock_drift: float
    clock_residual_sd_s: float
    clock_n_pairs: int
    invalid_reasons: Counter = field(default_factory=Counter)   # InvalidReason code -> presentations so far


class SessionStopped(UserError):
    """The session stopped itself (e.g. presentations kept coming without sync pulses);
    everything recorded is kept and the day can be resumed once the cause is fixed."""


NO_PULSE_HINT = ("likely causes: the photodiode is unplugged, off its patch or not powered; the sync TTL is wired to "
                 "another line than acquisition.ttl_line (or another stream than acquisition.ttl_stream); the TTL is "
                 "not locked to the flips (a free-running or periodic line); the acquisition system is not recording. "
                 "Check with `itloop present --timing-check --acquisition`, then resume the day with --resume")


@dataclass
class SessionLimits:
    """Bounds that stop a session instead of letting it run forever."""

    max_without_pulse: int = 0        # consecutive shown presentations without a pulse that stop it (0: never)
    max_attempts: int = 0             # attempts per planned presentation before it is given up (0: unbounded)
    status_every_trials: int = 20     # periodic status line (logging, when output is not a terminal)
    status_every_s: float = 30.0
    max_drift_ppm: float = MAX_DRIFT_PPM          # the clock fit's bounds, as the backend's (rig.session.clock)
    min_drift_span_s: float = MIN_DRIFT_SPAN_S


def derive_rows(trial, rec, seg, n_ch: int, window_ms: tuple[float, float]) -> TrialRows:
    """Onsets on the acquisition clock, window counts, validity and invalid reasons of one trial."""
    k = len(trial.stim_indices)
    onset_acq = np.full(k, np.nan)
    if rec.completed and seg.n_pairs:
        onset_acq[: rec.completed] = seg.to_acq(rec.onset_presenter_s)
    counts = window_counts(rec.spike_times_s, rec.spike_channels, onset_acq, n_ch, *window_ms)
    shown = np.arange(k) < rec.completed
    dropped = np.zeros(k, bool)
    dropped[: rec.completed] = rec.dropped_frame
    pulse = np.zeros(k, bool)
    pulse[: rec.completed] = rec.pulse_ok
    valid = shown & ~dropped & pulse & rec.acquisition_ok & np.isfinite(onset_acq)
    return TrialRows(trial, rec, onset_acq, counts, valid, eye_acq_s=_to_acq(seg, rec.eye_presenter_s),
                     reward_acq_s=_to_acq(seg, rec.reward_presenter_s), invalid_reason=invalid_reasons(rec, k, valid))


class _Watch:
    """Counts invalid reasons, the run of presentations without a pulse, and logs a status line."""

    def __init__(self, limits: SessionLimits, day: int, tty: bool):
        self.limits, self.day, self.tty = limits, day, tty
        self.reasons: Counter = Counter()
        self.no_pulse_run = 0
        self._last_t, self._last_n = time.monotonic(), 0

    def add(self, rows: TrialRows) -> None:
        r = np.asarray(rows.invalid_reason, int)
        self.reasons.update(int(x) for x in r[r != 0])
        for code in r[np.arange(len(r)) < rows.record.completed]:
            if code in (InvalidReason.NO_SYNC_PULSE, InvalidReason.CLOCK_NOT_ALIGNED, InvalidReason.ACQUISITION_GAP):
                self.no_pulse_run += 1
            else:
                self.no_pulse_run = 0

    def check_pulses(self) -> None:
        n = self.limits.max_without_pulse
        if n and self.no_pulse_run >= n:
            top = ", ".join(f"{INVALID_REASON_TEXT[InvalidReason(c)]} x{m}" for c, m in self.reasons.most_common(2))
            raise SessionStopped(f"day {self.day} stopped: {self.no_pulse_run} presentations in a row without a sync "
                                 f"pulse ({top}); {NO_PULSE_HINT}")

    def leading(self) -> str:
        if not self.reasons:
            return "none"
        code, m = self.reasons.most_common(1)[0]
        return f"{INVALID_REASON_TEXT[InvalidReason(code)]} ({m})"

    def status(self, p: TrialProgress, force: bool = False) -> None:
        lim = self.limits
        due = (p.trials_run - self._last_n >= lim.status_every_trials
               or time.monotonic() - self._last_t >= lim.status_every_s)
        if self.tty or not (due or (force and p.trials_run != self._last_n)):
            return
        self._last_t, self._last_n = time.monotonic(), p.trials_run
        resid = f"{p.clock_residual_sd_s * 1e3:.3f} ms" if p.clock_n_pairs > 2 else "-"
        log.info("day %d: %d trials, %d/%d presentations valid (%.0f%%), %d of %d planned left; leading invalid "
                 "reason: %s; clock residual %s over %d pulses", self.day, p.trials_run, p.presentations_valid,
                 p.presentations_total, 100.0 * p.presentations_valid / max(p.presentations_total, 1), p.remaining,
                 p.planned, self.leading(), resid, p.clock_n_pairs)


def run_session(backend: Backend, writer: TrialSink, stimuli: StimulusSet, schedule: Schedule,
                session: SessionInfo, window_ms: tuple[float, float],
                max_trials: int | None = None, observer=None, limits: SessionLimits | None = None) -> SessionResult:
    """Record trials until every planned presentation has a valid recording (or was given
    up after ``limits.max_attempts``).

    ``writer`` may be a fresh or a resumed day; presentations it already holds validly
    are not shown again. ``max_trials`` stops early (for tests and dry runs).
    ``observer(rows, status)`` is called after each stored trial (``TrialRows``,
    :class:`TrialProgress`); it must not raise (errors are reported and ignored).
    Raises :class:`SessionStopped` after storing the trial that reached
    ``limits.max_without_pulse`` presentations in a row without a sync pulse.
    """
    t0 = time.monotonic()
    limits = limits or SessionLimits()
    queue = PresentationQueue.replay(schedule, writer.recorded_trials(), max_attempts=limits.max_attempts)
    clock = SegmentedClock(max_drift_ppm=limits.max_drift_ppm, min_drift_span_s=limits.min_drift_span_s)
    for label, (p_s, a_s) in _stored_segments(writer):
        if len(p_s):
            clock.add(label, p_s, a_s)
    watch = _Watch(limits, session.day, tty=sys.stderr.isatty())
    n_trials = n_valid = n_total = 0
    interrupted = False
    log.info("day %d: preparing the %s backend (%d stimuli, %d presentations to record)",
             session.day, getattr(backend, 'name', 'backend'), len(stimuli), len(queue))
    bar = p = None
    try:
        backend.open(session, stimuli)
        attrs = getattr(backend, "session_attrs", None)     # e.g. which presenter (CURVE key) connected
        if attrs is not None and hasattr(writer, "set_attrs"):
            writer.set_attrs(attrs())
        bar = progress_bar(total=len(schedule), initial=len(schedule) - len(queue), unit="pres",
                           desc=f"day {session.day}", dynamic_ncols=True)
        with _StopFlag() as flag:
            while (trial := queue.next_trial()) is not None:
                rec = backend.run_trial(trial)
                if rec.trial_index != trial.trial_index:
                    raise RuntimeError(f"backend answered trial {rec.trial_index} for trial {trial.trial_index}")
                seg = clock.add(rec.clock_segment, rec.sync_presenter_s, rec.sync_acq_s)
                rows = derive_rows(trial, rec, seg, writer.n_channels, window_ms)
                rows.clock = clock.state(seg.label)   # the session's fits: the store writes them inside its commit
                writer.append_trial(rows)
                queue.complete(rows.valid)
                watch.add(rows)
                n_trials += 1
                n_valid += int(rows.valid.sum())
                n_total += len(trial.stim_indices)
                bar.update(int(rows.valid.sum()))
                bar.set_postfix(trials=n_trials, valid=f"{n_valid / max(n_total, 1):.0%}")
                p = TrialProgress(n_trials, n_valid, n_total, len(schedule), len(queue) + queue.n_given_up,
                                  time.monotonic() - t0, seg.offset_s, seg.drift, seg.residual_sd_s, seg.n_pairs,
                                  watch.reasons.copy())
                _notify(observer, rows, p)
                watch.status(p)
                watch.check_pulses()
                if flag.stop or (max_trials is not None and n_trials >= max_trials):
                    interrupted = flag.stop
                    break
        if len(queue) == 0 and queue.n_given_up == 0:
            writer.mark_complete()
        elif len(queue) == 0:
            log.warning("day %d: %d planned presentations given up after %d attempts each (day left incomplete)",
                        session.day, queue.n_given_up, limits.max_attempts)
    finally:
        if bar is not None:
            bar.close()
        backend.close()
        if p is not None:
            watch.status(p, force=True)
    return SessionResult(n_trials, n_valid, n_total, len(queue) + queue.n_given_up, interrupted, time.monotonic() - t0)


def _notify(observer, rows: TrialRows, p: TrialProgress) -> None:
    if observer is None:
        return
    try:
        observer(rows, p)
    except Exception as exc:  # a monitor must never stop a recording
        log.warning("live monitor: %r (ignored; the recording goes on)", exc)


def _stored_segments(writer) -> list[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    """Sync pairs already in the day, grouped by presenter session (one group for old files)."""
    if hasattr(writer, "sync_pairs_by_segment"):
        return writer.sync_pairs_by_segment()
    return [("", writer.sync_pairs())]


def _to_acq(seg, t_presenter: np.ndarray) -> np.ndarray:
    """Presenter-clock times on the acquisition clock by the segment's fit (NaN before it has pulses)."""
    return seg.to_acq(t_presenter) if len(t_presenter) and seg.n_pairs else np.full(len(t_presenter), np.nan)
