"""The backend interface (DESIGN section 4): one protocol, three implementations.

A session runner drives a backend trial by trial::

    backend.open(session_info, stimulus_set)   # presenter preloads every image
    record = backend.run_trial(trial)          # -> TrialRecord
    backend.close()

Implementations: the live rig (PsychoPy presenter + acquisition over ZeroMQ), the
simulated monkey (``sim.backend.SimBackend``) and the replay of a recorded day.

This module is the public interface: ``sim`` may import it (it implements it); it
imports nothing from the rest of ``rig``. Times are seconds; the presenter clock is the
one PsychoPy flips are stamped with, the acquisition clock the one spikes and sync
pulses are recorded on.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

# The RSVP defaults (DESIGN section 2), defined once: the config, the session, the presenter
# and its client all take them from here.
STIM_ON_MS = 100.0           # image on, ms
MASK_MS = 100.0              # grey mask after each image, ms
FIXATION_ACQUIRE_MS = 300.0  # gaze inside the window this long before the RSVP starts, ms
INTER_TRIAL_MS = 500.0       # blank between trials, ms
IMAGE_SIZE_DEG = 8.0         # image width on screen, degrees of visual angle
COUNT_WINDOW_MS = (70.0, 170.0)   # spikes are counted in [onset + 70 ms, onset + 170 ms) (config [window])
FIXATION_WINDOW_DEG = 2.0    # fixation window radius, degrees


class InvalidReason(enum.IntEnum):
    """Why a presentation is not valid: ``/presentations/invalid_reason`` (uint8), the NWB
    presentations table and the live monitor. The first that applies is stored."""

    VALID = 0
    NOT_SHOWN = 1            # the trial ended before it (presenter abort, not a fixation break)
    FIXATION_BREAK = 2       # fixation broke before or during it
    ACQUISITION_GAP = 3      # the acquisition stream was silent: nothing to count
    CLOCK_NOT_ALIGNED = 4    # no unique presenter -> acquisition clock alignment yet
    NO_SYNC_PULSE = 5        # shown, clock aligned, but its sync pulse never arrived
    DROPPED_FRAME = 6        # a frame was dropped while it was up
    NO_ONSET_TIME = 7        # no onset time on the acquisition clock for another reason


INVALID_REASON_TEXT = {
    InvalidReason.VALID: "valid", InvalidReason.NOT_SHOWN: "not shown (trial ended before it)",
    InvalidReason.FIXATION_BREAK: "fixation break", InvalidReason.ACQUISITION_GAP: "acquisition gap (stream silent)",
    InvalidReason.CLOCK_NOT_ALIGNED: "clock not aligned", InvalidReason.NO_SYNC_PULSE: "no sync pulse",
    InvalidReason.DROPPED_FRAME: "dropped frame", InvalidReason.NO_ONSET_TIME: "no onset time",
}


def invalid_reason_legend() -> str:
    """``"0 valid, 1 not shown ..., 7 no onset time"``: the enum as one line (dataset and NWB descriptions)."""
    return ", ".join(f"{int(k)} {v}" for k, v in INVALID_REASON_TEXT.items())


class Fixation(enum.IntEnum):
    """``/presentations/fixation`` (uint8): was fixation monitored, and did it hold."""

    NOT_MONITORED = 0        # no eye tracker: unknown, never stored as held
    HELD = 1
    BROKEN = 2


@dataclass(frozen=True)
class SessionInfo:
    """What a backend needs to know about the session before trial 1."""

    session_id: str
    day: int
    stim_on_ms: float = STIM_ON_MS
    mask_ms: float = MASK_MS
    fixation_acquire_ms: float = FIXATION_ACQUIRE_MS
    inter_trial_ms: float = INTER_TRIAL_MS
    image_size_deg: float = IMAGE_SIZE_DEG
    n_channels: int = 0          # channels the acquisition system records (0: backend decides)
    seed: int = 0


@dataclass(frozen=True)
class Trial:
    """One fixation trial: K RSVP presentations in order."""

    trial_index: int                  # attempt number within the session (0, 1, 2, ...)
    stim_indices: tuple[int, ...]     # indices into the session's stimulus set
    planned_indices: tuple[int, ...]  # indices into the planned presentation list


@dataclass
class TrialRecord:
    """What one trial produced.

    ``completed`` presentations (the first ``completed`` of the trial) were shown in full
    with fixation held; the rest were not shown or were cut short and go back in the queue.
    """

    trial_index: int
    completed: int
    fixation_ok: bool                       # False if fixation broke during the trial
    onset_presenter_s: np.ndarray           # (completed,) stim_on flip time, presenter clock, s
    frames_on: np.ndarray                   # (completed,) frames the image was up
    frames_mask: np.ndarray                 # (completed,) frames the mask was up
    dropped_frame: np.ndarray               # (completed,) bool: a frame was dropped
    sync_presenter_s: np.ndarray            # (n_sync,) sync pulses as the presenter stamped them, s
    sync_acq_s: np.ndarray                  # (n_sync,) the same pulses on the acquisition clock, s
    spike_times_s: np.ndarray               # (n_spikes,) acquisition clock, s
    spike_channels: np.ndarray              # (n_spikes,) channel index, int
    start_acq_s: float = float("nan")       # trial start, acquisition clock, s
    end_acq_s: float = float("nan")         # trial end, acquisition clock, s
    acquisition_ok: bool = True             # False: a gap in the acquisition stream; invalidate all
    note: str = ""
    end_presenter_s: float = float("nan")   # trial end (next trial may start), presenter clock, s
    # eye trace and rewards (empty when the backend has no eye tracker / reward)
    eye_presenter_s: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (n_eye,) sample times, presenter clock, s
    eye_x_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))         # (n_eye,) gaze x, deg from centre (right +)
    eye_y_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))         # (n_eye,) gaze y, deg from centre (up +)
    eye_pupil: np.ndarray = field(default_factory=lambda: np.zeros(0))         # (n_eye,) pupil, tracker units (NaN: none)
    reward_presenter_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n_rew,) reward times, presenter clock, s
    reward_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))           # (n_rew,) reward durations, ms
    reward_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # 0 trial, 1 manual, 2 calibration
    clock_segment: str = ""                 # presenter session (process) whose clock stamped the flips
    pulse_ok: np.ndarray | None = None      # (completed,) bool: its sync pulse arrived (None: all did)
    clock_aligned: bool = True              # False: no presenter -> acquisition alignment for this trial yet
    fixation_monitored: bool = True         # False: no eye tracker; fixation_ok then only means "not aborted"

    def __post_init__(self) -> None:
        self.onset_presenter_s = np.asarray(self.onset_presenter_s, dtype=np.float64)
        self.frames_on = np.asarray(self.frames_on, dtype=np.int32)
        self.frames_mask = np.asarray(self.frames_mask, dtype=np.int32)
        self.dropped_frame = np.asarray(self.dropped_frame, dtype=bool)
        self.sync_presenter_s = np.asarray(self.sync_presenter_s, dtype=np.float64)
        self.sync_acq_s = np.asarray(self.sync_acq_s, dtype=np.float64)
        self.spike_times_s = np.asarray(self.spike_times_s, dtype=np.float64)
        self.spike_channels = np.asarray(self.spike_channels, dtype=np.int32)
        for name in ("eye_presenter_s", "eye_x_deg", "eye_y_deg", "eye_pupil", "reward_presenter_s", "reward_ms"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        self.reward_kind = np.asarray(self.reward_kind, dtype=np.int8).reshape(-1)
        if not len(self.eye_presenter_s) == len(self.eye_x_deg) == len(self.eye_y_deg) == len(self.eye_pupil):
            raise ValueError("TrialRecord.eye_* arrays differ in length")
        if not len(self.reward_presenter_s) == len(self.reward_ms) == len(self.reward_kind):
            raise ValueError("TrialRecord.reward_* arrays differ in length")
        self.pulse_ok = (np.ones(self.completed, bool) if self.pulse_ok is None
                         else np.asarray(self.pulse_ok, dtype=bool)[: self.completed])
        for name in ("onset_presenter_s", "frames_on", "frames_mask", "dropped_frame"):
            if len(getattr(self, name)) != self.completed:
                raise ValueError(f"TrialRecord.{name} has {len(getattr(self, name))} entries, expected completed={self.completed}")
        if len(self.sync_presenter_s) != len(self.sync_acq_s):
            raise ValueError("TrialRecord.sync_presenter_s and sync_acq_s differ in length")
        if len(self.spike_times_s) != len(self.spike_channels):
            raise ValueError("TrialRecord.spike_times_s and spike_channels differ in length")


@dataclass
class ClockState:
    """The presenter->acquisition clock fits after a trial, as the session runner computed them (with
    the session's limits): the fit of the trial's own segment, and every segment's summary in
    first-seen order. The day file stores them in each commit (``/sync`` attrs ``fit_*``, root
    attr ``clock_segments``); the store never refits."""

    offset_s: float                 # acq = offset_s + (1 + drift) * presenter, s
    drift: float                    # 1 (fraction: 1e-6 = 1 ppm)
    residual_sd_s: float            # s
    n_pairs: int
    segments: list[dict] = field(default_factory=list)   # per segment: label, offset_s, drift_ppm, residual_sd_s, ...


@dataclass
class TrialRows:
    """What the session runner derived from one TrialRecord, ready to store (journal, then day file)."""

    trial: Trial
    record: TrialRecord
    onset_acq_s: np.ndarray       # (K,) NaN where not shown
    counts: np.ndarray            # (K, n_channels) spikes in the window; NaN where not shown
    valid: np.ndarray             # (K,) bool
    eye_acq_s: np.ndarray | None = None      # (n_eye,) record.eye_presenter_s on the acquisition clock, s
    reward_acq_s: np.ndarray | None = None   # (n_rew,) record.reward_presenter_s on the acquisition clock, s
    invalid_reason: np.ndarray | None = None  # (K,) uint8 InvalidReason (None: derived from valid and the record)
    clock: ClockState | None = None           # the clock fits after this trial (None: the store keeps what it has)


def invalid_reasons(record: TrialRecord, k: int, valid: np.ndarray) -> np.ndarray:
    """(k,) uint8 :class:`InvalidReason` of a trial's presentations (0 where ``valid``);
    the first cause that applies, in the order of the enum."""
    R = InvalidReason
    valid = np.asarray(valid, bool)
    c = record.completed
    out = np.zeros(k, np.uint8)
    shown = np.arange(k) < c
    out[~shown] = R.NOT_SHOWN if record.fixation_ok else R.FIXATION_BREAK
    pulse, dropped = np.zeros(k, bool), np.zeros(k, bool)
    pulse[:c], dropped[:c] = record.pulse_ok, record.dropped_frame
    rest = shown & ~valid
    for mask, code in ((np.full(k, not record.acquisition_ok), R.ACQUISITION_GAP),
                       (~pulse & (not record.clock_aligned), R.CLOCK_NOT_ALIGNED), (~pulse, R.NO_SYNC_PULSE),
                       (dropped, R.DROPPED_FRAME), (np.ones(k, bool), R.NO_ONSET_TIME)):
        m = rest & mask
        out[m] = code
        rest &= ~m
    out[valid] = R.VALID
    return out


def fixation_states(record: TrialRecord, k: int) -> np.ndarray:
    """(k,) uint8 :class:`Fixation` of a trial's presentations: 0 for all when not monitored;
    else held for those shown, broken for those the trial did not reach."""
    if not record.fixation_monitored:
        return np.zeros(k, np.uint8)
    return np.where(np.arange(k) < record.completed, int(Fixation.HELD), int(Fixation.BROKEN)).astype(np.uint8)


@runtime_checkable
class Backend(Protocol):
    """Anything that can show a stimulus set to a subject and record the answer."""

    name: str

    def open(self, session: SessionInfo, stimuli) -> None:
        """Prepare the session; ``stimuli`` is a ``stimuli.stimset.StimulusSet``."""

    def run_trial(self, trial: Trial) -> TrialRecord:
        """Run one fixation trial and return what happened."""

    def close(self) -> None:
        """Release every resource; safe to call twice."""


@dataclass
class BackendInfo:
    """Facts a backend reports about itself, stored in the day file."""

    name: str
    n_channels: int
    channel_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- eye and reward
@dataclass
class GazeSamples:
    """Gaze samples in time order: times on the source's clock (s), position in degrees of
    visual angle from the screen centre (x right, y up), pupil in the tracker's units (NaN
    if none). ``raw_x``/``raw_y`` are the tracker's own coordinates before calibration."""

    t_s: np.ndarray
    x_deg: np.ndarray
    y_deg: np.ndarray
    pupil: np.ndarray
    raw_x: np.ndarray
    raw_y: np.ndarray

    def __post_init__(self) -> None:
        for name in ("t_s", "x_deg", "y_deg", "pupil", "raw_x", "raw_y"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        n = len(self.t_s)
        for name in ("x_deg", "y_deg", "pupil", "raw_x", "raw_y"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"GazeSamples.{name} has {len(getattr(self, name))} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.t_s)

    @classmethod
    def empty(cls) -> "GazeSamples":
        z = np.zeros(0)
        return cls(z, z, z, z, z, z)

    @classmethod
    def concat(cls, parts: list["GazeSamples"]) -> "GazeSamples":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, n) for p in parts])
                     for n in ("t_s", "x_deg", "y_deg", "pupil", "raw_x", "raw_y")))


