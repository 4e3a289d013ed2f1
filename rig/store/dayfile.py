"""Day files: one HDF5 file per recording day, append-only, flushed after every trial.

Layout (every dataset has ``unit`` and ``description`` attributes)::

    /                      attrs (DayHeader.root_attrs): schema_version, software_version,
                                  created_utc, day, session_id, backend, status,
                                  committed_trials, window_start_ms/end_ms,
                                  identifier (a UUID, stable: the NWB identifier),
                                  origin ("sim" | "presenter+sim" | "live"; rig.store.origin),
                                  replayed_from (a replay: its source's identifier),
                                  experiment_uuid, acq_clock_zero_utc (wall time of the
                                  acquisition clock's zero, recorded when the day starts), ...
    /config_toml           the full resolved configuration (TOML text)
    /metadata              attrs subject, session, array: JSON of those config sections
                           (who, where, with what; for NWB / DANDI)
    /stimuli/pixels        (n_stim, H, W, 3) uint8, exactly as displayed
    /stimuli/sha1          (n_stim,) sha1 of each image's bytes
    /stimuli/<column>      provenance (kind, parent, site, epsilon_requested, ..., epsilon_index)
    /stimuli attrs         epsilons: the planned grid (L2 norms) that epsilon_index points into
    /model/...             the model that designed the stimuli (optional; MODEL_DATASETS)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig import __version__
from rig.backend import ClockState, TrialRows, invalid_reason_legend
from rig.store.journal import Journal, journal_path, read_journal
from rig.store.lock import DayLock
from rig.store.origin import RECORDING_BACKENDS, UNKNOWN, Origin, backend_origin
from rig.store.trialdata import ROW_COUNTERS, TABLES, stored_tables, tables_digest, trial_tables
from stimuli.stimset import StimulusSet

# 2: root attributes origin (+ replayed_from, the source's identifier), experiment_uuid; /eye and
#    /rewards always present; every dataset (config_toml, model/*) has unit and description.
#    Older files are read through rig.store.upgrade (the one place that knows older layouts).
SCHEMA_VERSION = 2


class DayFileError(Exception):
    """A day file that cannot be used as asked; the message says why and what to do."""


class DiskFullError(DayFileError):
    """The disk filled up while writing a trial: the session stops, nothing committed is lost."""


def _is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) \
        or "Disk quota" in str(exc)


def close_quietly(h5: h5py.File) -> None:
    """Close an HDF5 file whose writes may have failed, each failure ignored (a file left open
    would be closed again at interpreter exit, where a failure can crash it); what is safe is
    the journal and the committed trials."""
    errors = (OSError, RuntimeError, ValueError, KeyError)
    try:
        if not h5.id.valid:
            return
        h5.close()              # its open objects, then the file (flushing: fails on a full disk)
    except errors:
        pass
    for _ in range(3):          # a close that failed leaves the id open: close it without flushing
        try:
            if not h5.id.valid:
                return
            h5.id.close()
        except errors:
            pass


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
    ("fixation_ok", "?", "bool", ("False if fixation broke during the trial, or was not monitored (no eye tracker: "
                                  "unknown, see /presentations/fixation)")),
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
    "kind": ("1", "clean | targeted | random | universal | universal_random | subspace | line"),
    "parent": ("1", "row of the clean parent; -1 for clean images"),
    "site": ("1", "channel the perturbation targets; -1 for none"),
    "epsilon_requested": ("L2 norm, pixels in [0,1]", "perturbation size asked for"),
    "epsilon_shown": ("L2 norm, pixels in [0,1]", "perturbation size displayed (after uint8 rounding)"),
    "direction": ("1", "+1 drive the site up, -1 down, 0 none"),
    "predicted_change": ("spikes", "designing model's f_site(shown) - f_site(parent); NaN if none"),
    "budget_passes": ("passes", "forward+backward passes spent designing it"),
    "epsilon_index": ("1", "row of the planned grid (/stimuli attribute 'epsilons') it was made at; -1 for none"),
    # issue 23 (universal / subspace / line stimuli); files without them read as the defaults
    "shared_delta": ("1", "id of the shared perturbation or line/plane the stimulus belongs to; -1 for none"),
    "design_role": ("1", "1: the shared perturbation was designed on this parent, 2: held out, 0: none"),
    "coord_u": ("L2 norm, pixels in [0,1]", "shown perturbation along the designed direction u; NaN for none"),
    "coord_v": ("L2 norm, pixels in [0,1]", "shown perturbation along a random direction v orthogonal to u; NaN for none"),
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
    ("fixation_ok", "?", "bool", ("fixation monitored by an eye tracker and held through this presentation "
                                  "(False also when not monitored: see fixation)")),
    ("valid", "?", "bool", "shown, fixation held, no dropped frame, acquisition intact"),
    ("invalid_reason", "u1", "1", "why the presentation is not valid: " + invalid_reason_legend()),
    ("fixation", "u1", "1", "0 not monitored (no eye tracker: unknown), 1 held, 2 broken"),
]


# (unit, description) of the designing model's arrays (/model/<name>; the rest are /model attrs)
MODEL_DATASETS = {
    "site_channels": ("1", "recording channel of each readout column (site) of the model"),
    "target_channels": ("1", "channels targeted by this day's perturbations"),
    "coef": ("spikes per unit feature", "readout weights w (n_sites, n_features), on standardised features"),
    "intercept": ("spikes", "readout intercepts b (n_sites,)"),
    "feature_mean": ("feature units", "mean of each backbone feature over the training images (standardisation)"),
    "feature_scale": ("feature units", "scale of each backbone feature over the training images (standardisation)"),
    "clean_pool_index": ("1", "rows of the screening day's clean images that were perturbed"),
}
METADATA_SECTIONS = ("subject", "session", "array")


@dataclass
class DayHeader:
    """What a day file (or a plan) holds before its first trial: the one place the header's
    names are spelled. :meth:`root_attrs` are its root attributes; the rest are datasets.

    ``origin``: where the spikes come from (default: the recording backend's, ``backend_origin``;
    "unknown" for any other writer, e.g. a test's fake backend; a plan records none);
    ``experiment_uuid``: the experiment's UUID ("" in files written before it existed);
    ``identifier``: this file's UUID ("" = a new one); ``attrs``: further session facts.
    """

    config_text: str                       # the resolved configuration, TOML
    day: int
    session_id: str
    stimuli: StimulusSet
    schedule_stim_index: np.ndarray        # planned presentation order (rows of stimuli)
    presentations_per_trial: int
    seconds_per_presentation: float        # planned wall time per slot, s
    channel_names: list[str]
    backend: str                           # sim | presenter | rig | replay | none (a plan)
    window_ms: tuple[float, float]         # spike-count window, ms after onset
    origin: Origin | None = None
    experiment_uuid: str = ""
    model_info: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    identifier: str = ""
    status: str = "recording"
    config: Any = None                     # the rig.config.Config of config_text, when the writer holds it
    calibration: dict | None = None        # the eye calibration map (CalibrationMap.to_dict()), stored with the header

    def __post_init__(self) -> None:
        if self.origin is None and self.status != "planned":   # the recording backends' own origin
            self.origin = Origin(backend_origin(self.backend) if self.backend in RECORDING_BACKENDS else UNKNOWN)
        self.model_info = dict(self.model_info or {})
        self.attrs = dict(self.attrs or {})

    def root_attrs(self) -> dict:
        """The root attributes written when the file is created."""
        out = dict(self.attrs)
        out.update({"schema_version": SCHEMA_VERSION, "software": "itloop", "software_version": __version__,
                    "created_utc": _utcnow(), "day": int(self.day), "session_id": self.session_id,
                    "backend": self.backend, "status": self.status, "committed_trials": 0,
                    "window_start_ms": float(self.window_ms[0]), "window_end_ms": float(self.window_ms[1]),
                    "identifier": str(uuid.UUID(self.identifier)) if self.identifier else str(uuid.uuid4())})
        if self.experiment_uuid:   # none: a day of an experiment begun before experiment UUIDs (legacy)
            out["experiment_uuid"] = str(self.experiment_uuid)
        for key in ORIGIN_ATTRS:
            out.pop(key, None)
        if self.origin is not None:
            out.update(self.origin.attrs())
        return out


ORIGIN_ATTRS = ("origin", "replayed_from")
# root attributes a file writes for itself (DayHeader.root_attrs and the writer); any other is a session fact
OWN_ATTRS = frozenset({"schema_version", "software", "software_version", "created_utc", "completed_utc", "day",
                       "session_id", "backend", "status", "committed_trials", "window_start_ms", "window_end_ms",
                       "experiment_uuid", "identifier", *ORIGIN_ATTRS})


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _describe(ds: h5py.Dataset, unit: str, description: str) -> None:
    ds.attrs["unit"] = unit
    ds.attrs["description"] = description


def _growing(group: h5py.Group, name: str, dtype, unit: str, description: str, width: int | None = None) -> None:
    shape: tuple[int, ...]
    maxshape: tuple[int | None, ...]
    chunks: tuple[int, ...] | bool
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
    def create(cls, path: str | Path, header: DayHeader | None = None, **fields: Any) -> "DayWriter":
        """Write the day's header (a :class:`DayHeader`, or its fields as keywords) and open
        the file for trials.

        Refuses if ``path`` (or its journal) exists: resume it or choose another path.
        """
        path = Path(path)
        header = header if header is not None else DayHeader(**fields)
        if path.exists() or journal_path(path).exists():
            raise DayFileError(f"day file {path} already exists; use --resume to continue it, or choose another --out. Nothing was overwritten.")
        _write_new(path.with_name(path.name + ".creating"), path, header)
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
            if int(h5.attrs.get("schema_version", 0)) != SCHEMA_VERSION:
                version = h5.attrs.get("schema_version")
                h5.close()
                raise DayFileError(f"day file {path} has schema version {version}; this itloop writes only version "
                                   f"{SCHEMA_VERSION}: run `itloop day recover {path}` (rebuilds it from its journal in "
                                   "the current layout), then --resume")
            try:
                _drop_torn_attrs(h5, path)
                if h5.attrs.get("status") == "complete":
                    raise DayFileError(f"day file {path} is complete; it is never reopened for writing")
                _truncate_to_committed(h5)
                h5.attrs["status"] = "recording"
                h5.flush()
                journal = Journal(journal_path(path))
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                close_quietly(h5)
                if _is_disk_full(exc):
                    raise DiskFullError(f"disk full: cannot reopen {path} for writing; free space and --resume") from None
                raise DayFileError(f"cannot reopen {path} for writing ({exc}); if it is damaged, "
                                   f"`itloop day recover {path}` rebuilds it from its journal") from None
            except BaseException:
                close_quietly(h5)
                raise
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
        tables = trial_tables(rows)
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
        _write_clock_state(h5, rows.clock)   # the runner's fits: inside the commit, before the count
        h5.attrs["committed_trials"] = row + 1
        h5.flush()
        _fsync_path(self.path)

    def _verify_against(self, journal: list[TrialRows]) -> None:
        """Refuse to continue a file whose committed trials differ from the journal's."""
        bad = mismatched_trials(self._h5, self.committed_trials, journal)
        if bad:
            raise DayFileError(f"{self.path}: {len(bad)} committed trial(s) differ from the journal (first: row {bad[0]}); "
                               f"`itloop day recover {self.path}` rebuilds the file from the journal")

    def set_attrs(self, attrs: dict) -> None:
        """Store session facts as root attributes (e.g. the presenter's CURVE key); flushed."""
        self._check_usable()
        try:
            self._h5.attrs.update({str(k): v for k, v in attrs.items()})
            self._h5.flush()
        except OSError as exc:
            self._fail(exc, safe=self.committed_trials)

    @property
    def has_calibration(self) -> bool:
        return "calibration" in self._h5

    def set_calibration(self, cmap: dict) -> None:
        """Store the eye calibration map used this day (``CalibrationMap.to_dict()``), replacing none
        (a new day stores it with its header: ``DayWriter.create(calibration=...)``)."""
        self._check_usable()
        try:
            _write_calibration(self._h5, cmap)
            self._h5.flush()
        except OSError as exc:
            self._fail(exc, safe=self.committed_trials)

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
                close_quietly(self._h5)
            self._journal.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "DayWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_header(h5: h5py.File, header: DayHeader) -> None:
    h5.attrs.update(header.root_attrs())
    _describe(h5.create_dataset("config_toml", data=header.config_text, dtype=h5py.string_dtype()),
              "TOML", "the full resolved configuration of the day (rig.config.Config, as TOML text)")
    _write_metadata(h5, header.config_text, header.config)
    _write_stimuli(h5.create_group("stimuli"), header.stimuli)
    sch = h5.create_group("schedule")
    _describe(sch.create_dataset("stim_index", data=np.asarray(header.schedule_stim_index, "i8")), "1",
              "planned presentation order (rows of /stimuli)")
    sch.attrs.update({"presentations_per_trial": int(header.presentations_per_trial),
                      "seconds_per_presentation": float(header.seconds_per_presentation)})
    ch = h5.create_group("channels")
    ch.attrs["n_channels"] = len(header.channel_names)
    _describe(ch.create_dataset("names", data=np.array(header.channel_names, dtype=h5py.string_dtype())), "1",
              "recording channel names")
    if header.model_info:
        _write_model(h5.create_group("model"), header.model_info)
    _create_tables(h5, header.window_ms, len(header.channel_names))
    if header.calibration is not None:
        _write_calibration(h5, header.calibration)


def _write_stimuli(st: h5py.Group, stimuli: StimulusSet) -> None:
    n, hh, ww, _ = stimuli.pixels.shape
    _describe(st.create_dataset("pixels", data=stimuli.pixels, chunks=(1, hh, ww, 3) if n else None),
              "uint8 RGB", "images exactly as displayed, (n_stim, H, W, 3); model input = pixels / 255")
    _describe(st.create_dataset("sha1", data=np.array(stimuli.ids, dtype="S40")), "hex", "sha1 of each image's uint8 bytes")
    for col in StimulusSet.COLUMNS + StimulusSet.GEOMETRY_COLUMNS:
        v = getattr(stimuli, col)
        data = np.array([str(x) for x in v], dtype=h5py.string_dtype()) if col == "kind" else v
        _describe(st.create_dataset(col, data=data), *STIMULUS_COLUMNS[col])
    source = getattr(stimuli, "source", None)
    if source is not None:   # issue 19: where each stimulus's pixels came from
        _describe(st.create_dataset("source", data=np.array([str(x) for x in source], dtype=h5py.string_dtype())),
                  "text", "source of the pixels: builtin photograph crop 'package:photo.jpg#crop<i>', file or texture name")
    st.attrs["epsilons"] = np.asarray(stimuli.epsilons, np.float64)  # the planned grid, once
    st.attrs["epsilons_unit"] = "L2 norm, pixels in [0,1]"


def _create_tables(h5: h5py.File, window_ms: tuple[float, float], n_channels: int) -> None:
    """The growing tables (empty): trials, presentations, spikes, sync, eye, rewards."""
    for group, columns in (("trials", TRIAL_COLUMNS), ("presentations", PRESENTATION_COLUMNS), ("eye", EYE_COLUMNS),
                           ("rewards", REWARD_COLUMNS)):
        g = h5.create_group(group)
        for name, dt, unit, desc in columns:
            _growing(g, name, dt, unit, desc)
    sp = h5.create_group("spikes")
    _growing(sp, "counts", "f4", "spikes", f"spike count per presentation x channel in [onset+{window_ms[0]:g} ms, "
             f"onset+{window_ms[1]:g} ms); NaN if not shown", width=n_channels)
    _growing(sp, "times_s", "f8", "s", "raw spike times, acquisition clock")
    _growing(sp, "channel", "i4", "1", "channel of each raw spike")
    sy = h5.create_group("sync")
    _growing(sy, "presenter_s", "f8", "s", "sync pulse (stimulus onset) as stamped by the presenter")
    _growing(sy, "acq_s", "f8", "s", "the same sync pulse on the acquisition clock")
    _growing(sy, "segment", h5py.string_dtype(), "1", "presenter session (clock segment) that stamped the pulse; each is fitted alone")


def _write_calibration(h5: h5py.File, cmap: dict) -> None:
    g = h5.require_group("calibration")
    g.attrs["map_json"] = json.dumps(cmap)
    g.attrs["description"] = "raw tracker coordinates -> degrees (rig.sources.calibration.CalibrationMap)"


def _write_metadata(h5: h5py.File, config_text: str, cfg=None) -> None:
    """``/metadata``: the subject / session / array config sections as JSON attrs (from
    ``cfg`` when given, else parsed from ``config_text``)."""
    from rig.config import Config, ConfigError, config_from_toml_text

    g = h5.create_group("metadata")
    source = "the day's configuration"
    if cfg is None:
        try:
            cfg = config_from_toml_text(config_text)
        except ConfigError as exc:
            cfg, source = Config(), f"defaults (the stored configuration could not be read: {exc})"
    g.attrs["description"] = ("who was recorded, by whom and with what (config sections [subject], [session], [array]) "
                              f"as JSON; from {source}")
    for name in METADATA_SECTIONS:
        g.attrs[name] = json.dumps(dataclasses.asdict(getattr(cfg, name)))


def write_plan(path: str | Path, config, day: int, stimuli: StimulusSet, schedule,
               model_info: dict | None = None, attrs: dict | None = None, experiment_uuid: str = "") -> Path:
    """Write a day's plan (stimuli, schedule, designing model) atomically; refuse to overwrite.
    ``config``: the experiment's ``rig.config.Config`` (or its TOML text).

    A plan file has the day-file layout with no trials, no origin and ``status = "planned"``.
    """
    path = Path(path)
    if path.exists():
        raise DayFileError(f"plan {path} already exists; it is never overwritten (delete it yourself to re-plan)")
    text, parsed = (config, None) if isinstance(config, str) else (config.to_toml(), config)
    header = DayHeader(config_text=text, config=parsed, day=day, session_id=f"plan-day{day:03d}", stimuli=stimuli,
                       schedule_stim_index=schedule.stim_index, presentations_per_trial=schedule.presentations_per_trial,
                       seconds_per_presentation=schedule.seconds_per_presentation, channel_names=[], backend="none",
                       window_ms=(0.0, 0.0), origin=None, experiment_uuid=experiment_uuid, model_info=model_info or {},
                       attrs=dict(attrs or {}), status="planned")
    _write_new(path.with_name(path.name + ".creating"), path, header)
    return path


def _write_new(tmp: Path, path: Path, header: DayHeader) -> None:
    """Write a header beside ``path``, fsync it, then link it to ``path`` (never replacing a file).

    A failure (read-only folder, full disk) removes ``tmp`` and is one DayFileError
    naming the path; nothing is left that blocks a retry.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()  # a header that never finished: it holds no recording
        try:
            image = _header_image(header)
            with open(tmp, "xb") as fh:      # plain writes: a full disk is an OSError, no HDF5 state left open
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
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


def _header_image(header: DayHeader) -> bytes:
    """The bytes of a new day (or plan) file holding ``header``, built in memory (HDF5's core
    driver, nothing on disk), so that no HDF5 write to a disk can fail half-way through it."""
    h5 = h5py.File(f"itloop-header-{uuid.uuid4().hex}", "w", driver="core", backing_store=False)
    try:       # default libver: no SWMR status flags to trip over after a crash
        _write_header(h5, header)
        h5.flush()
        return h5.id.get_file_image()
    finally:
        h5.close()


def _write_model(g: h5py.Group, info: dict) -> None:
    """The designing model: arrays as datasets (unit and description from MODEL_DATASETS),
    everything else as attributes (dicts and lists of text as JSON)."""
    g.attrs["description"] = "the model that designed the day's stimuli (readout, backbone, code version)"
    for k, v in info.items():
        if isinstance(v, np.ndarray) or (isinstance(v, (list, tuple)) and v and not isinstance(v[0], str)):
            unit, desc = MODEL_DATASETS.get(k, ("1", f"model array '{k}' (see the /model attributes)"))
            _describe(g.create_dataset(k, data=np.asarray(v)), unit, desc)
        elif isinstance(v, dict):
            g.attrs[k] = json.dumps(v)
        else:
            g.attrs[k] = v if not isinstance(v, (list, tuple)) else json.dumps(list(v))


def mismatched_trials(tables, committed: int, journal: list[TrialRows]) -> list[int]:
    """Rows of /trials (0-based, the first ``committed``) whose data differ from the journal's
    line for the same trial, or that the journal lacks. ``tables``: an open day file or
    :meth:`rig.store.reader.DayData.tables` (anything indexed by dataset path)."""
    bad = []
    for row in range(committed):
        if row >= len(journal) or tables_digest(stored_tables(tables, row)) != tables_digest(trial_tables(journal[row])):
            bad.append(row)
    return bad


def _truncate_to_committed(h5: h5py.File) -> None:
    """Cut every growing table back to the end of the last committed trial."""
    committed = _truncate_check(h5, Path(h5.filename))
    tr = h5["trials"]
    ends = {c: (int(tr[f"{c}_end"][committed - 1]) if committed else 0) for c in ROW_COUNTERS}
    for name, *_ in TRIAL_COLUMNS:
        tr[name].resize(committed, axis=0)
    for table, counter in TABLES.items():
        h5[table].resize(ends[counter], axis=0)


# root attributes without which a file cannot be read; any other one that cannot be read
# (torn by a write that failed, e.g. on a full disk) is left out and named in ``rig.store.reader.DayData.unreadable_attrs``
ESSENTIAL_ATTRS = ("software", "schema_version", "day", "committed_trials", "status")
HEADER_ATTRS = ("software", "schema_version", "day")   # enough to rebuild a day from its journal


def read_root_attrs(h5: h5py.File, path: Path, essential: tuple[str, ...] = ESSENTIAL_ATTRS) -> tuple[dict, list[str]]:
    """(readable root attributes, names of the unreadable ones); an unreadable ``essential`` one
    is a :class:`DayFileError`."""
    attrs, bad = {}, []
    try:
        names = list(h5.attrs.keys())
    except (OSError, RuntimeError, KeyError) as exc:
        raise DayFileError(f"day file {path}: its root attributes cannot be read ({exc}); it is damaged. "
                           f"`itloop day recover {path}` rebuilds it from its journal") from None
    for k in names:
        try:
            v = h5.attrs[k]
        except (OSError, RuntimeError, KeyError, ValueError, TypeError):
            bad.append(k)
            continue
        attrs[k] = v.item() if isinstance(v, np.generic) else v
    torn = [k for k in bad if k in essential]
    if torn:
        raise DayFileError(f"day file {path}: root attribute {torn[0]!r} cannot be read (torn by a failed write); "
                           f"`itloop day recover {path}` rebuilds it from its journal")
    return attrs, bad


def _drop_torn_attrs(h5: h5py.File, path: Path) -> None:
    """Delete root attributes that cannot be read (torn by a write that failed): the derived
    ones are written again by the next commit; an essential one refuses (recover the file)."""
    _, torn = read_root_attrs(h5, path)
    for name in torn:
        del h5.attrs[name]


def _truncate_check(h5: h5py.File, path: Path) -> int:
    """``committed_trials`` if the file holds that many trial rows; else a DayFileError."""
    committed = int(h5.attrs["committed_trials"])
    rows = min(h5["trials"][name].shape[0] for name, *_ in TRIAL_COLUMNS if name in h5["trials"])
    if not 0 <= committed <= rows:
        raise DayFileError(f"day file {path}: committed_trials = {committed} but it holds {rows} trial rows (altered "
                           f"or damaged); `itloop day recover {path}` rebuilds it from its journal")
    return committed


def _write_clock_state(h5: h5py.File, state: ClockState | None) -> None:
    """Store the clock fits the session runner computed after the trial being committed:
    ``/sync`` attrs ``fit_*`` (that trial's segment) and root attr ``clock_segments`` (JSON,
    every segment). Part of each commit, and journalled with the trial, so a resumed or
    rebuilt day holds what an uninterrupted one would. ``None`` (a trial journalled before
    the fits travelled with it, or rows made without a runner) leaves the stored state as it is."""
    if state is None:
        return
    h5["sync"].attrs.update({"fit_offset_s": float(state.offset_s), "fit_drift": float(state.drift),
                             "fit_residual_sd_s": float(state.residual_sd_s), "fit_n_pairs": int(state.n_pairs)})
    h5.attrs["clock_segments"] = json.dumps(state.segments, allow_nan=True)


def _sync_segments(h5: h5py.File) -> np.ndarray:
    """The clock segment label of every sync pair."""
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in h5["sync/segment"][:]], dtype=object)
