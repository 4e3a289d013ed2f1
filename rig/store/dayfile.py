"""Day files: one HDF5 file per recording day, append-only, flushed after every trial.

Layout (every dataset has ``unit`` and ``description`` attributes)::

    /                      attrs: schema_version, software_version, created_utc, day,
                                  session_id, backend, status, committed_trials,
                                  identifier (a UUID, stable: the NWB identifier),
                                  acq_clock_zero_utc (wall time of the acquisition clock's
                                  zero, recorded when the day starts), ...
    /config_toml           the full resolved configuration (TOML text)
    /metadata              attrs subject, session, array: JSON of those config sections
                           (who, where, with what; for NWB / DANDI)
    /stimuli/pixels        (n_stim, H, W, 3) uint8, exactly as displayed
    /stimuli/sha1          (n_stim,) sha1 of each image's bytes
    /stimuli/<column>      provenance (kind, parent, site, epsilon_requested, ..., epsilon_index)
    /stimuli attrs         epsilons: the planned grid (L2 norms) that epsilon_index points into
    /model/...             the model that designed the stimuli (optional)
    /schedule/stim_index   (n_planned,) the planned presentation order
    /channels/names        (n_channels,)
    /trials/<column>       one row per trial attempt; written LAST for each trial
    /presentations/<col>   one row per presentation attempted (K per trial)
    /spikes/counts         (n_presentations, n_channels) spikes in the count window
    /spikes/times_s, /spikes/channel   raw spike events, acquisition clock
    /sync/presenter_s, /sync/acq_s     sync pulses on both clocks
    /eye/<column>          gaze samples of every trial (time on both clocks, x/y deg, pupil)
    /rewards/<column>      every reward given (time on both clocks, duration, kind)
    /calibration           attrs: the eye calibration map used (JSON), when there is one

Crash safety: a trial is *committed* when its row in ``/trials`` exists and the root
attribute ``committed_trials`` counts it; that attribute is written last, then the file
is flushed. Each trial row stores where its rows end in the other tables, so a reader
(or a resumed writer) cuts every table back to the last committed trial and a crash
loses at most the trial in flight. Every trial is also appended to a journal file
(``<day>.journal``, one checksummed JSON line per trial, fsynced) before it is written
to HDF5: should the HDF5 file itself be damaged, :func:`rig.store.repair.recover_day` rebuilds it from
the journal and the plan. Nothing here ever deletes or overwrites a recording.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from rig import __version__
from rig.backend import TrialRows
from rig.store.journal import Journal, journal_path, read_journal
from rig.store.lock import DayLock
from rig.store.trialdata import stored_tables, tables_digest, trial_tables
from stimuli.stimset import StimulusSet

SCHEMA_VERSION = 1


class DayFileError(Exception):
    """A day file that cannot be used as asked; the message says why and what to do."""


class DiskFullError(DayFileError):
    """The disk filled up while writing a trial: the session stops, nothing committed is lost."""


def _is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) \
        or "Disk quota" in str(exc)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# (dataset name, dtype, unit, description) of the growing tables
TRIAL_COLUMNS = [
    ("trial_index", "i8", "1", "attempt number within the session"),
    ("n_planned", "i4", "presentations", "presentations the trial was to show"),
    ("completed", "i4", "presentations", "presentations shown in full with fixation held"),
    ("fixation_ok", "?", "bool", "False if fixation broke during the trial"),
    ("acquisition_ok", "?", "bool", "False if the acquisition stream had a gap (all presentations invalid)"),
    ("start_acq_s", "f8", "s", "trial start, acquisition clock"),
    ("end_acq_s", "f8", "s", "trial end, acquisition clock"),
    ("end_presenter_s", "f8", "s", "trial end, presenter clock (a resumed session continues from here)"),
    ("presentations_end", "i8", "rows", "row count of /presentations after this trial"),
    ("spikes_end", "i8", "rows", "row count of /spikes/times_s after this trial"),
    ("sync_end", "i8", "rows", "row count of /sync after this trial"),
    ("eye_end", "i8", "rows", "row count of /eye after this trial"),
    ("reward_end", "i8", "rows", "row count of /rewards after this trial"),
]
EYE_COLUMNS = [
    ("trial_index", "i8", "1", "trial attempt the sample belongs to"),
    ("t_presenter_s", "f8", "s", "sample time, presenter clock (the tracker's clock mapped at each trial start)"),
    ("t_acq_s", "f8", "s", "sample time, acquisition clock (aligned via sync pulses)"),
    ("x_deg", "f4", "deg", "gaze x, degrees of visual angle from the screen centre, right positive"),
    ("y_deg", "f4", "deg", "gaze y, degrees of visual angle from the screen centre, up positive"),
    ("pupil", "f4", "tracker units", "pupil size as the tracker reports it; NaN if none"),
]
REWARD_COLUMNS = [
    ("trial_index", "i8", "1", "trial attempt after which (or during which) the reward was given"),
    ("t_presenter_s", "f8", "s", "time the reward driver was told, presenter clock"),
    ("t_acq_s", "f8", "s", "the same time on the acquisition clock"),
    ("duration_ms", "f4", "ms", "valve open time asked for"),
    ("kind", "i1", "1", "0 completed trial, 1 manual (reward key), 2 calibration point"),
]
# (unit, description) of each stimulus provenance column (/stimuli/<column>)
STIMULUS_COLUMNS = {
    "kind": ("1", "clean | targeted | random"),
    "parent": ("1", "row of the clean parent; -1 for clean images"),
    "site": ("1", "channel the perturbation targets; -1 for none"),
    "epsilon_requested": ("L2 norm, pixels in [0,1]", "perturbation size asked for"),
    "epsilon_shown": ("L2 norm, pixels in [0,1]", "perturbation size displayed (after uint8 rounding)"),
    "direction": ("1", "+1 drive the site up, -1 down, 0 none"),
    "predicted_change": ("spikes", "designing model's f_site(shown) - f_site(parent); NaN if none"),
    "budget_passes": ("passes", "forward+backward passes spent designing it"),
    "epsilon_index": ("1", "row of the planned grid (/stimuli attribute 'epsilons') it was made at; -1 for none"),
}
PRESENTATION_COLUMNS = [
    ("planned_index", "i8", "1", "slot in /schedule/stim_index this presentation fulfils"),
    ("stim_index", "i8", "1", "row of /stimuli shown"),
    ("trial_index", "i8", "1", "trial attempt it belonged to"),
    ("position", "i4", "1", "position within the trial (0-based)"),
    ("shown", "?", "bool", "the image was shown in full"),
    ("onset_presenter_s", "f8", "s", "stimulus-on flip time, presenter clock (NaN if not shown)"),
    ("onset_acq_s", "f8", "s", "stimulus onset on the acquisition clock (aligned via sync pulses)"),
    ("frames_on", "i4", "frames", "frames the image was on screen"),
    ("frames_mask", "i4", "frames", "frames the grey mask was on screen"),
    ("dropped_frame", "?", "bool", "a frame was dropped during this presentation"),
    ("fixation_ok", "?", "bool", "fixation held through this presentation"),
    ("valid", "?", "bool", "shown, fixation held, no dropped frame, acquisition intact"),
]


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _describe(ds: h5py.Dataset, unit: str, description: str) -> None:
    ds.attrs["unit"] = unit
    ds.attrs["description"] = description


def _growing(group: h5py.Group, name: str, dtype, unit: str, description: str, width: int | None = None) -> None:
    if width is None:
        shape, maxshape, chunks = (0,), (None,), (4096,)
    else:  # a plan file has no channels yet: let h5py choose chunks for the empty width
        shape, maxshape, chunks = (0, width), (None, width), ((256, width) if width else True)
    ds = group.create_dataset(name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks)
    _describe(ds, unit, description)


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n = ds.shape[0]
    values = np.asarray(values)
    ds.resize(n + len(values), axis=0)
    if len(values):
        ds[n:] = values


class DayWriter:
    """Append trials to a day file; create it new or resume it, never overwrite it."""

    def __init__(self, path: Path, h5: h5py.File, journal: Journal, lock: DayLock | None = None):
        self.path = path
        self._h5 = h5
        self._journal = journal
        self._lock = lock
        self._failed: BaseException | None = None   # a write failed: nothing more is written
        self.n_channels = int(h5["channels"].attrs["n_channels"])
        self.n_planned = int(h5["schedule/stim_index"].shape[0])

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, config_text: str, day: int, session_id: str, stimuli: StimulusSet,
               schedule_stim_index: np.ndarray, presentations_per_trial: int, seconds_per_presentation: float,
               channel_names: list[str], backend: str, window_ms: tuple[float, float],
               model_info: dict | None = None, attrs: dict | None = None,
               identifier: str | None = None) -> "DayWriter":
        """Write the day's header (config, stimuli, plan) and open it for trials.

        Refuses if ``path`` (or its journal) exists: resume it or choose another path.
        ``identifier``: the file's UUID (default: the one carried in ``attrs`` by a
        recovery, else a new one; a replay always gets a new one).
        """
        path = Path(path)
        if path.exists() or journal_path(path).exists():
            raise DayFileError(f"day file {path} already exists; use --resume to continue it, or choose another --out. Nothing was overwritten.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        header = dict(config_text=config_text, day=day, session_id=session_id, stimuli=stimuli,
                      schedule_stim_index=schedule_stim_index, presentations_per_trial=presentations_per_trial,
                      seconds_per_presentation=seconds_per_presentation, channel_names=channel_names,
                      backend=backend, window_ms=window_ms, model_info=model_info, attrs=attrs or {},
                      identifier=identifier)
        _write_new(tmp, path, header)
        return cls._open(path)

    @classmethod
    def resume(cls, path: str | Path) -> "DayWriter":
        """Reopen an interrupted day: cut tables back to the last committed trial and
        replay any trial the journal holds beyond it."""
        path = Path(path)
        if not path.exists():
            raise DayFileError(f"day file {path} does not exist; there is nothing to resume (run without --resume to start it)")
        writer = cls._open(path)
        try:
            committed = writer.committed_trials
            journal = read_journal(journal_path(path))
            writer._verify_against(journal)
            for rows in journal[committed:]:
                writer._commit(rows)
        except BaseException:
            writer.close()
            raise
        return writer

    @classmethod
    def _open(cls, path: Path) -> "DayWriter":
        lock = DayLock(path)
        try:
            lock.acquire()
        except BlockingIOError as exc:
            raise DayFileError(f"day file {path} is being recorded by PID {getattr(exc, 'pid', '?')}; wait for that "
                               "session to end (or stop it) before writing to it") from None
        except OSError as exc:
            raise DayFileError(f"cannot write beside {path} ({exc.strerror or exc}): {lock.path}; check the folder's "
                               "permissions and free space") from None
        try:
            try:  # no chunk cache: every row is written to the file and read back from it (verification)
                h5 = h5py.File(path, "r+", rdcc_nbytes=0)
            except OSError as exc:
                raise DayFileError(f"day file {path} cannot be opened for writing ({exc}); if it is damaged, run "
                                   f"`itloop day recover {path}`") from None
            if h5.attrs.get("status") == "complete":
                h5.close()
                raise DayFileError(f"day file {path} is complete; it is never reopened for writing")
            try:
                _truncate_to_committed(h5)
                h5.attrs["status"] = "recording"
                h5.flush()
                journal = Journal(journal_path(path))
            except OSError as exc:
                h5.close()
                if _is_disk_full(exc):
                    raise DiskFullError(f"disk full: cannot reopen {path} for writing; free space and --resume") from None
                raise DayFileError(f"cannot reopen {path} for writing ({exc})") from None
        except BaseException:
            lock.release()
            raise
        return cls(path, h5, journal, lock)

    # -- state -----------------------------------------------------------------------
    @property
    def committed_trials(self) -> int:
        return int(self._h5.attrs["committed_trials"])

    @property
    def next_trial_index(self) -> int:
        ti = self._h5["trials/trial_index"]
        return int(ti[-1]) + 1 if ti.shape[0] else 0

    def recorded_trials(self) -> list[tuple[tuple[int, ...], np.ndarray]]:
        """(planned slots, validity flags) of every committed trial, in order."""
        ends = self._h5["trials/presentations_end"][:]
        planned = self._h5["presentations/planned_index"][:]
        valid = self._h5["presentations/valid"][:]
        starts = np.r_[0, ends[:-1]].astype(int)
        return [(tuple(int(i) for i in planned[a:b]), valid[a:b]) for a, b in zip(starts, ends.astype(int))]

    def sync_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self._h5["sync/presenter_s"][:], self._h5["sync/acq_s"][:]

    def sync_pairs_by_segment(self) -> list[tuple[str, tuple[np.ndarray, np.ndarray]]]:
        """Sync pairs grouped by presenter session (clock segment), in first-seen order."""
        p, a = self.sync_pairs()
        seg = _sync_segments(self._h5)
        labels = list(dict.fromkeys(seg.tolist()))
        return [(lab, (p[seg == lab], a[seg == lab])) for lab in labels] or [("", (p, a))]

    def set_clock_segments(self, segments: list[dict]) -> None:
        """Store every clock segment's fit and residuals (JSON, file attr ``clock_segments``)."""
        self._h5.attrs["clock_segments"] = json.dumps(segments, allow_nan=True)

    # -- writing -----------------------------------------------------------------------
    def append_trial(self, rows: TrialRows) -> None:
        """Journal the trial (fsync), then write it to HDF5, verify it and commit it.

        A write that fails (ENOSPC above all) stops this writer: :class:`DiskFullError`
        (or :class:`DayFileError`) says how many trials are safe; ``--resume`` continues.
        """
        if rows.counts.shape != (len(rows.trial.stim_indices), self.n_channels):
            raise ValueError(f"counts has shape {rows.counts.shape}; expected ({len(rows.trial.stim_indices)}, {self.n_channels})")
        self._check_usable()
        before = self.committed_trials
        try:
            self._journal.append(rows)
        except OSError as exc:
            self._fail(exc, safe=before)
        try:
            self._commit(rows)
        except (OSError, RuntimeError, ValueError, DayFileError) as exc:
            self._fail(exc, safe=before + 1)

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise DayFileError(f"{self.path}: an earlier write failed ({self._failed}); nothing more is written; "
                               "resume with --resume")

    def _fail(self, exc: BaseException, safe: int) -> None:
        self._failed = exc
        if _is_disk_full(exc):
            raise DiskFullError(f"disk full: {safe} trials safe in {self.path}; free space and --resume") from None
        raise DayFileError(f"writing {self.path} failed ({exc}); {safe} trials are safe (journal included); "
                           "fix the cause and --resume") from None

    def _commit(self, rows: TrialRows) -> None:
        """Write the trial's rows, flush and fsync, read them back from the file and compare,
        then count the trial as committed (flush, fsync)."""
        h5 = self._h5
        _ensure_eye_groups(h5)
        tables = trial_tables(rows, h5)
        for name, values in tables.items():
            if not name.startswith("trials/"):
                _append(h5[name], values)
        trow = {"presentations_end": h5["presentations/valid"].shape[0], "spikes_end": h5["spikes/times_s"].shape[0],
                "sync_end": h5["sync/acq_s"].shape[0], "eye_end": h5["eye/t_presenter_s"].shape[0],
                "reward_end": h5["rewards/t_presenter_s"].shape[0]}
        for name, dt, _, _ in TRIAL_COLUMNS:
            _append(h5["trials"][name], np.asarray([trow[name]], dt) if name in trow else tables[f"trials/{name}"])
        h5.flush()
        _fsync_path(self.path)
        row = h5["trials/trial_index"].shape[0] - 1
        if tables_digest(stored_tables(h5, row)) != tables_digest(tables):
            raise DayFileError(f"trial {rows.trial.trial_index} read back from {self.path} differs from what was "
                               "written (disk or file system error)")
        h5.attrs["committed_trials"] = row + 1
        h5.flush()
        _fsync_path(self.path)

    def _verify_against(self, journal: list[TrialRows]) -> None:
        """Refuse to continue a file whose committed trials differ from the journal's."""
        bad = mismatched_trials(self._h5, journal)
        if bad:
            raise DayFileError(f"{self.path}: {len(bad)} committed trial(s) differ from the journal (first: row {bad[0]}); "
                               f"`itloop day recover {self.path}` rebuilds the file from the journal")

    def set_clock(self, offset_s: float, drift: float, residual_sd_s: float, n_pairs: int) -> None:
        """Store the presenter->acquisition clock fit: acq = offset + (1 + drift) * presenter."""
        self._check_usable()
        g = self._h5["sync"]
        try:
            g.attrs.update({"fit_offset_s": offset_s, "fit_drift": drift, "fit_residual_sd_s": residual_sd_s, "fit_n_pairs": n_pairs})
        except OSError as exc:
            self._fail(exc, safe=self.committed_trials)

    def set_attrs(self, attrs: dict) -> None:
        """Store session facts as root attributes (e.g. the presenter's CURVE key); flushed."""
        self._check_usable()
        try:
            self._h5.attrs.update({str(k): v for k, v in attrs.items()})
            self._h5.flush()
        except OSError as exc:
            self._fail(exc, safe=self.committed_trials)

    def set_calibration(self, cmap: dict) -> None:
        """Store the eye calibration map used this day (``CalibrationMap.to_dict()``), replacing none."""
        g = self._h5.require_group("calibration")
        g.attrs["map_json"] = json.dumps(cmap)
        g.attrs["description"] = "raw tracker coordinates -> degrees (rig.sources.calibration.CalibrationMap)"
        self._h5.flush()

    def mark_complete(self) -> None:
        self._check_usable()
        try:
            self._h5.attrs["status"] = "complete"
            self._h5.attrs["completed_utc"] = _utcnow()
            self._h5.flush()
            _fsync_path(self.path)
        except OSError as exc:
            self._fail(exc, safe=self.committed_trials)

    def close(self) -> None:
        """Flush and close (after a failed write: close without flushing; the journal and
        the committed trials are what is safe)."""
        try:
            if self._h5.id.valid:
                if self._failed is None:
                    try:
                        self._h5.flush()
                    except OSError as exc:
                        self._failed = exc
                try:
                    self._h5.close()
                except (OSError, RuntimeError):
                    pass
            self._journal.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "DayWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_header(h5: h5py.File, *, config_text, day, session_id, stimuli: StimulusSet, schedule_stim_index,
                  presentations_per_trial, seconds_per_presentation, channel_names, backend, window_ms,
                  model_info, attrs, identifier: str | None = None) -> None:
    h5.attrs.update({"schema_version": SCHEMA_VERSION, "software": "itloop", "software_version": __version__,
                     "created_utc": _utcnow(), "day": int(day), "session_id": session_id, "backend": backend,
                     "status": "recording", "committed_trials": 0,
                     "window_start_ms": float(window_ms[0]), "window_end_ms": float(window_ms[1])})
    h5.attrs.update(attrs)
    _write_identity(h5, attrs, backend, identifier)
    h5.create_dataset("config_toml", data=config_text, dtype=h5py.string_dtype())
    _write_metadata(h5, config_text)
    st = h5.create_group("stimuli")
    n, hh, ww, _ = stimuli.pixels.shape
    _describe(st.create_dataset("pixels", data=stimuli.pixels, chunks=(1, hh, ww, 3) if n else None),
              "uint8 RGB", "images exactly as displayed, (n_stim, H, W, 3); model input = pixels / 255")
    _describe(st.create_dataset("sha1", data=np.array(stimuli.ids, dtype="S40")), "hex", "sha1 of each image's uint8 bytes")
    for col in StimulusSet.COLUMNS:
        v = getattr(stimuli, col)
        data = np.array([str(x) for x in v], dtype=h5py.string_dtype()) if col == "kind" else v
        _describe(st.create_dataset(col, data=data), *STIMULUS_COLUMNS[col])
    if getattr(stimuli, "source", None) is not None:   # issue 19: where each stimulus's pixels came from
        _describe(st.create_dataset("source", data=np.array([str(x) for x in stimuli.source], dtype=h5py.string_dtype())),
                  "text", "source of the pixels: builtin photograph crop 'package:photo.jpg#crop<i>', file or texture name")
    st.attrs["epsilons"] = np.asarray(stimuli.epsilons, np.float64)  # the planned grid, once
    st.attrs["epsilons_unit"] = "L2 norm, pixels in [0,1]"
    sch = h5.create_group("schedule")
    _describe(sch.create_dataset("stim_index", data=np.asarray(schedule_stim_index, "i8")), "1", "planned presentation order (rows of /stimuli)")
    sch.attrs.update({"presentations_per_trial": int(presentations_per_trial),
                      "seconds_per_presentation": float(seconds_per_presentation)})
    ch = h5.create_group("channels")
    ch.attrs["n_channels"] = len(channel_names)
    _describe(ch.create_dataset("names", data=np.array(channel_names, dtype=h5py.string_dtype())), "1", "recording channel names")
    if model_info:
        _write_model(h5.create_group("model"), model_info)
    tr = h5.create_group("trials")
    for name, dt, unit, desc in TRIAL_COLUMNS:
        _growing(tr, name, dt, unit, desc)
    pr = h5.create_group("presentations")
    for name, dt, unit, desc in PRESENTATION_COLUMNS:
        _growing(pr, name, dt, unit, desc)
    sp = h5.create_group("spikes")
    _growing(sp, "counts", "f4", "spikes", f"spike count per presentation x channel in [onset+{window_ms[0]:g} ms, onset+{window_ms[1]:g} ms); NaN if not shown", width=len(channel_names))
    _growing(sp, "times_s", "f8", "s", "raw spike times, acquisition clock")
    _growing(sp, "channel", "i4", "1", "channel of each raw spike")
    sy = h5.create_group("sync")
    _growing(sy, "presenter_s", "f8", "s", "sync pulse (stimulus onset) as stamped by the presenter")
    _growing(sy, "acq_s", "f8", "s", "the same sync pulse on the acquisition clock")
    _growing(sy, "segment", h5py.string_dtype(), "1", "presenter session (clock segment) that stamped the pulse; each is fitted alone")
    _ensure_eye_groups(h5)


