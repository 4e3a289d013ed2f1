"""Reading a day file (or a plan) into arrays: :func:`read_day` -> :class:`DayData`."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from rig.session.schedule import Schedule
from rig.store.dayfile import (
    ESSENTIAL_ATTRS,
    HEADER_ATTRS,
    METADATA_SECTIONS,
    OWN_ATTRS,
    SCHEMA_VERSION,
    TRIAL_COLUMNS,
    DayFileError,
    DayHeader,
    read_root_attrs,
)
from rig.store.journal import journal_path
from rig.store.origin import Origin, read_origin
from rig.store.trialdata import ROW_COUNTERS, TABLES
from rig.store.upgrade import upgrade
from stimuli.stimset import StimulusSet

if TYPE_CHECKING:
    from rig.config import Config


@dataclass
class DayData:
    """Everything in a day file, as arrays (committed trials only)."""

    path: Path
    attrs: dict
    config_text: str
    stimuli: StimulusSet
    stim_ids: list[str]
    schedule_stim_index: np.ndarray
    channel_names: list[str]
    trials: dict[str, np.ndarray]
    presentations: dict[str, np.ndarray]
    counts: np.ndarray                 # (n_presentations, n_channels) spikes; NaN if not shown
    spike_times_s: np.ndarray
    spike_channels: np.ndarray
    sync_presenter_s: np.ndarray
    sync_acq_s: np.ndarray
    model: dict = field(default_factory=dict)
    presentations_per_trial: int = 1       # K of the planned schedule
    seconds_per_presentation: float = 0.0  # planned wall time per slot, s
    clock: dict = field(default_factory=dict)  # presenter->acquisition clock fit (/sync attrs: fit_offset_s, fit_drift, ...)
    eye: dict[str, np.ndarray] = field(default_factory=dict)      # /eye columns (committed trials; empty without a tracker)
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  # /rewards columns (committed trials)
    calibration: dict | None = None    # the eye calibration map used (/calibration), if any
    metadata: dict[str, dict] = field(default_factory=dict)   # /metadata: config sections subject, session, array
    sync_segment: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # clock segment of each sync pair
    unreadable_attrs: list = field(default_factory=list)  # root attributes torn by a failed write (left out of attrs)

    @property
    def origin(self) -> Origin:
        """Where the spikes came from (:func:`rig.store.origin.read_origin`)."""
        return read_origin(self.attrs)

    @property
    def experiment_uuid(self) -> str:
        return str(self.attrs.get("experiment_uuid", ""))

    @functools.cached_property
    def config(self) -> Config:
        """The day's stored configuration, parsed once."""
        from rig.config import ConfigError, config_from_toml_text

        try:
            return config_from_toml_text(self.config_text)
        except ConfigError as exc:
            raise DayFileError(f"{self.path}: its stored configuration cannot be read ({exc})") from None

    def header(self, **changes: Any) -> DayHeader:
        """This day's header (to replay or rebuild it), with ``changes`` to its fields."""
        fields: dict[str, Any] = dict(
            config_text=self.config_text, day=self.day, session_id=str(self.attrs.get("session_id", "")),
            stimuli=self.stimuli, schedule_stim_index=self.schedule_stim_index,
            presentations_per_trial=self.presentations_per_trial, seconds_per_presentation=self.seconds_per_presentation,
            channel_names=list(self.channel_names), backend=str(self.attrs.get("backend", "")), window_ms=self.window_ms,
            origin=self.origin, experiment_uuid=self.experiment_uuid, model_info=dict(self.model),
            attrs={k: v for k, v in self.attrs.items() if k not in OWN_ATTRS and k != "schema_version_read"},
            identifier=str(self.attrs.get("identifier", "")), status=str(self.attrs.get("status", "recording")),
            calibration=self.calibration)
        fields.update(changes)
        return DayHeader(**fields)

    def tables(self) -> dict[str, np.ndarray]:
        """Every growing table by dataset path (``trials/...``, ``presentations/...``,
        ``spikes/...``, ``sync/...``, ``eye/...``, ``rewards/...``), committed rows only."""
        out = {f"trials/{k}": v for k, v in self.trials.items()}
        out.update({f"presentations/{k}": v for k, v in self.presentations.items()})
        out.update({"spikes/counts": self.counts, "spikes/times_s": self.spike_times_s,
                    "spikes/channel": self.spike_channels, "sync/presenter_s": self.sync_presenter_s,
                    "sync/acq_s": self.sync_acq_s, "sync/segment": self.sync_segment})
        out.update({f"eye/{k}": v for k, v in self.eye.items()})
        out.update({f"rewards/{k}": v for k, v in self.rewards.items()})
        return out

    def schedule(self):
        """The planned schedule as a :class:`rig.session.schedule.Schedule`."""
        return Schedule(self.schedule_stim_index, self.presentations_per_trial, self.seconds_per_presentation)

    @property
    def window_ms(self) -> tuple[float, float]:
        """The spike-count window, ms after onset, that this day's counts were made in."""
        return float(self.attrs["window_start_ms"]), float(self.attrs["window_end_ms"])

    @property
    def day(self) -> int:
        return int(self.attrs["day"])

    @property
    def complete(self) -> bool:
        return self.attrs.get("status") == "complete"

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def _repeat_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Valid presentations placed on the (repeat, stimulus) grid: ``(valid mask, stimulus
        and repeat slot of each valid presentation, number of repeats)``; the repeat axis is
        the order in which each stimulus's valid presentations came."""
        valid = self.presentations["valid"]
        stim = self.presentations["stim_index"][valid]
        slot = np.zeros(len(stim), np.int64)
        seen = np.zeros(len(self.stimuli), np.int64)
        for row, s in enumerate(stim):
            slot[row] = seen[s]
            seen[s] += 1
        return valid, stim, slot, int(seen.max()) if len(seen) else 0

    def responses_by_repeat(self) -> np.ndarray:
        """(n_repeats, n_stim, n_channels) valid counts (spikes), NaN-padded; the
        repeat axis is the order in which each stimulus's valid presentations came."""
        valid, stim, slot, n_rep = self._repeat_slots()
        out = np.full((n_rep, len(self.stimuli), self.n_channels), np.nan, np.float32)
        out[slot, stim] = self.counts[valid]
        return out

    def trials_by_repeat(self) -> np.ndarray:
        """(n_repeats, n_stim) trial index of each entry of :meth:`responses_by_repeat` (same
        order), -1 where there is no repeat: which presentations shared a trial (and its gain)."""
        valid, stim, slot, n_rep = self._repeat_slots()
        out = np.full((n_rep, len(self.stimuli)), -1, np.int64)
        out[slot, stim] = self.presentations["trial_index"][valid]
        return out

    def mean_responses(self) -> np.ndarray:
        """(n_stim, n_channels) mean valid count per stimulus (spikes); NaN if none."""
        reps = self.responses_by_repeat()
        if reps.shape[0] == 0:
            return np.full((len(self.stimuli), self.n_channels), np.nan)
        with np.errstate(invalid="ignore"):
            return np.nanmean(reps, axis=0) if np.isfinite(reps).any() else np.full(reps.shape[1:], np.nan)


