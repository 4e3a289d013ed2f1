"""Checking a day file (``itloop day check``) and rebuilding a damaged one from its journal."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from rig.store.dayfile import DayFileError, DayWriter
from rig.store.journal import journal_path, read_journal
from rig.store.reader import read_day


def check_day(path: str | Path) -> tuple[dict, list[str]]:
    """Validate a day file. Returns (summary, problems); problems empty means valid."""
    d = read_day(path)
    problems: list[str] = []
    pres = d.presentations
    n_stim = len(d.stimuli)
    ids = [s for s in d.stimuli.ids]
    bad_ids = [i for i, (a, b) in enumerate(zip(ids, d.stim_ids)) if a != b]
    if bad_ids:
        problems.append(f"{len(bad_ids)} stimuli's pixels do not match their stored sha1 (first: row {bad_ids[0]})")
    if np.any((pres["stim_index"] < 0) | (pres["stim_index"] >= n_stim)):
        problems.append("presentations refer to stimuli that do not exist")
    if np.any((d.schedule_stim_index < 0) | (d.schedule_stim_index >= n_stim)):
        problems.append("the schedule refers to stimuli that do not exist")
    n_planned = len(d.schedule_stim_index)
    if np.any((pres["planned_index"] < 0) | (pres["planned_index"] >= n_planned)):
        problems.append("presentations refer to planned slots that do not exist")
    elif np.any(pres["stim_index"] != d.schedule_stim_index[pres["planned_index"]]):
        problems.append("some presentations showed a different stimulus than their planned slot")
    valid = pres["valid"]
    vp = pres["planned_index"][valid]
    if len(np.unique(vp)) != len(vp):
        problems.append("some planned presentations were recorded validly more than once (duplicates)")
    if np.any(~np.isfinite(d.counts[valid])):
        problems.append("some valid presentations have no spike count")
    if np.any(valid & ~pres["shown"]):
        problems.append("some presentations are marked valid but were not shown")
    if d.counts.shape[1] != d.n_channels:
        problems.append(f"spike counts have {d.counts.shape[1]} channels, the channel table {d.n_channels}")
    done = np.zeros(n_planned, bool)
    done[vp] = True
    if d.complete and not done.all():
        problems.append(f"the file is marked complete but {int((~done).sum())} planned presentations have no valid recording")
    segments, limit_ms = _clock_segments(d)
    for seg in segments:
        worst = seg.get("max_abs_residual_s")
        if worst is not None and np.isfinite(worst) and worst * 1e3 > limit_ms:
            problems.append(f"clock segment {seg.get('label') or '(one)'}: sync residual {worst * 1e3:.3f} ms exceeds "
                            f"acquisition.max_residual_ms = {limit_ms:g} ms (onsets are misaligned; check the photodiode)")
    kinds = {k: int(np.sum(d.stimuli.kind == k)) for k in ("clean", "targeted", "random")}
    summary = {
        "path": str(d.path), "day": d.day, "status": d.attrs.get("status"), "schema_version": d.attrs.get("schema_version"),
        "software_version": d.attrs.get("software_version"), "backend": d.attrs.get("backend"),
        "trials": len(d.trials["trial_index"]), "aborted_trials": int(np.sum(~d.trials["fixation_ok"])),
        "presentations": len(valid), "valid_presentations": int(valid.sum()),
        "valid_fraction": float(valid.mean()) if len(valid) else float("nan"),
        "planned_presentations": n_planned, "planned_done": int(done.sum()),
        "channels": d.n_channels, "stimuli": n_stim, "stimuli_by_kind": kinds,
        "image_size_px": int(d.stimuli.pixels.shape[1]) if n_stim else 0,
        "raw_spikes": len(d.spike_times_s), "sync_pulses": len(d.sync_acq_s),
        "random_init_model": d.attrs.get("random_init_model"),
        "spike_source": d.attrs.get("spike_source"), "clock_segments": segments,
    }
    return summary, problems


def recover_day(path: str | Path, plan_path: str | Path | None = None) -> Path:
    """Rebuild a damaged day file from its journal, keeping the damaged file aside.

    The header (config, stimuli, schedule) comes from the damaged file if it can still
    be read, else from ``plan_path`` (any itloop day or plan file with the same stimuli).
    Returns the path of the rebuilt file (the original path; the damaged file is renamed
    ``<name>.damaged-<time>``).
    """
    path = Path(path)
    source = None
    for candidate in ([path] + ([Path(plan_path)] if plan_path else [])):
        try:
            source = read_day(candidate)
            break
        except DayFileError:
            continue
    if source is None:
        raise DayFileError(f"cannot read the header of {path}; pass --plan with the day's plan file to rebuild it from the journal")
    journal = read_journal(journal_path(path))
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    if path.exists():
        path.rename(aside)
    jaside = journal_path(path).with_name(journal_path(path).name + f".{stamp}")
    journal_path(path).rename(jaside)
    ppt, spp = source.presentations_per_trial, source.seconds_per_presentation
    keep = {k: v for k, v in source.attrs.items() if k not in ("schema_version", "software", "software_version", "created_utc",
                                                               "day", "session_id", "backend", "status", "committed_trials",
                                                               "window_start_ms", "window_end_ms")}
    keep["recovered_from"] = aside.name
    w = DayWriter.create(path, config_text=source.config_text, day=source.day, session_id=str(source.attrs["session_id"]),
                         stimuli=source.stimuli, schedule_stim_index=source.schedule_stim_index,
                         presentations_per_trial=ppt, seconds_per_presentation=spp, channel_names=source.channel_names,
                         backend=str(source.attrs["backend"]),
                         window_ms=(float(source.attrs["window_start_ms"]), float(source.attrs["window_end_ms"])),
                         model_info=source.model or None, attrs=keep)
    with w:
        for rows in journal:
            w.append_trial(rows)
    return path


def _clock_segments(d) -> tuple[list[dict], float]:
    """The stored per-presenter-session clock fits and the residual limit of the day's config."""
    import json

    from rig.config import ConfigError, config_from_toml_text

    try:
        limit = float(config_from_toml_text(d.config_text).acquisition.max_residual_ms)
    except (ConfigError, AttributeError):
        limit = 0.5
    text = d.attrs.get("clock_segments")
    if text is None:
        return [], limit
    try:
        return list(json.loads(text)), limit
    except ValueError:
        return [{"label": "unreadable clock_segments attribute", "max_abs_residual_s": float("inf")}], limit