def _ensure_eye_groups(h5: h5py.File) -> None:
    """The /eye and /rewards tables (created with the header; added to an older day file on first use)."""
    for group, columns in (("eye", EYE_COLUMNS), ("rewards", REWARD_COLUMNS)):
        if group not in h5:
            g = h5.create_group(group)
            for name, dt, unit, desc in columns:
                _growing(g, name, dt, unit, desc)


def _write_identity(h5: h5py.File, attrs: dict, backend: str, identifier: str | None) -> None:
    """Root attr ``identifier``: a UUID naming this file for good (NWB's identifier).

    A recovered file (``recovered_from`` in ``attrs``) keeps the identifier carried in
    ``attrs``; a new replay is a new dataset (new UUID, the source's kept as
    ``replayed_from_identifier``)."""
    carried = attrs.get("identifier")
    new_replay = backend == "replay" and "recovered_from" not in attrs
    if identifier is None:
        identifier = str(carried) if carried and not new_replay else str(uuid.uuid4())
    if carried and new_replay:
        h5.attrs["replayed_from_identifier"] = str(carried)
    h5.attrs["identifier"] = str(uuid.UUID(str(identifier)))


METADATA_SECTIONS = ("subject", "session", "array")


def _write_metadata(h5: h5py.File, config_text: str) -> None:
    """``/metadata``: the subject / session / array config sections as JSON attrs."""
    from rig.config import ConfigError, Config, config_from_toml_text

    g = h5.create_group("metadata")
    try:
        cfg, source = config_from_toml_text(config_text), "the day's configuration"
    except ConfigError as exc:
        cfg, source = Config(), f"defaults (the stored configuration could not be read: {exc})"
    g.attrs["description"] = ("who was recorded, by whom and with what (config sections [subject], [session], [array]) "
                              f"as JSON; from {source}")
    for name in METADATA_SECTIONS:
        g.attrs[name] = json.dumps(dataclasses.asdict(getattr(cfg, name)))


