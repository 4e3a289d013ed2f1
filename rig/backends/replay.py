"""The replay backend (DESIGN section 4): a recorded day file served back trial by trial.

``ReplayBackend`` answers each trial with what the day file recorded for the trial of the
same index (onsets on the presenter clock, frames, fixation, sync pulses on both clocks,
raw spikes), as fast as the session runner asks. ``replay_day`` re-runs the whole
session into a new day file, so spike counts are recomputed from the raw spikes (in the
recorded or another count window) and the clock fit is redone. The source file is only
read; nothing in it is ever changed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rig.backend import BackendInfo, Fixation, InvalidReason, SessionInfo, Trial, TrialRecord
from rig.errors import UserError
from rig.session.runner import SessionLimits, run_session
from rig.session.schedule import PresentationQueue
from rig.store.dayfile import DayWriter
from rig.store.origin import Origin
from rig.store.reader import DayData, read_day

# what a replay says about its source (beside the root attribute replayed_from, the source's identifier)
_REPLAY_ATTRS = ("replayed_from_backend", "replayed_from_window_ms", "replayed_from_file")


class ReplayBackend:
    """Serve the committed trials of a recorded day back, in recorded order."""

    name = "replay"

    def __init__(self, day: DayData):
        self.day = day
        tr = day.trials
        self._row_of_trial = {int(t): i for i, t in enumerate(tr["trial_index"])}
        ends = {k: np.asarray(tr[f"{k}_end"], int) for k in ("presentations", "spikes", "sync")}
        self._starts = {k: np.r_[0, e[:-1]].astype(int) for k, e in ends.items()}
        self._ends = ends
        self._opened = False
        self._segments = day.sync_segment
        self._last_segment = ""     # the clock segment of the latest replayed trial that had pulses

    def info(self) -> BackendInfo:
        return BackendInfo(name=self.name, n_channels=self.day.n_channels, channel_names=list(self.day.channel_names),
                           extra={"replayed_from": str(self.day.path)})

    def open(self, session: SessionInfo, stimuli) -> None:
        """Refuse a stimulus set other than the recorded one (compared by sha1 of the pixels)."""
        ids, rec = list(stimuli.ids), list(self.day.stim_ids)
        if ids != rec:
            if len(ids) != len(rec):
                why = f"{len(ids)} stimuli were given, {len(rec)} were recorded"
            else:
                first = next(i for i, (a, b) in enumerate(zip(ids, rec)) if a != b)
                why = f"stimulus {first} differs (sha1 {ids[first][:12]} given, {rec[first][:12]} recorded)"
            raise ValueError(f"replay of {self.day.path}: the stimulus set is not the recorded one ({why}); "
                             "replay with the stimuli stored in the day file")
        if session.n_channels and session.n_channels != self.day.n_channels:
            raise ValueError(f"replay of {self.day.path}: the session expects {session.n_channels} channels, "
                             f"the recording has {self.day.n_channels}")
        self._opened = True

    def _span(self, key: str, row: int) -> slice:
        """Rows of table ``key`` (presentations, spikes, sync) that belong to trial row ``row``."""
        return slice(int(self._starts[key][row]), int(self._ends[key][row]))

    def run_trial(self, trial: Trial) -> TrialRecord:
        """The recorded trial with ``trial.trial_index``; it must show the same planned slots."""
        if not self._opened:
            raise RuntimeError("ReplayBackend.run_trial called before open()")
        d = self.day
        row = self._row_of_trial.get(int(trial.trial_index))
        if row is None:
            raise ValueError(f"replay of {d.path}: trial {trial.trial_index} was not recorded "
                             f"(the file holds {len(self._row_of_trial)} trials); the replayed session asked for more "
                             "than the recording has")
        p = self._span("presentations", row)
        pres = d.presentations
        planned = tuple(int(i) for i in pres["planned_index"][p])
        stims = tuple(int(i) for i in pres["stim_index"][p])
        if planned != tuple(trial.planned_indices) or stims != tuple(trial.stim_indices):
            raise ValueError(f"replay of {d.path}: trial {trial.trial_index} asks for planned slots "
                             f"{list(trial.planned_indices)} (stimuli {list(trial.stim_indices)}) but the recording "
                             f"showed slots {list(planned)} (stimuli {list(stims)}); the replayed session does not "
                             "follow the recorded queue")
        tr = d.trials
        c = int(tr["completed"][row])
        s, y = self._span("spikes", row), self._span("sync", row)
        aligned = not np.any(pres["invalid_reason"][p] == InvalidReason.CLOCK_NOT_ALIGNED)
        timed = bool(np.any(np.isfinite(pres["onset_acq_s"][p])))
        return TrialRecord(
            trial_index=int(trial.trial_index), completed=c, fixation_ok=bool(tr["fixation_ok"][row]),
            onset_presenter_s=pres["onset_presenter_s"][p][:c], frames_on=pres["frames_on"][p][:c],
            frames_mask=pres["frames_mask"][p][:c], dropped_frame=pres["dropped_frame"][p][:c],
            sync_presenter_s=d.sync_presenter_s[y], sync_acq_s=d.sync_acq_s[y],
            spike_times_s=d.spike_times_s[s], spike_channels=d.spike_channels[s],
            start_acq_s=float(tr["start_acq_s"][row]), end_acq_s=float(tr["end_acq_s"][row]),
            acquisition_ok=bool(tr["acquisition_ok"][row]), note="replayed",
            end_presenter_s=float(tr["end_presenter_s"][row]),
            # issue 11: the clock segment of the trial's pulses, and which onsets had a pulse
            clock_segment=self._segment_of(y, timed),
            pulse_ok=np.isin(pres["onset_presenter_s"][p][:c], d.sync_presenter_s[y]),
            clock_aligned=aligned,
            fixation_monitored=bool(np.any(pres["fixation"][p] != Fixation.NOT_MONITORED)) if len(pres["fixation"][p]) else True)

    def _segment_of(self, sync_rows: slice, timed: bool) -> str:
        """The clock segment a recorded trial was stamped in. Only pulses store it: a trial whose
        pulses were all lost but whose onsets got acquisition times when recorded was on a segment
        already fitted then, the latest one (a restarted presenter starts a new segment, and
        segments never resume); one without any such time gets none, as it had no fit then."""
        labels = self._segments[sync_rows]
        if len(labels):
            self._last_segment = str(labels[0])
            return self._last_segment
        return self._last_segment if timed else ""

    def close(self) -> None:
        self._opened = False


def _stored_max_attempts(day: DayData) -> int:
    """``schedule.max_attempts`` of the recorded day's own configuration (its queue's bound)."""
    from rig.config import config_from_toml_text

    try:
        return int(config_from_toml_text(day.config_text).schedule.max_attempts)
    except (UserError, ValueError, KeyError, TypeError):   # an unreadable stored config: no bound known
        return 0


def _check_queue_matches(day: DayData) -> None:
    """Raise unless a fresh session's queue hands out exactly the recorded trials, in order."""
    queue = PresentationQueue(day.schedule(), max_attempts=_stored_max_attempts(day))
    ends = np.asarray(day.trials["presentations_end"], int)
    starts = np.r_[0, ends[:-1]].astype(int)
    for row, (a, b) in enumerate(zip(starts, ends)):
        trial = queue.next_trial()
        planned = tuple(int(i) for i in day.presentations["planned_index"][a:b])
        if trial is None or trial.planned_indices != planned or trial.trial_index != int(day.trials["trial_index"][row]):
            got = "nothing" if trial is None else f"trial {trial.trial_index} slots {list(trial.planned_indices)}"
            raise ValueError(f"{day.path} cannot be replayed: its trial {int(day.trials['trial_index'][row])} showed slots "
                             f"{list(planned)} where a fresh session's queue gives {got} (was it resumed after a "
                             "damaged record?)")
        queue.complete(day.presentations["valid"][a:b])


