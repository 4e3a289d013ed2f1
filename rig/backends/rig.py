"""The live rig (``--backend rig``): the PsychoPy presenter (with its eye tracker and reward,
``[eye]`` / ``[reward]``, read next to its flips) + a :class:`rig.backend.SpikeSource`.

Per trial: the presenter shows it and reports its flips (presenter clock); the spike
source delivers spikes and sync TTLs (acquisition clock). Each stimulus onset's pulse is
found on the acquisition clock (``rig.session.clock.match_pulses``, per presenter
session: a restarted presenter is a new clock segment); an onset whose pulse did not
arrive (a photodiode miss, or a gap in a stream that has no sequence numbers) makes its
presentation invalid, and the runner re-queues it. One text event per trial goes to the
acquisition system's recording (Open Ephys ``/api/message``) so its file can be joined
to the day file offline.

Fixation is enforced by the presenter process when it has an eye tracker (``eye.source``);
its eye trace and rewards come back with every trial and go into the day file. The
optional ``eye`` slot (an object with ``fixation_break_s(trial, duration_s)``) can instead
decide breaks on the controller (tests, scripted breaks); with neither, fixation is not
checked and the trial's ``note`` says so once per session.
"""
from __future__ import annotations

import time
import uuid

import numpy as np

from rig.backend import FIXATION_WINDOW_DEG, AcqEvents, BackendInfo, SessionInfo, SpikeSource, Trial, TrialRecord
from rig.backends.presenter import eye_and_reward_fields, fixation_monitored, open_presenter, presenter_attrs
from rig.errors import UserError
from rig.link.client import PresenterClient
from rig.session.align import PulseAligner
from rig.session.clock import MIN_DRIFT_SPAN_S
from rig.sources.clockzero import ClockZero