def _open_h5(path: Path) -> h5py.File:
    """Every read of a day or plan file opens it here (read-only)."""
    return h5py.File(path, "r")


def _refuse_if_recording(path: Path) -> None:
    """A file another process is recording (its lock is held) is named as such, not as damaged."""
    from rig.store.lock import locked_by

    pid = locked_by(path)
    if pid is not None:
        raise DayFileError(f"day file {path} is being recorded by PID {pid}; wait for that session to end "
                           "(or stop it) before using it")


def read_config_text(path: str | Path) -> str:
    """The configuration (TOML text) stored in a day or plan file, without reading its arrays."""
    path = Path(path)
    if not path.exists():
        raise DayFileError(f"day file {path} does not exist")
    _refuse_if_recording(path)
    try:
        with _open_h5(path) as h5:
            cfg = h5["config_toml"][()]
    except (OSError, KeyError) as exc:
        raise DayFileError(f"{path} holds no readable itloop configuration ({exc}); is it an itloop day file?") from None
    return cfg.decode() if isinstance(cfg, bytes) else cfg


def read_day(path: str | Path, header_only: bool = False) -> DayData:
    """Read a day file into arrays; raises :class:`DayFileError` saying what is wrong.

    ``header_only``: config, stimuli, schedule, channels and model, no trials (for rebuilding
    a file whose trial tables are damaged from its journal)."""
    path = Path(path)
    if path.is_dir():
        raise DayFileError(f"{path} is a folder, not a day file; move it away or choose another --out")
    if not path.exists():
        raise DayFileError(f"day file {path} does not exist")
    try:
        h5 = _open_h5(path)
    except OSError as exc:
        from rig.store.lock import locked_by

        pid = locked_by(path)
        if pid is not None:
            raise DayFileError(f"day file {path} is being recorded by PID {pid}; read it when that session has ended") from None
        hint = f" A journal exists: `itloop day recover {path}` rebuilds it." if journal_path(path).exists() else ""
        raise DayFileError(f"day file {path} cannot be opened as HDF5 ({exc}); it is truncated or damaged.{hint}") from None
    try:
        with h5:
            return _read_open(path, h5, header_only)
    except KeyError as exc:
        raise DayFileError(f"day file {path} lacks {exc.args[0] if exc.args else 'a required entry'}; it is not an itloop day file or is damaged") from None
    except (OSError, RuntimeError, ValueError) as exc:
        hint = f" A journal exists: `itloop day recover {path}` rebuilds it." if journal_path(path).exists() else ""
        raise DayFileError(f"day file {path} is damaged: {exc}.{hint}") from None


