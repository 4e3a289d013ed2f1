"""The session runner: drive a backend through a schedule and record every trial.

For each trial: ask the backend to run it, align its flip times to the acquisition clock
through the sync pulses, count spikes in the response window, decide which
presentations are valid, write the trial (journal, then HDF5, then flush) and put the
invalid presentations back into the queue. Ctrl-C stops cleanly after the current
trial; the day can be resumed later.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from rig.backend import Backend, SessionInfo, TrialRows
from rig.session.clock import SegmentedClock, window_counts
from rig.session.schedule import PresentationQueue, Schedule
from stimuli.stimset import StimulusSet


class TrialSink(Protocol):
    """Where the runner writes trials: a day file (``rig.store.dayfile.DayWriter``)."""

    n_channels: int

    def recorded_trials(self) -> list[tuple[tuple[int, ...], np.ndarray]]: ...
    def sync_pairs(self) -> tuple[np.ndarray, np.ndarray]: ...
    def append_trial(self, rows: TrialRows) -> None: ...
    def set_clock(self, offset_s: float, drift: float, residual_sd_s: float, n_pairs: int) -> None: ...
    def set_clock_segments(self, segments: list[dict]) -> None: ...
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
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.stop = True
        tqdm.write("Ctrl-C: stopping after this trial (press again to abort at once; the day can be resumed).")

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


def run_session(backend: Backend, writer: TrialSink, stimuli: StimulusSet, schedule: Schedule,
                session: SessionInfo, window_ms: tuple[float, float], progress: bool = True,
                max_trials: int | None = None, observer=None) -> SessionResult:
    """Record trials until every planned presentation has a valid recording.

    ``writer`` may be a fresh or a resumed day; presentations it already holds validly
    are not shown again. ``max_trials`` stops early (for tests and dry runs).
    ``observer(rows, progress)`` is called after each stored trial (``TrialRows``,
    :class:`TrialProgress`); it must not raise (errors are reported and ignored).
    """
    t0 = time.monotonic()
    queue = PresentationQueue.replay(schedule, writer.recorded_trials())
    clock = SegmentedClock()
    for label, (p_s, a_s) in _stored_segments(writer):
        if len(p_s):
            clock.add(label, p_s, a_s)
    n_ch = writer.n_channels
    n_trials = n_valid = n_total = 0
    interrupted = False
    if progress:
        tqdm.write(f"day {session.day}: preparing the {getattr(backend, 'name', 'backend')} backend "
                   f"({len(stimuli)} stimuli, {len(queue)} presentations to record)")
    bar = None
    try:
        backend.open(session, stimuli)
        attrs = getattr(backend, "session_attrs", None)     # e.g. which presenter (CURVE key) connected
        if attrs is not None and hasattr(writer, "set_attrs"):
            writer.set_attrs(attrs())
        bar = tqdm(total=len(schedule), initial=len(schedule) - len(queue), unit="pres", disable=None if progress else True,
                   desc=f"day {session.day}", dynamic_ncols=True)
        with _StopFlag() as flag:
            while (trial := queue.next_trial()) is not None:
                rec = backend.run_trial(trial)
                if rec.trial_index != trial.trial_index:
                    raise RuntimeError(f"backend answered trial {rec.trial_index} for trial {trial.trial_index}")
                k = len(trial.stim_indices)
                seg = clock.add(rec.clock_segment, rec.sync_presenter_s, rec.sync_acq_s)
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
                rows = TrialRows(trial, rec, onset_acq, counts, valid, eye_acq_s=_to_acq(seg, rec.eye_presenter_s),
                                 reward_acq_s=_to_acq(seg, rec.reward_presenter_s))
                writer.append_trial(rows)        # the clock fits are stored inside its commit
                queue.complete(valid)
                n_trials += 1
                n_valid += int(valid.sum())
                n_total += k
                bar.update(int(valid.sum()))
                bar.set_postfix(trials=n_trials, valid=f"{n_valid / max(n_total, 1):.0%}")
                if observer is not None:
                    try:
                        observer(rows, TrialProgress(n_trials, n_valid, n_total, len(schedule), len(queue),
                                                     time.monotonic() - t0, seg.offset_s, seg.drift,
                                                     seg.residual_sd_s, seg.n_pairs))
                    except Exception as exc:  # any failure: a monitor must never stop a recording
                        tqdm.write(f"live monitor: {exc!r} (ignored; the recording goes on)")
                if flag.stop or (max_trials is not None and n_trials >= max_trials):
                    interrupted = flag.stop
                    break
        if len(queue) == 0:
            writer.mark_complete()
    finally:
        if bar is not None:
            bar.close()
        backend.close()
    return SessionResult(n_trials, n_valid, n_total, len(queue), interrupted, time.monotonic() - t0)


def _stored_segments(writer) -> list[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    """Sync pairs already in the day, grouped by presenter session (one group for old files)."""
    if hasattr(writer, "sync_pairs_by_segment"):
        return writer.sync_pairs_by_segment()
    return [("", writer.sync_pairs())]


def _to_acq(seg, t_presenter: np.ndarray) -> np.ndarray:
    """Presenter-clock times on the acquisition clock by the segment's fit (NaN before it has pulses)."""
    return seg.to_acq(t_presenter) if len(t_presenter) and seg.n_pairs else np.full(len(t_presenter), np.nan)
