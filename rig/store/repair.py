"""Checking a day file (``itloop day check``) and rebuilding a damaged one from its journal."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from rig.store.dayfile import DayFileError, DayHeader, DayWriter, mismatched_trials
from rig.store.journal import JournalError, journal_path, read_journal, read_journal_report
from rig.store.lock import DayLock, locked_by
from rig.store.origin import UNKNOWN, Origin
from rig.store.reader import read_day


def check_day(path: str | Path) -> tuple[dict, list[str]]:
    """Validate a day file. Returns (summary, problems); problems empty means valid.

    Every committed trial is compared, row for row (sha1 of its rows in every table),
    with its line in the journal, when the journal is there.
    """
    pid = locked_by(path)
    if pid is not None:
        raise DayFileError(f"{path} is being recorded by PID {pid}; check it when that session has ended "
                           "(it is not damaged; do not recover it)")
    d = read_day(path)
    problems: list[str] = []
    journal_state = _journal_problems(Path(path), d, problems)
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
    _validity_problems(d, valid, problems)
    back = _acquisition_time_goes_back(d)
    if back:
        problems.append(back)
    for name in d.unreadable_attrs:
        problems.append(f"root attribute {name!r} cannot be read (torn by a write that failed, e.g. on a full disk); "
                        f"`itloop day recover {path}` or --resume writes it again")
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
        "trials": len(d.trials["trial_index"]), "aborted_trials": int(np.sum(d.trials["completed"] < d.trials["n_planned"])),
        "presentations": len(valid), "valid_presentations": int(valid.sum()),
        "invalid_reasons": _reason_counts(pres),
        "valid_fraction": float(valid.mean()) if len(valid) else float("nan"),
        "planned_presentations": n_planned, "planned_done": int(done.sum()),
        "channels": d.n_channels, "stimuli": n_stim, "stimuli_by_kind": kinds,
        "image_size_px": int(d.stimuli.pixels.shape[1]) if n_stim else 0,
        "raw_spikes": len(d.spike_times_s), "sync_pulses": len(d.sync_acq_s),
        "random_init_model": d.attrs.get("random_init_model"),
        "origin": d.origin.kind, "replayed_from": d.origin.replayed_from,
        "spike_source": d.attrs.get("spike_source"), "clock_segments": segments,
        "journal": journal_state,
    }
    return summary, problems


def _journal_problems(path: Path, d, problems: list[str]) -> str:
    """Compare committed trials with the journal; returns a one-phrase journal state."""
    jp = journal_path(path)
    if not jp.exists():
        return "absent (trials not cross-checked)"
    try:
        journal, torn = read_journal_report(jp)
    except JournalError as exc:
        problems.append(str(exc))
        return "unreadable"
    committed = len(d.trials["trial_index"])
    bad = mismatched_trials(d.tables(), committed, journal)
    missing = [r for r in bad if r >= len(journal)]
    differ = [r for r in bad if r < len(journal)]
    if differ:
        problems.append(f"{len(differ)} committed trial(s) differ from the journal (checksums; first: trial row {differ[0]}); "
                        f"`itloop day recover {path}` rebuilds the file from the journal")
    if missing:
        problems.append(f"the journal holds {len(journal)} trials but the file commits {committed}")
    state = f"{len(journal)} trials, {committed - len(bad)} of {committed} committed trials match"
    if len(journal) > committed:
        state += f"; {len(journal) - committed} more in the journal (--resume writes them)"
    if torn:
        state += f"; an unfinished last line of {torn} bytes (cut on --resume)"
    return state


def recover_day(path: str | Path, plan_path: str | Path | None = None) -> Path:
    """Rebuild a day file from its journal, beside the old one, then swap it in.

    The header (config, stimuli, schedule, channels) comes from the old file if it can
    still be read, else from ``plan_path`` (the day's plan; channels then come from the
    journal). The new file is built as ``<name>.rebuilding``, checked (every trial
    against the journal, ``check_day``), and only then renamed over the old path, whose
    file is kept as ``<name>.damaged-<time>``. Any failure before the swap leaves every
    existing file as it was. Returns the path of the rebuilt file.
    """
    path = Path(path)
    pid = locked_by(path)
    if pid is not None:
        raise DayFileError(f"{path} is being recorded by PID {pid}; it is not damaged. Nothing was changed.")
    jp = journal_path(path)
    if not jp.exists():
        raise DayFileError(f"{path} has no journal ({jp.name}), so there is nothing to rebuild it from. Nothing was changed.")
    journal = read_journal(jp)
    header, complete = _recovery_header(path, plan_path, journal)
    lock = DayLock(path)
    try:
        lock.acquire()
    except BlockingIOError as exc:
        raise DayFileError(f"{path} is being recorded by PID {getattr(exc, 'pid', '?')}. Nothing was changed.") from None
    tmp = path.with_name(path.name + ".rebuilding")
    try:
        for stale in (tmp, journal_path(tmp)):
            if stale.exists():
                stale.unlink()          # an earlier rebuild that never finished
        _rebuild(tmp, header, journal, complete, path)
        journal_path(tmp).unlink()                 # identical to the original journal, which stays in place
        if path.exists():
            os.link(path, path.with_name(f"{path.name}.damaged-{header.attrs['recovered_utc']}"))  # the old file, renamed
        os.replace(tmp, path)                      # the swap: one atomic rename
    except OSError as exc:
        raise DayFileError(f"could not rebuild {path} ({exc.strerror or exc}); {path} was left as it was") from None
    finally:
        for leftover in (tmp, journal_path(tmp)):
            if leftover.exists():
                leftover.unlink()
        lock.release()
    return path


def _recovery_header(path: Path, plan_path: str | Path | None, journal: list) -> tuple[DayHeader, bool]:
    """The rebuilt file's header (from the damaged file, else from its plan) and whether the
    source was complete; raises DayFileError (nothing changed) if neither can be read."""
    source, from_plan = None, False
    # the damaged file itself (whole, else its header alone), else the plan
    for candidate, is_plan, header_only in ([(path, False, False), (path, False, True)]
                                            + ([(Path(plan_path), True, False)] if plan_path else [])):
        try:
            source, from_plan = read_day(candidate, header_only=header_only), is_plan
            break
        except DayFileError:
            continue
    if source is None:
        hint = "; pass --plan with the day's plan file" if not plan_path else f" nor of {plan_path}"
        raise DayFileError(f"cannot read the header of {path}{hint} to rebuild it from the journal. Nothing was changed.")
    n_ch = journal[0].counts.shape[1] if journal else source.n_channels
    if n_ch == 0:
        raise DayFileError(f"cannot rebuild {path}: the journal is empty and {source.path.name} records no channels. "
                           "Nothing was changed.")
    channel_names = source.channel_names
    if len(channel_names) != n_ch:
        if source.n_channels:
            raise DayFileError(f"the journal of {path} has {n_ch} channels but {source.path.name} has "
                               f"{source.n_channels}; is it the right file? Nothing was changed.")
        channel_names = [f"ch{c:03d}" for c in range(n_ch)]   # a plan has none: names are not in the journal
    window_ms = source.window_ms
    if from_plan or window_ms[1] <= window_ms[0]:
        window = source.config.window
        window_ms = (float(window.start_ms), float(window.end_ms))
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    keep = source.header().attrs
    keep.update({"recovered_from": path.name if path.exists() else "(missing)", "recovered_utc": stamp})
    if from_plan:
        keep["recovered_header_from"] = source.path.name
        if len(source.channel_names) != n_ch:
            keep["recovered_channel_names"] = "generic (not in the journal)"
        return source.header(session_id=f"recovered-day{source.day:03d}-{stamp}", channel_names=channel_names,
                            backend="unknown (recovered from the journal)", window_ms=window_ms, attrs=keep,
                            status="recording", origin=Origin(UNKNOWN), identifier=""), False
    return source.header(channel_names=channel_names, window_ms=window_ms, attrs=keep,
                        status="recording"), source.complete


def _rebuild(tmp: Path, header: DayHeader, journal: list, complete: bool, path: Path) -> None:
    """Write ``header`` and every journalled trial into ``tmp`` and check it against the journal
    (a failure names ``path``, the file being rebuilt, which is left as it was)."""
    done = np.zeros(len(header.schedule_stim_index), bool)   # planned slots the journal recorded validly
    with DayWriter.create(tmp, header) as w:
        for rows in journal:
            w.append_trial(rows)
            done[np.asarray(rows.trial.planned_indices, np.int64)[np.asarray(rows.valid, bool)]] = True
        if complete and done.all():
            w.mark_complete()
    _, problems = check_day(tmp)   # verify before anything is replaced
    rebuilt = read_day(tmp)
    if len(rebuilt.trials["trial_index"]) != len(journal):
        problems.append(f"rebuilt {len(rebuilt.trials['trial_index'])} trials of the journal's {len(journal)}")
    if problems:
        raise DayFileError(f"the rebuilt file failed its check ({'; '.join(problems)}); {path} was left as it was")


def _acquisition_time_goes_back(d) -> str:
    """A problem line when the committed trials' acquisition-clock times go back (e.g. a
    simulated acquisition clock restarted with a presenter): every time in the file and its
    NWB export is on that clock. Allowed only where the acquisition system itself restarted:
    the clock segment's acquisition part (its label after the first '/', the live rig's run
    and acquisition epoch) changes there."""
    starts = np.asarray(d.trials.get("start_acq_s", []), float)
    ends = np.asarray(d.trials.get("end_acq_s", []), float)
    epoch = _trial_acquisition_epochs(d)
    last = None                        # (end time, epoch) of the previous trial with finite times
    for row in range(len(starts)):
        if not (np.isfinite(starts[row]) and np.isfinite(ends[row])):
            continue
        if ends[row] < starts[row] or (last is not None and starts[row] < last[0] and epoch[row] == last[1]):
            before = last[0] if last is not None and starts[row] < last[0] else starts[row]
            after = starts[row] if before != starts[row] else ends[row]
            return (f"acquisition-clock times go backwards at trial row {row} ({before:.3f} s -> {after:.3f} s) "
                    "although the acquisition system did not restart: its times (and an NWB export's) are not in order")
        last = (ends[row], epoch[row])
    return ""


def _trial_acquisition_epochs(d) -> list[str]:
    """Per committed trial: the acquisition part of its clock segment label (after the first
    '/'; '' for backends whose acquisition clock is one for the whole day)."""
    import h5py

    n = len(d.trials.get("sync_end", []))
    labels = [""] * n
    try:
        with h5py.File(d.path, "r") as h5:
            if "segment" not in h5["sync"]:
                return labels
            seg = h5["sync/segment"].asstr()[: int(d.trials["sync_end"][-1]) if n else 0]
    except (OSError, KeyError, RuntimeError):
        return labels
    ends = np.asarray(d.trials["sync_end"], np.int64)
    current = ""
    for row in range(n):
        if ends[row] > 0 and ends[row] <= len(seg):
            current = str(seg[ends[row] - 1]).partition("/")[2]
        labels[row] = current
    return labels


def _reason_counts(pres: dict) -> dict[str, int]:
    """Invalid presentations per reason (text of rig.backend.InvalidReason), most frequent first."""
    from rig.backend import INVALID_REASON_TEXT, InvalidReason

    codes, counts = np.unique(np.asarray(pres["invalid_reason"], int), return_counts=True)
    named = {(INVALID_REASON_TEXT[InvalidReason(c)] if c in InvalidReason._value2member_map_ else f"code {c}"): int(n)
             for c, n in zip(codes, counts) if c != 0}
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))


def _validity_problems(d, valid: np.ndarray, problems: list[str]) -> None:
    """A day with presentations but none valid, or whose presentations shown are valid in a
    fraction under ``acquisition.min_valid_fraction`` of its config, fails, naming the leading reasons."""
    from rig.config import ConfigError, config_from_toml_text

    try:
        floor = float(config_from_toml_text(d.config_text).acquisition.min_valid_fraction)
    except (ConfigError, AttributeError):
        floor = 0.5
    if not len(valid):
        return
    why = ", ".join(f"{k} x{n}" for k, n in list(_reason_counts(d.presentations).items())[:3]) or "none stored"
    if not valid.any():
        problems.append(f"no valid presentation in {len(valid)} attempted (invalid because: {why}); check the sync "
                        "line with `itloop present --timing-check --acquisition`")
    shown = np.asarray(d.presentations["shown"], bool)
    frac = valid.sum() / max(int(shown.sum()), 1)        # of those shown: fixation breaks are the animal's, not the rig's
    if valid.any() and frac < floor:
        problems.append(f"only {frac:.0%} of the {int(shown.sum())} presentations shown are valid, under "
                        f"acquisition.min_valid_fraction = {floor:g} (invalid because: {why})")


def _clock_segments(d) -> tuple[list[dict], float]:
    """The stored per-presenter-session clock fits and the residual limit of the day's config."""
    import json

    try:
        limit = float(d.config.acquisition.max_residual_ms)
    except DayFileError:
        limit = 0.5
    text = d.attrs.get("clock_segments")
    if text is None:
        return [], limit
    try:
        return list(json.loads(text)), limit
    except ValueError:
        return [{"label": "unreadable clock_segments attribute", "max_abs_residual_s": float("inf")}], limit