def _committed(path: Path, attrs: dict, tr: h5py.Group) -> int:
    """``committed_trials``, checked against the trial rows the file holds."""
    try:
        committed = int(attrs["committed_trials"])
    except (TypeError, ValueError):
        committed = -1
    rows = min(tr[name].shape[0] for name, *_ in TRIAL_COLUMNS if name in tr)
    if not 0 <= committed <= rows:
        raise DayFileError(f"day file {path}: committed_trials = {attrs['committed_trials']!r} but it holds {rows} "
                           f"trial rows (altered or damaged); `itloop day recover {path}` rebuilds it from its journal")
    return committed


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def _read_open(path: Path, h5: h5py.File, header_only: bool = False) -> DayData:
    attrs, unreadable = read_root_attrs(h5, path, HEADER_ATTRS if header_only else ESSENTIAL_ATTRS)
    if attrs.get("software") != "itloop":
        raise DayFileError(f"{path} is an HDF5 file but not an itloop day file (no software='itloop' attribute)")
    version = int(attrs.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise DayFileError(f"{path} has schema version {version}, newer than this itloop reads ({SCHEMA_VERSION}); upgrade itloop")
    committed = 0 if header_only else _committed(path, attrs, h5["trials"])
    tables = {f"trials/{k}": v[:committed] for k, v in h5["trials"].items()}
    for name in ("presentations", "spikes", "sync", "eye", "rewards"):
        if name in h5:     # a version-1 file may lack eye and rewards: upgrade() adds them
            tables.update({f"{name}/{k}": v[:] for k, v in h5[name].items()})
    st = h5["stimuli"]
    cols = {c: st[c][:] for c in StimulusSet.COLUMNS + StimulusSet.GEOMETRY_COLUMNS if c in st}
    cols["kind"] = np.array([k.decode() if isinstance(k, bytes) else k for k in cols["kind"]], dtype=object)
    grid = st.attrs["epsilons"] if "epsilons" in st.attrs else None
    cfg = h5["config_toml"][()]
    cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
    metadata = {k: json.loads(v) for k, v in h5["metadata"].attrs.items() if k in METADATA_SECTIONS} \
        if "metadata" in h5 else {}   # a version-1 file may lack it: upgrade() takes it from the stored config
    if version < SCHEMA_VERSION:
        grid = upgrade(version, attrs, tables, cols, grid, metadata, cfg)
    tables = _committed_rows(tables)
    source = [x.decode() if isinstance(x, bytes) else str(x) for x in st["source"][:]] if "source" in st else None
    model = {}
    if "model" in h5:
        g = h5["model"]
        model = {k: g[k][:] for k in g}
        model.update({k: _scalar(v) for k, v in g.attrs.items()})
    segment = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in tables["sync/segment"]], dtype=object)

    def group(name: str) -> dict[str, np.ndarray]:
        return {k.split("/", 1)[1]: v for k, v in tables.items() if k.startswith(name + "/")}

    return DayData(
        path=path, attrs=attrs, config_text=cfg, metadata=metadata,
        stimuli=StimulusSet(st["pixels"][:], **cols, epsilons=np.asarray(grid, np.float64).reshape(-1), source=source),
        stim_ids=[s.decode() for s in st["sha1"][:]], schedule_stim_index=h5["schedule/stim_index"][:],
        channel_names=[n.decode() if isinstance(n, bytes) else n for n in h5["channels/names"][:]],
        trials=group("trials"), presentations=group("presentations"), counts=tables["spikes/counts"],
        spike_times_s=tables["spikes/times_s"], spike_channels=tables["spikes/channel"],
        sync_presenter_s=tables["sync/presenter_s"], sync_acq_s=tables["sync/acq_s"], model=model,
        presentations_per_trial=int(h5["schedule"].attrs["presentations_per_trial"]),
        seconds_per_presentation=float(h5["schedule"].attrs["seconds_per_presentation"]),
        clock=_sync_attrs(h5), unreadable_attrs=unreadable,
        eye=group("eye"), rewards=group("rewards"), sync_segment=segment,
        calibration=json.loads(h5["calibration"].attrs["map_json"]) if "calibration" in h5 else None)


