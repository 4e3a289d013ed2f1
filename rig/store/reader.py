"""Reading a day file (or a plan) into arrays: :func:`read_day` -> :class:`DayData`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rig.session.schedule import Schedule
from rig.store.dayfile import PRESENTATION_COLUMNS, SCHEMA_VERSION, TRIAL_COLUMNS, DayFileError
from rig.store.journal import journal_path
from stimuli.stimset import StimulusSet


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

    def responses_by_repeat(self) -> np.ndarray:
        """(n_repeats, n_stim, n_channels) valid counts (spikes), NaN-padded; the
        repeat axis is the order in which each stimulus's valid presentations came."""
        valid = self.presentations["valid"]
        stim = self.presentations["stim_index"][valid]
        counts = self.counts[valid]
        n_stim = len(self.stimuli)
        per = np.bincount(stim, minlength=n_stim)
        n_rep = int(per.max()) if len(per) else 0
        out = np.full((n_rep, n_stim, self.n_channels), np.nan, np.float32)
        seen = np.zeros(n_stim, np.int64)
        for row, s in enumerate(stim):
            out[seen[s], s] = counts[row]
            seen[s] += 1
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


def read_config_text(path: str | Path) -> str:
    """The configuration (TOML text) stored in a day or plan file, without reading its arrays."""
    path = Path(path)
    if not path.exists():
        raise DayFileError(f"day file {path} does not exist")
    try:
        with _open_h5(path) as h5:
            cfg = h5["config_toml"][()]
    except (OSError, KeyError) as exc:
        raise DayFileError(f"{path} holds no readable itloop configuration ({exc}); is it an itloop day file?") from None
    return cfg.decode() if isinstance(cfg, bytes) else cfg


def read_day(path: str | Path) -> DayData:
    """Read a day file into arrays; raises :class:`DayFileError` saying what is wrong."""
    path = Path(path)
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
            return _read_open(path, h5)
    except KeyError as exc:
        raise DayFileError(f"day file {path} lacks {exc.args[0] if exc.args else 'a required entry'}; it is not an itloop day file or is damaged") from None
    except OSError as exc:
        raise DayFileError(f"day file {path} is damaged: {exc}") from None


def _read_open(path: Path, h5: h5py.File) -> DayData:
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
    if attrs.get("software") != "itloop":
        raise DayFileError(f"{path} is an HDF5 file but not an itloop day file (no software='itloop' attribute)")
    if int(attrs.get("schema_version", -1)) > SCHEMA_VERSION:
        raise DayFileError(f"{path} has schema version {attrs['schema_version']}, newer than this itloop reads ({SCHEMA_VERSION}); upgrade itloop")
    committed = int(attrs["committed_trials"])
    tr = h5["trials"]
    trials = {name: tr[name][:committed] for name, *_ in TRIAL_COLUMNS if name in tr}   # older files lack eye_end, reward_end
    n_pres = int(trials["presentations_end"][-1]) if committed else 0
    n_spk = int(trials["spikes_end"][-1]) if committed else 0
    n_sync = int(trials["sync_end"][-1]) if committed else 0
    pres = {name: h5["presentations"][name][:n_pres] for name, *_ in PRESENTATION_COLUMNS}
    st = h5["stimuli"]
    cols = {c: st[c][:] for c in StimulusSet.COLUMNS if c in st}
    cols["kind"] = np.array([k.decode() if isinstance(k, bytes) else k for k in cols["kind"]], dtype=object)
    if "epsilon_index" in cols:
        grid = np.asarray(st.attrs["epsilons"], np.float64).reshape(-1)
    else:
        cols["epsilon_index"], grid = legacy_epsilon_index(cols["kind"], cols["epsilon_requested"])
    source = ([s.decode() if isinstance(s, bytes) else str(s) for s in st["source"][:]] if "source" in st else None)
    stimuli = StimulusSet(st["pixels"][:], **cols, epsilons=grid, source=source)
    model = {}
    if "model" in h5:
        g = h5["model"]
        model = {k: g[k][:] for k in g}
        model.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.attrs.items()})
    cfg = h5["config_toml"][()]
    return DayData(
        path=path, attrs=attrs, config_text=cfg.decode() if isinstance(cfg, bytes) else cfg,
        stimuli=stimuli, stim_ids=[s.decode() for s in st["sha1"][:]],
        schedule_stim_index=h5["schedule/stim_index"][:],
        channel_names=[n.decode() if isinstance(n, bytes) else n for n in h5["channels/names"][:]],
        trials=trials, presentations=pres, counts=h5["spikes/counts"][:n_pres],
        spike_times_s=h5["spikes/times_s"][:n_spk], spike_channels=h5["spikes/channel"][:n_spk],
        sync_presenter_s=h5["sync/presenter_s"][:n_sync], sync_acq_s=h5["sync/acq_s"][:n_sync], model=model,
        presentations_per_trial=int(h5["schedule"].attrs["presentations_per_trial"]),
        seconds_per_presentation=float(h5["schedule"].attrs["seconds_per_presentation"]),
        clock={k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5["sync"].attrs.items()})


def legacy_epsilon_index(kind: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(epsilon_index, planned grid) of a file written before /stimuli/epsilon_index existed.

    The one place a grid is derived from the stored values: the engine copied each requested
    epsilon verbatim from the planned list, so the distinct values of the perturbed stimuli,
    sorted, are that list's entries (in ascending order) and match exactly.
    """
    perturbed = np.asarray(kind) != "clean"
    grid = np.unique(np.asarray(requested, np.float64)[perturbed])
    index = np.full(len(kind), -1, np.int64)
    index[perturbed] = np.searchsorted(grid, np.asarray(requested, np.float64)[perturbed])
    return index, grid


def day_status(path: str | Path) -> str | None:
    """A day or plan file's ``status`` ("planned", "recording", "complete") from its root
    attributes alone (no arrays read); None if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with _open_h5(path) as h5:
            status = h5.attrs.get("status")
    except OSError as exc:
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



def read_eye(path: str | Path) -> tuple[dict, dict, dict | None]:
    """The committed trials' eye samples and rewards: ``(eye, rewards, calibration map or None)``.

    ``eye``: trial_index, t_presenter_s, t_acq_s, x_deg, y_deg, pupil; ``rewards``:
    trial_index, t_presenter_s, t_acq_s, duration_ms, kind (0 trial, 1 manual, 2 calibration).
    Empty arrays for a day file recorded without an eye tracker.
    """
    import json

    with h5py.File(path, "r") as h5:
        committed = int(h5.attrs["committed_trials"])
        tr = h5["trials"]
        out = []
        for group, key in (("eye", "eye_end"), ("rewards", "reward_end")):
            if group not in h5 or key not in tr:
                out.append({})
                continue
            n = int(tr[key][committed - 1]) if committed else 0
            out.append({name: h5[group][name][:n] for name in h5[group]})
        cal = json.loads(h5["calibration"].attrs["map_json"]) if "calibration" in h5 else None
    return out[0], out[1], cal