def replay_day(src_path: str | Path, out_path: str | Path, window_ms: tuple[float, float] | None = None) -> Path:
    """Re-run a recorded day into the new day file ``out_path``; return ``out_path``.

    Counts are recomputed from the raw spikes in ``window_ms`` (ms after onset; default:
    the recorded window) and the presenter->acquisition clock fit is redone. The source
    is read only; ``out_path`` must not exist. An incomplete source gives an incomplete
    replay with the same trials.
    """
    src_path, out_path = Path(src_path), Path(out_path)
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise ValueError(f"--out {out_path} is the source file; a replay is written to a new file")
    day = read_day(src_path)
    if window_ms is None:
        window_ms = day.window_ms
    window_ms = (float(window_ms[0]), float(window_ms[1]))
    if not (np.isfinite(window_ms).all() and window_ms[0] < window_ms[1]):
        raise ValueError(f"count window {window_ms[0]:g}-{window_ms[1]:g} ms is empty; give START_MS < END_MS")
    n_trials = len(day.trials["trial_index"])
    if n_trials == 0:
        raise ValueError(f"{src_path} holds no committed trial; there is nothing to replay")
    _check_queue_matches(day)
    schedule = day.schedule()
    attrs = {k: v for k, v in day.header().attrs.items() if k not in _REPLAY_ATTRS}
    attrs.update({"replayed_from_backend": str(day.attrs.get("backend", "")), "replayed_from_file": str(src_path),
                  "replayed_from_window_ms": [float(day.window_ms[0]), float(day.window_ms[1])]})
    # a replay is a new dataset (new identifier) whose spikes have its source's origin
    header = day.header(backend="replay", window_ms=window_ms, attrs=attrs, identifier="", status="recording",
                          origin=Origin(day.origin.kind, replayed_from=str(day.attrs.get("identifier", ""))))
    info = SessionInfo(session_id=header.session_id, day=day.day, n_channels=day.n_channels)
    with DayWriter.create(out_path, header) as writer:
        run_session(ReplayBackend(day), writer, day.stimuli, schedule, info, window_ms,
                    max_trials=n_trials, limits=SessionLimits(max_attempts=_stored_max_attempts(day)))
    return out_path