def write_plan(path: str | Path, config_text: str, day: int, stimuli: StimulusSet, schedule,
               model_info: dict | None = None, attrs: dict | None = None) -> Path:
    """Write a day's plan (stimuli, schedule, designing model) atomically; refuse to overwrite.

    A plan file has the day-file layout with no trials and ``status = "planned"``.
    """
    path = Path(path)
    if path.exists():
        raise DayFileError(f"plan {path} already exists; it is never overwritten (delete it yourself to re-plan)")
    tmp = path.with_name(path.name + ".creating")
    header = dict(config_text=config_text, day=day, session_id=f"plan-day{day:03d}", stimuli=stimuli,
                  schedule_stim_index=schedule.stim_index, presentations_per_trial=schedule.presentations_per_trial,
                  seconds_per_presentation=schedule.seconds_per_presentation, channel_names=[], backend="none",
                  window_ms=(0.0, 0.0), model_info=model_info, attrs={**(attrs or {}), "status": "planned"})
    _write_new(tmp, path, header)
    return path


def _write_new(tmp: Path, path: Path, header: dict) -> None:
    """Write a header into ``tmp``, fsync it, then link it to ``path`` (never replacing a file).

    A failure (read-only folder, full disk) removes ``tmp`` and is one DayFileError
    naming the path; nothing is left that blocks a retry.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()  # a header that never finished: it holds no recording
        try:
            with h5py.File(tmp, "w") as h5:  # default libver: no SWMR status flags to trip over after a crash
                _write_header(h5, **header)
            _fsync_path(tmp)
            os.link(tmp, path)  # atomic, and fails rather than replace a file that appeared meanwhile
        finally:
            if tmp.exists():
                tmp.unlink()
    except FileExistsError:
        raise DayFileError(f"{path} already exists; nothing was overwritten") from None
    except OSError as exc:
        if _is_disk_full(exc):
            raise DiskFullError(f"disk full: cannot write {path}; free space and run again") from None
        raise DayFileError(f"cannot write {path} ({getattr(exc, 'strerror', None) or exc}); check the folder's "
                           "permissions and free space") from None


def _write_model(g: h5py.Group, info: dict) -> None:
    for k, v in info.items():
        if isinstance(v, np.ndarray):
            g.create_dataset(k, data=v)
        elif isinstance(v, (list, tuple)) and v and not isinstance(v[0], str):
            g.create_dataset(k, data=np.asarray(v))
        elif isinstance(v, dict):
            g.attrs[k] = json.dumps(v)
        else:
            g.attrs[k] = v if not isinstance(v, (list, tuple)) else json.dumps(list(v))


def mismatched_trials(h5: h5py.File, journal: list[TrialRows]) -> list[int]:
    """Rows of /trials (0-based, committed only) whose data differ from the journal's
    line for the same trial, or that the journal lacks."""
    committed = int(h5.attrs["committed_trials"])
    bad = []
    for row in range(committed):
        if row >= len(journal) or tables_digest(stored_tables(h5, row)) != tables_digest(trial_tables(journal[row], h5)):
            bad.append(row)
    return bad


def _truncate_to_committed(h5: h5py.File) -> None:
    """Cut every growing table back to the end of the last committed trial."""
    committed = int(h5.attrs["committed_trials"])
    tr = h5["trials"]
    ends = {"presentations": 0, "spikes": 0, "sync": 0, "eye": 0, "reward": 0}
    if committed:
        ends = {"presentations": int(tr["presentations_end"][committed - 1]),
                "spikes": int(tr["spikes_end"][committed - 1]), "sync": int(tr["sync_end"][committed - 1])}
        for key in ("eye", "reward"):             # older day files have no eye/reward columns
            ends[key] = int(tr[f"{key}_end"][committed - 1]) if f"{key}_end" in tr else 0
    for name, *_ in TRIAL_COLUMNS:
        if name in tr:
            tr[name].resize(committed, axis=0)
        else:                                     # an older day file: add the column, its rows all zero
            _growing(tr, name, *next((dt, u, d) for n, dt, u, d in TRIAL_COLUMNS if n == name))
            tr[name].resize(committed, axis=0)
    for group, columns, key in (("eye", EYE_COLUMNS, "eye"), ("rewards", REWARD_COLUMNS, "reward")):
        if group in h5:
            for name, *_ in columns:
                h5[group][name].resize(ends[key], axis=0)
    for name, *_ in PRESENTATION_COLUMNS:
        h5["presentations"][name].resize(ends["presentations"], axis=0)
    h5["spikes/counts"].resize(ends["presentations"], axis=0)
    for name in ("times_s", "channel"):
        h5["spikes"][name].resize(ends["spikes"], axis=0)
    for name in ("presenter_s", "acq_s", "segment"):
        if name in h5["sync"]:
            h5["sync"][name].resize(ends["sync"], axis=0)


def _sync_segments(h5: h5py.File) -> np.ndarray:
    """The clock segment label of every sync pair ('' for files written before segments)."""
    n = h5["sync/acq_s"].shape[0]
    if "segment" not in h5["sync"]:
        return np.array([""] * n, dtype=object)
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in h5["sync/segment"][:]], dtype=object)


