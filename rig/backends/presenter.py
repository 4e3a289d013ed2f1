"""A ``rig.backend.Backend`` that shows trials through the real PsychoPy presenter.

Onsets, frame counts and dropped frames come from the presenter's flips (its clock).
Spikes, the sync pulses as the acquisition system saw them, and fixation breaks come from
a pluggable :class:`SpikeSource`: on the rig an acquisition bridge plus eye tracker
(roadmap), in tests :class:`SimSpikeSource`, the in-process simulated monkey responding
to the presenter's real flip times.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from rig.backend import FIXATION_WINDOW_DEG, BackendInfo, SessionInfo, Trial, TrialRecord
from rig.link.client import PresenterClient, TrialResult
from sim.clocks import photodiode_jitter


class SpikeSource(Protocol):
    """Where spikes, acquisition-clock sync pulses and fixation come from."""

    n_channels: int

    def open(self, session: SessionInfo, stimuli) -> None:
        """Prepare for the session's stimulus set."""

    def fixation_break_s(self, trial: Trial, duration_s: float) -> float | None:
        """Seconds after the trial starts at which fixation breaks; None if it holds."""

    def record(self, trial: Trial, shown: TrialResult, end_presenter_s: float) -> dict:
        """Spikes and sync for the presentations in ``shown`` (presenter-clock flips).

        Returns ``spike_times_s`` (acquisition clock, s), ``spike_channels``, ``sync_acq_s``
        (one per shown onset), ``start_acq_s`` and ``end_acq_s``.
        """

    def close(self) -> None:
        """Release resources."""


RESTART_GAP_S = 1.0   # simulated acquisition time between the last trial before a presenter restart and the next


class SimSpikeSource:
    """The simulated monkey (``sim.monkey.SimulatedMonkey``) watching the real presenter.

    The monkey sees each image from its stim_on flip until the flip that replaced it; the
    acquisition clock is the monkey's ``clock`` map of the presenter clock, and the
    photodiode edge arrives with the sim's sub-millisecond jitter.
    """

    def __init__(self, monkey, seed: int = 0):
        self.monkey = monkey
        self.n_channels = int(monkey.n_channels)
        self.seed = int(seed)
        self._session: SessionInfo | None = None
        self._shift_s = 0.0                 # added to the monkey's clock map after a presenter restart
        self._last: tuple[float, float] | None = None    # (presenter, acquisition) time of the last trial's end

    def _rng(self, trial: Trial, stream: int) -> np.random.Generator:
        s = self._session
        if s is None:
            raise RuntimeError("SimSpikeSource used before open()")
        return np.random.default_rng([int(self.monkey.params.seed) & 0xFFFFFFFF, int(s.seed) & 0xFFFFFFFF,
                                      int(s.day), int(trial.trial_index), stream, self.seed])

    def open(self, session: SessionInfo, stimuli) -> None:
        self._session = session
        self.monkey.set_stimuli(np.asarray(getattr(stimuli, "pixels", stimuli)))

    def fixation_break_s(self, trial: Trial, duration_s: float) -> float | None:
        return self.monkey.fixation_break_time(0.0, duration_s, self._rng(trial, 1))

    def record(self, trial: Trial, shown: TrialResult, end_presenter_s: float) -> dict:
        rng = self._rng(trial, 2)
        n = shown.shown
        onsets = shown.onset_s[:n]
        # each image stays up until the next flip after its last image frame (mask or abort blank)
        off = shown.image_off_s()[:n]
        clock = self.monkey.clock
        first_p = float(shown.frame_time_s[0])
        if self._last is not None and first_p < self._last[0]:
            # a restarted presenter's clock starts again: the acquisition clock runs on (one trial
            # gap later), as a real acquisition system's does
            self._shift_s = self._last[1] + RESTART_GAP_S - float(clock.to_acq(first_p))
        light_acq = clock.to_acq(onsets + photodiode_jitter(rng, n)) + self._shift_s
        start_acq = float(clock.to_acq(first_p)) + self._shift_s
        end_acq = float(clock.to_acq(end_presenter_s)) + self._shift_s
        self._last = (float(end_presenter_s), end_acq)
        times, chans = self.monkey.spikes_for(np.asarray(trial.stim_indices[:n]), light_acq,
                                              (off - onsets) * clock.slope, rng,
                                              t_start_s=start_acq, t_stop_s=end_acq)
        return {"spike_times_s": times, "spike_channels": chans, "sync_acq_s": light_acq,
                "start_acq_s": start_acq, "end_acq_s": end_acq}

    def close(self) -> None:
        self._session = None


def eye_and_reward_fields(res: TrialResult) -> dict:
    """The presenter's eye trace (presenter clock, degrees) and rewards as ``TrialRecord`` fields
    (empty when the presenter has no eye tracker); for every backend that drives the presenter."""
    return {"eye_presenter_s": res.array("eye_t_s"), "eye_x_deg": res.array("eye_x_deg"),
            "eye_y_deg": res.array("eye_y_deg"), "eye_pupil": res.array("eye_pupil"),
            "reward_presenter_s": res.array("reward_t_s"), "reward_ms": res.array("reward_ms"),
            "reward_kind": res.array("reward_kind", np.int8)}


def fixation_monitored(res: TrialResult, controller_eye=None) -> bool:
    """Whether anything watched the eye during this trial: an eye tracker in the presenter
    (its reply names it) or a controller-side break decider. Without one fixation is unknown."""
    return controller_eye is not None or str(res.raw.get("eye", "none")) != "none"