class RigBackend:
    """Drives a connected presenter and a live spike source (Open Ephys, LSL)."""

    name = "rig"
    reads_clock_zero = True       # the acquisition clock's zero is read from the stream (session_attrs)
    ZERO_PROBE_S = 1.0            # how long the stream is read at connection and at the end for it

    def __init__(self, client: PresenterClient, source: SpikeSource, *, eye=None, markers=None,
                 wait_for_presenter_s: float = 60.0, fixation_window_deg: float = FIXATION_WINDOW_DEG,
                 pulse_tolerance_s: float = 0.003, wait_s: float = 1.0, max_drift_ppm: float = 1000.0,
                 configure_extra: dict | None = None, min_drift_span_s: float = MIN_DRIFT_SPAN_S):
        self.client = client
        self.source = source
        self.eye = eye                    # optional controller-side break decider; None: the presenter's eye (if any)
        self.configure_extra = dict(configure_extra or {})   # reward_ms, calibration, image_scaling for the presenter
        self.markers = markers            # optional marker outlet (LSL) with push(text)
        self.wait_s = wait_for_presenter_s
        self.fixation_window_deg = fixation_window_deg
        self.tol = float(pulse_tolerance_s)
        self.acq_wait_s = float(wait_s)
        self.aligner = PulseAligner(self.tol, max_drift_ppm, min_drift_span_s)
        self.clock = self.aligner.clock
        self._session: SessionInfo | None = None
        self.setup: dict = {}
        self._spk_t: list[np.ndarray] = []
        self._spk_c: list[np.ndarray] = []
        self._run = f"run{uuid.uuid4().hex[:6]}"     # this controller run
        self.zero = ClockZero()
        self.stats = {"pulses_matched": 0, "pulses_missing": 0, "pulses_extra": 0, "trials_unaligned": 0}
        self.zero_probe_failed = ""          # why a closing clock-zero probe failed ("" if none did)

    # ------------------------------------------------------------------ session
    def session_attrs(self) -> dict:
        """Day-file attributes naming the presenter that connected and the acquisition
        clock's zero as read from the stream (after ``open``)."""
        return {**presenter_attrs(self.client), **self.zero.start_attrs(self._source_name())}

    def clock_zero_end_attrs(self) -> dict:
        """The acquisition clock's zero read again at the end (after ``close``), and the change."""
        return self.zero.end_attrs(self._source_name())

    def _source_name(self) -> str:
        return str(self.source.describe().get("system", getattr(self.source, "name", "the acquisition system")))

    def _probe_zero(self) -> None:
        """Read the stream for up to ``ZERO_PROBE_S`` (less once 200 events were timed)."""
        deadline = time.monotonic() + self.ZERO_PROBE_S
        n0 = self.zero.n_start + self.zero.n_end
        while time.monotonic() < deadline and self.zero.n_start + self.zero.n_end - n0 < 200:
            self._take(self.source.events_since(0.01))

    def open(self, session: SessionInfo, stimuli) -> None:
        if session.n_channels not in (0, self.source.n_channels):
            raise ValueError(f"session asks for {session.n_channels} channels but the spike source records "
                             f"{self.source.n_channels}; leave SessionInfo.n_channels at 0 or match it")
        self.source.open()
        self.setup = open_presenter(self.client, session, stimuli, wait_s=self.wait_s,
                                    fixation_window_deg=self.fixation_window_deg, configure_extra=self.configure_extra)
        self.source.start_recording(session.session_id)
        self._session = session
        self.zero.begin(_exact_zero(self.source))
        self._probe_zero()
        self.zero.running()

    def _take(self, ev: AcqEvents) -> None:
        self.zero.observe(ev.latest_s)
        if len(ev.spike_times_s):
            self._spk_t.append(ev.spike_times_s)
            self._spk_c.append(ev.spike_channels)
        rising = ev.ttl_times_s[ev.ttl_states] if len(ev.ttl_times_s) else ev.ttl_times_s
        self.aligner.add_pulses(rising)

    def _segment(self) -> str:
        """Clock segment: the presenter process, this controller run (a resumed day aligns
        afresh: the acquisition system may have restarted meanwhile) and the acquisition
        epoch (a restarted acquisition system starts its sample counter again)."""
        return self.aligner.label(self._base())

    def _base(self) -> str:
        """The presenter process and this controller run (the segment without its acquisition epoch)."""
        peer = self.client.peer
        return f"{peer.decode(errors='replace') if peer else ''}/{self._run}"

    def _wait_for_acquisition(self, label: str, last_flip_p: float, n_onsets: int) -> bool:
        """Pump events until the stream has passed the trial's last flip (or, before the
        first fit, holds enough pulses); False if it stayed silent for ``wait_s``."""
        deadline = time.monotonic() + self.acq_wait_s
        heard = False
        while True:
            ev = self.source.events_since(0.02)
            self._take(ev)
            heard = heard or bool(len(ev.spike_times_s) or len(ev.ttl_times_s))
            seg = self.clock.fitted(label)
            latest = ev.latest_s
            if seg is not None and np.isfinite(latest) and latest >= seg.to_acq(last_flip_p) + 0.05:
                return True
            if seg is None and heard and len(self.aligner.pulses) >= n_onsets and time.monotonic() > deadline - self.acq_wait_s / 2:
                return True
            if time.monotonic() >= deadline:
                return heard
            self.client.pump(0.0)

    def run_trial(self, trial: Trial) -> TrialRecord:
        if self._session is None:
            raise RuntimeError("RigBackend.run_trial called before open(session, stimuli)")
        s, c, f = self._session, self.client, self.client.frames
        k = len(trial.stim_indices)
        duration_s = (f["n_fix"] + k * (f["n_on"] + f["n_mask"])) / f["refresh_hz"]
        t_break = self.eye.fixation_break_s(trial, duration_s) if self.eye is not None else None
        self._take(self.source.events_since(0.0))       # pulses received before this trial's flips ...
        self.aligner.trial_starting(self._base())        # ... pair with none of its onsets (a lone first trial)
        seq = c.start_trial(trial.trial_index, trial.stim_indices)
        res = c.finish_trial(seq, k, abort_after_s=t_break)
        label = self._segment()
        end_p = float(res.frame_time_s[-1]) + s.inter_trial_ms / 1000.0
        text = (f"itloop session={s.session_id} day={s.day} trial={trial.trial_index} presenter={label} "
                f"stim={','.join(map(str, trial.stim_indices))} planned={','.join(map(str, trial.planned_indices))} "
                f"shown={res.shown}")
        note = []
        try:
            self.source.message(text)
        except UserError as exc:          # the control channel is best effort; the pulses decide validity
            note.append(f"acquisition message not delivered ({exc})")
            self.stats["messages_failed"] = self.stats.get("messages_failed", 0) + 1
        if self.markers is not None:
            self.markers.push(text)
        c.pump(s.inter_trial_ms / 1000.0)              # inter-trial interval, heartbeats flowing
        n_shown = res.shown
        onsets = res.onset_s[:n_shown]
        heard = self._wait_for_acquisition(label, float(res.frame_time_s[-1]), n_shown)
        al = self.aligner.align(self._base(), onsets, end_p)
        label, seg, got = al.label, al.segment, al.got
        note.extend(al.notes)
        self.stats["trials_unaligned"] += int(not al.aligned)
        self.stats["pulses_matched"] += int(got.sum())
        self.stats["pulses_missing"] += int((~got).sum())
        self.stats["pulses_extra"] += al.n_extra
        sync_p, sync_a = onsets[got], al.pulse_acq_s[got]
        end_acq = float(seg.to_acq(end_p)) if seg is not None else float("inf")
        start_acq = float(seg.to_acq(res.frame_time_s[0])) if seg is not None else float("nan")
        times, chans = self._spikes_before(end_acq)
        n = res.completed
        pulse_ok = got[:n]
        if not heard:
            note.append(f"acquisition stream silent for {self.acq_wait_s:g} s")
        if (~pulse_ok).any():
            note.append(f"no sync pulse for presentations {np.flatnonzero(~pulse_ok).tolist()} (invalid, re-queued)")
        if res.aborted:
            note.append(f"aborted after {n} presentations: {res.reason}")
        if res.dropped[:n].any():
            note.append(f"dropped frame in presentations {np.flatnonzero(res.dropped[:n]).tolist()}")
        return TrialRecord(trial_index=trial.trial_index, completed=n, fixation_ok=not res.aborted,
                           onset_presenter_s=res.onset_s[:n], frames_on=res.frames_on[:n],
                           frames_mask=res.frames_mask[:n], dropped_frame=res.dropped[:n],
                           sync_presenter_s=sync_p, sync_acq_s=sync_a, spike_times_s=times, spike_channels=chans,
                           start_acq_s=start_acq, end_acq_s=end_acq if np.isfinite(end_acq) else float("nan"),
                           acquisition_ok=heard, note="; ".join(note), end_presenter_s=end_p,
                           clock_segment=label, pulse_ok=pulse_ok, clock_aligned=al.aligned,
                           fixation_monitored=fixation_monitored(res, self.eye),
                           **eye_and_reward_fields(res))

    def _spikes_before(self, end_acq: float) -> tuple[np.ndarray, np.ndarray]:
        """Buffered spikes before ``end_acq`` (all of them if the clock is not aligned)."""
        if not self._spk_t:
            return np.zeros(0), np.zeros(0, np.int32)
        t, ch = np.concatenate(self._spk_t), np.concatenate(self._spk_c)
        order = np.argsort(t, kind="stable")
        t, ch = t[order], ch[order]
        cut = np.searchsorted(t, end_acq, "left")
        self._spk_t, self._spk_c = ([t[cut:]], [ch[cut:]]) if cut < len(t) else ([], [])
        return t[:cut], ch[:cut]

    def close(self) -> None:
        """Stop the acquisition recording; the presenter stays up, blank, for the next session."""
        if self._session is not None:
            self.zero.ending(_exact_zero(self.source))
            try:
                self._probe_zero()
            except (UserError, OSError, RuntimeError, ValueError) as exc:   # closing must not fail on a last read
                self.zero_probe_failed = repr(exc)
            self.source.close()
            if self.eye is not None:
                self.eye.close()
        self._session = None

    def info(self) -> BackendInfo:
        p = self.client.presenter_info
        return BackendInfo(name=self.name, n_channels=self.source.n_channels, channel_names=list(self.source.channel_names),
                           extra={"presenter": p.get("presenter"), "refresh_hz": p.get("refresh_hz"),
                                  "spike_source": self.source.describe(), "clock_segments": self.clock.summaries(),
                                  "stats": self._stats_report(), "eye_source": self.eye.describe() if self.eye else "none"})

    def _stats_report(self) -> dict[str, int | str]:
        """The pulse counters, and why a closing clock-zero probe failed if one did."""
        failed = {"zero_probe_failed": self.zero_probe_failed} if self.zero_probe_failed else {}
        return {**self.stats, **failed}


def _exact_zero(source) -> float | None:
    """The source's own exact clock zero (unix s), if it knows it (LSL), else None."""
    read = getattr(source, "clock_zero_unix_s", None)
    return float(read()) if callable(read) else None
