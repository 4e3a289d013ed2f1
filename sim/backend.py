"""In-process simulated backend: ``rig.backend.Backend`` on a :class:`SimulatedMonkey`.

Simulated time, no sleeping. A trial on the presenter clock (seconds):

    t0 ........ fixation acquired (t0 + fixation_acquire_ms) -> first stimulus flip
    K x [frames_on image, frames_mask grey]  (frame-locked at ``refresh_hz``)
    trial end (last mask off, or the fixation break) + inter_trial_ms -> next trial's t0

Each stimulus flip sends a sync pulse: the presenter stamps the flip time, the acquisition
system records the photodiode edge (flip + jitter < 0.5 ms) on its own clock; the monkey's
response is locked to that true onset. With probability ``fixation_break_prob`` fixation
breaks at a time uniform over [t0, last mask off); only presentations whose image and mask
both ended before the break count as completed. Spikes cover [t0, next trial's t0) on the
acquisition clock, so consecutive trials tile the recording with no gap or overlap.
Randomness per trial comes from (seed, session seed, day, trial_index): deterministic.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rig.backend import BackendInfo, SessionInfo, Trial, TrialRecord
from sim.clocks import FrameClock, photodiode_jitter
from sim.monkey import SimulatedMonkey

if TYPE_CHECKING:
    from sim.gaze import GazeModel


class SimBackend:
    """The simulated monkey behind the backend interface (DESIGN section 4)."""

    name = "sim"

    def __init__(self, monkey: SimulatedMonkey, refresh_hz: float = 60.0, start_s: float = 10.0,
                 gaze_hz: float = 0.0) -> None:
        """``refresh_hz``: simulated display refresh (Hz); ``start_s``: presenter time of the
        first trial (s) -- pass a later time when resuming a day to keep clocks increasing;
        ``gaze_hz`` > 0: also record the simulated eye (``sim.gaze``) at that rate, with the
        fixation break as a saccade away (0: no eye trace, as before)."""
        if not isinstance(monkey, SimulatedMonkey):
            raise TypeError(f"SimBackend needs a sim.monkey.SimulatedMonkey; got {type(monkey).__name__}")
        self.monkey = monkey
        self.frames = FrameClock(refresh_hz)
        self.start_s = float(start_s)
        self._session: SessionInfo | None = None
        self._rates: np.ndarray | None = None
        self._t = self.start_s
        self.gaze_hz = float(gaze_hz)
        self._gaze: GazeModel | None = None

    # -- Backend protocol ---------------------------------------------------------------
    def open(self, session: SessionInfo, stimuli) -> None:
        """Compute every stimulus's true rates (batched) and reset simulated time to ``start_s``."""
        if session.n_channels not in (0, self.monkey.n_channels):
            raise ValueError(f"session asks for {session.n_channels} channels but the simulated monkey has "
                             f"{self.monkey.n_channels}; set sim.n_channels = {session.n_channels} or leave "
                             "the session's n_channels at 0")
        self.frames_on = self.frames.frames(session.stim_on_ms, "stim_on_ms")
        self.frames_mask = self.frames.frames(session.mask_ms, "mask_ms")
        pixels = getattr(stimuli, "pixels", stimuli)
        self._rates = self.monkey.set_stimuli(np.asarray(pixels))
        self._session = session
        self._t = self.start_s

    def run_trial(self, trial: Trial) -> TrialRecord:
        if self._session is None or self._rates is None:
            raise RuntimeError("SimBackend.run_trial called before open(session, stimuli)")
        s, m = self._session, self.monkey
        idx = np.asarray(trial.stim_indices, dtype=np.int64)
        if idx.ndim != 1 or len(idx) == 0:
            raise ValueError(f"trial {trial.trial_index} has no stimuli")
        if np.any((idx < 0) | (idx >= len(self._rates))):
            raise ValueError(f"trial {trial.trial_index} stim_indices {idx.tolist()} outside the "
                             f"{len(self._rates)} stimuli given to open()")
        rng = np.random.default_rng([int(m.params.seed) & 0xFFFFFFFF, int(s.seed) & 0xFFFFFFFF,
                                     int(s.day), int(trial.trial_index)])
        frame = self.frames.frame_s
        slot_s = (self.frames_on + self.frames_mask) * frame
        t0 = self._t
        first = self.frames.next_flip(t0 + s.fixation_acquire_ms / 1000.0)
        onsets = first + np.arange(len(idx)) * slot_s          # flip stamps, presenter clock
        slots_end = onsets + slot_s
        t_break = m.fixation_break_time(t0, float(slots_end[-1]), rng)
        if t_break is None:
            completed, t_end, shown = len(idx), float(slots_end[-1]), len(idx)
        else:
            completed = int(np.sum(slots_end <= t_break))
            shown = int(np.sum(onsets < t_break))               # flips that happened before the break
            t_end = t_break
        on_s = np.minimum(self.frames_on * frame, t_end - onsets[:shown])  # the image vanishes at a break
        t_next = t_end + s.inter_trial_ms / 1000.0

        light_p = onsets[:shown] + photodiode_jitter(rng, shown)   # when the light really changed
        light_acq = m.clock.to_acq(light_p)
        t0_acq, t_next_acq = float(m.clock.to_acq(t0)), float(m.clock.to_acq(t_next))
        times, chans = m.spikes_for(idx[:shown], light_acq, on_s * m.clock.slope, rng,
                                    t_start_s=t0_acq, t_stop_s=t_next_acq)
        self._t = t_next
        eye = self._eye_trace(t0, t_end, t_break, trial.trial_index)
        return TrialRecord(
            trial_index=trial.trial_index, completed=completed, fixation_ok=t_break is None,
            onset_presenter_s=onsets[:completed],
            frames_on=np.full(completed, self.frames_on), frames_mask=np.full(completed, self.frames_mask),
            dropped_frame=np.zeros(completed, dtype=bool),
            sync_presenter_s=onsets[:shown], sync_acq_s=light_acq,
            spike_times_s=times, spike_channels=chans,
            start_acq_s=t0_acq, end_acq_s=t_next_acq, end_presenter_s=float(t_next),
            note="" if t_break is None else f"fixation broke at presenter t={t_break:.4f} s", **eye,
        )

    def _eye_trace(self, t0: float, t_end: float, t_break: float | None, trial_index: int) -> dict:
        """The simulated eye from the trial start to its end (presenter clock), if ``gaze_hz`` > 0."""
        if self.gaze_hz <= 0:
            return {}
        from sim.gaze import GazeModel, GazeParams

        if self._gaze is None:
            self._gaze = GazeModel(GazeParams(rate_hz=self.gaze_hz, seed=int(self.monkey.params.seed)))
        if t_break is not None:
            self._gaze.add_break(t_break)
        t = t0 + np.arange(int(np.ceil((t_end - t0) * self.gaze_hz)) + 1) / self.gaze_hz
        g = self._gaze.sample(t)
        return {"eye_presenter_s": t, "eye_x_deg": g[:, 0], "eye_y_deg": g[:, 1], "eye_pupil": g[:, 2]}

    def close(self) -> None:
        self._session = None
        self._rates = None

    # -- extras -------------------------------------------------------------------------
    def info(self) -> BackendInfo:
        """What this backend is, for the day file."""
        m = self.monkey
        return BackendInfo(name=self.name, n_channels=m.n_channels,
                           channel_names=[f"sim{c:03d}" for c in range(m.n_channels)],
                           extra={**m.describe(), "refresh_hz": self.frames.refresh_hz})

    @property
    def true_rates_of_session(self) -> np.ndarray:
        """True rates (n_stimuli, C) Hz of the open session's stimuli. Evaluation only."""
        if self._rates is None:
            raise RuntimeError("no session is open")
        return self._rates