@runtime_checkable
class EyeSource(Protocol):
    """A gaze stream (LSL inlet, EyeLink, the simulated monkey's eye).

    ``clock`` names the clock of the sample times (e.g. ``"lsl"``: ``pylsl.local_clock``);
    ``now_s()`` reads that clock, so a consumer can map sample times onto its own clock.
    """

    name: str
    clock: str

    def open(self) -> None:
        """Connect and start streaming; raises ``rig.errors.UserError`` naming the fix if it cannot."""

    def read(self) -> GazeSamples:
        """Every sample that arrived since the last call (never blocks)."""

    def now_s(self) -> float:
        """The current time on the samples' clock, s."""

    def set_calibration(self, mapping) -> None:
        """Map raw tracker coordinates to degrees with ``mapping(raw_xy (n, 2)) -> deg (n, 2)``; None: identity."""

    def close(self) -> None:
        """Stop streaming; safe to call twice."""


@runtime_checkable
class Reward(Protocol):
    """A reward output (juice pump / solenoid): ``give`` never blocks the frame loop."""

    name: str

    def give(self, duration_ms: float) -> None:
        """Open the valve for ``duration_ms`` milliseconds (returns at once)."""

    def close(self) -> None:
        """Close the valve and release the device; safe to call twice."""
# --------------------------------------------------------------------------- acquisition
@dataclass
class AcqEvents:
    """Events an acquisition system delivered since the last call (acquisition clock, s).

    ``spike_*``: one entry per spike (channel index into the source's channel list);
    ``ttl_*``: one entry per TTL edge (line number, state True = rising edge).
    """

    spike_times_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spike_channels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    ttl_times_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ttl_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    ttl_states: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    latest_s: float = float("nan")      # the latest acquisition time any event so far carried, s


@runtime_checkable
class SpikeSource(Protocol):
    """A live acquisition system: spikes and sync TTLs on its own clock.

    The clock is the system's sample counter divided by ``sampling_rate_hz`` (Open
    Ephys), or its stream clock plus the clock correction (LSL), in seconds.
    """

    name: str
    n_channels: int
    channel_names: list[str]
    sampling_rate_hz: float

    def open(self) -> None:
        """Connect (subscribe, resolve streams); raises a one-line error if it cannot."""

    def start_recording(self, name: str) -> None:
        """Ask the acquisition system to record to disk under ``name`` (no-op if it cannot)."""

    def message(self, text: str) -> None:
        """Write one text event into the acquisition system's recording (no-op if it cannot)."""

    def events_since(self, timeout_s: float = 0.0) -> AcqEvents:
        """Every event received since the last call, waiting up to ``timeout_s`` for the first."""

    def stop_recording(self) -> None:
        """Stop the acquisition system's recording (no-op if it cannot)."""

    def close(self) -> None:
        """Disconnect; safe to call twice."""

    def describe(self) -> dict:
        """Provenance for the day file: system, version, stream names, sampling rate."""