def open_presenter(client: PresenterClient, session: SessionInfo, stimuli, *, wait_s: float,
                   fixation_window_deg: float, configure_extra: dict) -> dict:
    """Greet (or wait for) the presenter, configure the session's RSVP, send and verify every
    image and preload it; returns the presenter's setup (frame counts, preload report)."""
    client.session = session.session_id
    if client.peer is None:
        client.wait_for_presenter(wait_s)
    else:
        client.hello()
    setup = client.configure(stim_on_ms=session.stim_on_ms, mask_ms=session.mask_ms,
                             fixation_ms=session.fixation_acquire_ms, image_size_deg=session.image_size_deg,
                             fixation_window_deg=fixation_window_deg, **configure_extra)
    setup["preload"] = client.load_stimuli(stimuli.pixels, stimuli.ids)
    return setup


def presenter_attrs(client: PresenterClient) -> dict:
    """Day-file attributes naming the presenter that connected (after ``open_presenter``)."""
    return {"presenter_id": client.peer.decode(errors="replace") if client.peer else "",
            "presenter_curve_key": client.presenter_key or "none (loopback, no CURVE)"}


class PresenterBackend:
    """Drives a connected presenter (``PresenterClient``) and a :class:`SpikeSource`."""

    name = "presenter"

    def __init__(self, client: PresenterClient, spikes: SpikeSource, *, wait_for_presenter_s: float = 60.0,
                 frame_tolerance: float = 0.1, fixation_window_deg: float = FIXATION_WINDOW_DEG, reward_ms: float | None = None,
                 calibration: dict | None = None):
        self.client = client
        self.spikes = spikes
        self.wait_s = wait_for_presenter_s
        self.fixation_window_deg = fixation_window_deg
        self.configure_extra: dict[str, Any] = {} if reward_ms is None else {"reward_ms": reward_ms}
        if calibration:                     # the eye's raw -> degrees map (rig.sources.calibration), applied by the presenter
            self.configure_extra["calibration"] = calibration
        self._session: SessionInfo | None = None
        self.setup: dict = {}

    def open(self, session: SessionInfo, stimuli) -> None:
        """Configure the presenter, send and verify every image, preload textures."""
        if session.n_channels not in (0, self.spikes.n_channels):
            raise ValueError(f"session asks for {session.n_channels} channels but the spike source records "
                             f"{self.spikes.n_channels}; leave SessionInfo.n_channels at 0 or match it")
        self.setup = open_presenter(self.client, session, stimuli, wait_s=self.wait_s,
                                    fixation_window_deg=self.fixation_window_deg, configure_extra=self.configure_extra)
        self.spikes.open(session, stimuli)
        self._session = session

    def session_attrs(self) -> dict:
        """Day-file attributes naming the presenter that connected (after ``open``)."""
        return presenter_attrs(self.client)

    def run_trial(self, trial: Trial) -> TrialRecord:
        if self._session is None:
            raise RuntimeError("PresenterBackend.run_trial called before open(session, stimuli)")
        s, c, f = self._session, self.client, self.client.frames
        k = len(trial.stim_indices)
        duration_s = (f["n_fix"] + k * (f["n_on"] + f["n_mask"])) / f["refresh_hz"]
        eye_in_presenter = self.client.presenter_info.get("eye", "none") != "none"
        t_break = None if eye_in_presenter else self.spikes.fixation_break_s(trial, duration_s)
        seq = c.start_trial(trial.trial_index, trial.stim_indices)
        res = c.finish_trial(seq, k, abort_after_s=t_break)
        end_p = float(res.frame_time_s[-1]) + s.inter_trial_ms / 1000.0
        rec = self.spikes.record(trial, res, end_p)
        n = res.completed
        note = []
        if res.aborted:
            note.append(f"aborted after {n} presentations: {res.reason}")
        if res.dropped[:n].any():
            note.append(f"dropped frame in presentations {np.flatnonzero(res.dropped[:n]).tolist()}")
        c.pump(s.inter_trial_ms / 1000.0)              # inter-trial interval, heartbeats flowing
        return TrialRecord(trial_index=trial.trial_index, completed=n, fixation_ok=not res.aborted,
                           onset_presenter_s=res.onset_s[:n], frames_on=res.frames_on[:n],
                           frames_mask=res.frames_mask[:n], dropped_frame=res.dropped[:n],
                           sync_presenter_s=res.onset_s[:res.shown], sync_acq_s=rec["sync_acq_s"],
                           spike_times_s=rec["spike_times_s"], spike_channels=rec["spike_channels"],
                           start_acq_s=rec["start_acq_s"], end_acq_s=rec["end_acq_s"], note="; ".join(note),
                           end_presenter_s=end_p, **eye_and_reward_fields(res),
                           fixation_monitored=fixation_monitored(res, self.spikes if hasattr(self.spikes, "fixation_break_s") else None),
                           clock_segment=c.peer.decode(errors="replace") if c.peer else "")  # a restarted presenter: new clock

    def close(self) -> None:
        """Stop the spike source; the presenter stays up, blank, for the next session."""
        if self._session is not None:
            self.spikes.close()
        self._session = None

    def info(self) -> BackendInfo:
        p = self.client.presenter_info
        return BackendInfo(name=self.name, n_channels=self.spikes.n_channels,
                           extra={"presenter": p.get("presenter"), "refresh_hz": p.get("refresh_hz"),
                                  "paced": p.get("paced"), "window_px": p.get("window_px"),
                                  "frames": {k: v for k, v in self.setup.items() if k != "preload"},
                                  "time": time.time()})