def _sync_attrs(h5: h5py.File) -> dict:
    """The /sync clock-fit attributes that can be read (a torn one is left out)."""
    out = {}
    for k in h5["sync"].attrs:
        try:
            v = h5["sync"].attrs[k]
        except (OSError, RuntimeError, KeyError, ValueError, TypeError):
            continue
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def _committed_rows(tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every table cut to the rows of the committed trials (/trials is already cut)."""
    ends = {c: (int(tables[f"trials/{c}_end"][-1]) if len(tables["trials/trial_index"]) else 0) for c in ROW_COUNTERS}
    counter = {"presentations": "presentations", "spikes": "spikes", "sync": "sync", "eye": "eye", "rewards": "reward"}
    return {k: (v if k.startswith("trials/") else v[:ends[TABLES.get(k, counter[k.split("/")[0]])]])
            for k, v in tables.items()}


def day_status(path: str | Path) -> str | None:
    """A day or plan file's ``status`` ("planned", "recording", "complete") from its root
    attributes alone (no arrays read); None if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise DayFileError(f"{path} is a folder, not a day file; move it away")
    _refuse_if_recording(path)
    try:
        with _open_h5(path) as h5:
            status = h5.attrs.get("status")
    except (OSError, RuntimeError) as exc:
        raise DayFileError(f"day file {path} cannot be opened as HDF5 ({exc}); it is truncated or damaged") from None
    return status.decode() if isinstance(status, bytes) else status


class DayCache:
    """Read each complete day file once per process.

    A complete day file is never reopened for writing, so the arrays read for one step
    (fit, plan, analysis, report) serve the next. A file that changed on disk since (its
    size, mtime or inode differ) or that is not complete is read again.
    """

    def __init__(self) -> None:
        self._days: dict[Path, tuple[tuple[int, int, int], DayData]] = {}

    def read(self, path: str | Path) -> DayData:
        key = Path(path).resolve()
        try:
            st = os.stat(key)
        except FileNotFoundError:
            raise DayFileError(f"day file {path} does not exist") from None
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._days.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        day = read_day(path)
        if day.complete:
            self._days[key] = (sig, day)
        return day


