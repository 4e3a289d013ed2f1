"""The day file's journal: one checksummed JSON line per trial, fsynced before HDF5.

Line format: ``<crc32 hex> <json>\n``. Should the HDF5 day file be damaged, the journal
and the plan rebuild it (:func:`rig.store.repair.recover_day`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import zlib
from pathlib import Path

import numpy as np

from rig.backend import ClockState, Trial, TrialRecord, TrialRows
from rig.errors import UserError


def journal_path(day_path: str | Path) -> Path:
    p = Path(day_path)
    return p.with_name(p.name + ".journal")


def rows_to_json(rows: TrialRows) -> str:
    r = rows.record
    d = {
        "trial_index": rows.trial.trial_index, "stim_indices": list(rows.trial.stim_indices),
        "planned_indices": list(rows.trial.planned_indices), "completed": r.completed,
        "fixation_ok": r.fixation_ok, "acquisition_ok": r.acquisition_ok,
        "onset_presenter_s": r.onset_presenter_s.tolist(), "frames_on": r.frames_on.tolist(),
        "frames_mask": r.frames_mask.tolist(), "dropped_frame": r.dropped_frame.tolist(),
        "sync_presenter_s": r.sync_presenter_s.tolist(), "sync_acq_s": r.sync_acq_s.tolist(),
        "spike_times_s": r.spike_times_s.tolist(), "spike_channels": r.spike_channels.tolist(),
        "start_acq_s": r.start_acq_s, "end_acq_s": r.end_acq_s, "note": r.note,
        "end_presenter_s": r.end_presenter_s, "clock_segment": r.clock_segment,
        "pulse_ok": np.asarray(r.pulse_ok, bool).tolist(),   # None only before TrialRecord normalises it
        "clock_aligned": r.clock_aligned, "fixation_monitored": r.fixation_monitored,
        "onset_acq_s": rows.onset_acq_s.tolist(), "counts": rows.counts.tolist(), "valid": rows.valid.tolist(),
    }
    if rows.invalid_reason is not None:
        d["invalid_reason"] = np.asarray(rows.invalid_reason).tolist()
    if rows.clock is not None:   # the runner's clock fits after this trial (what the commit stores)
        d["clock"] = dataclasses.asdict(rows.clock)
    if len(r.eye_presenter_s) or len(r.reward_presenter_s):
        d.update({"eye_presenter_s": r.eye_presenter_s.tolist(), "eye_x_deg": r.eye_x_deg.tolist(),
                  "eye_y_deg": r.eye_y_deg.tolist(), "eye_pupil": r.eye_pupil.tolist(),
                  "reward_presenter_s": r.reward_presenter_s.tolist(), "reward_ms": r.reward_ms.tolist(),
                  "reward_kind": r.reward_kind.tolist(),
                  "eye_acq_s": None if rows.eye_acq_s is None else np.asarray(rows.eye_acq_s).tolist(),
                  "reward_acq_s": None if rows.reward_acq_s is None else np.asarray(rows.reward_acq_s).tolist()})
    return json.dumps(d, allow_nan=True)


def rows_from_json(text: str) -> TrialRows:
    d = json.loads(text)
    trial = Trial(d["trial_index"], tuple(d["stim_indices"]), tuple(d["planned_indices"]))
    rec = TrialRecord(d["trial_index"], d["completed"], d["fixation_ok"], d["onset_presenter_s"], d["frames_on"],
                      d["frames_mask"], d["dropped_frame"], d["sync_presenter_s"], d["sync_acq_s"],
                      d["spike_times_s"], d["spike_channels"], d["start_acq_s"], d["end_acq_s"],
                      d["acquisition_ok"], d["note"], d.get("end_presenter_s", float("nan")),
                      clock_segment=str(d.get("clock_segment", "")), pulse_ok=d.get("pulse_ok"),
                      clock_aligned=bool(d.get("clock_aligned", True)),
                      fixation_monitored=bool(d.get("fixation_monitored", True)),
                      **{k: d[k] for k in ("eye_presenter_s", "eye_x_deg", "eye_y_deg", "eye_pupil",
                                           "reward_presenter_s", "reward_ms", "reward_kind") if k in d})
    return TrialRows(trial, rec, np.asarray(d["onset_acq_s"], float),
                     np.asarray(d["counts"], float).reshape(len(trial.stim_indices), -1), np.asarray(d["valid"], bool),
                     eye_acq_s=_optional_array(d, "eye_acq_s"), reward_acq_s=_optional_array(d, "reward_acq_s"),
                     invalid_reason=None if d.get("invalid_reason") is None else np.asarray(d["invalid_reason"], np.uint8),
                     clock=_clock_state(d.get("clock")))


def _clock_state(c: dict | None) -> ClockState | None:
    """The journalled clock fits (None on lines written before they travelled with the trial)."""
    if c is None:
        return None
    return ClockState(float(c["offset_s"]), float(c["drift"]), float(c["residual_sd_s"]), int(c["n_pairs"]),
                      [dict(s) for s in c.get("segments", [])])


def _optional_array(d: dict, key: str) -> np.ndarray | None:
    """``d[key]`` as a float array; None when the journal line has none (older lines, no tracker)."""
    return None if d.get(key) is None else np.asarray(d[key], float)


class JournalError(UserError):
    """A journal line that is corrupt in the middle of the file (not a torn tail): never skipped silently."""


class Journal:
    """Append-only, fsynced, checksummed log of trials: ``<crc32 hex> <json>\\n`` per line.

    Opening it cuts a torn tail (the unfinished last line of a crashed writer, which has
    no newline) so the next line never merges with it; the fragment is kept beside the
    journal as ``<journal>.torn-<time>``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.torn_bytes = cut_torn_tail(self.path)
        self._fh = open(self.path, "ab")

    def append(self, rows: TrialRows) -> None:
        """Write one line and fsync it; on an error (ENOSPC) the OSError propagates and the
        partial line is cut the next time the journal is opened."""
        payload = rows_to_json(rows)
        self._fh.write(f"{zlib.crc32(payload.encode()):08x} {payload}\n".encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass  # a write that failed (disk full) fails again on close; the torn tail is cut on reopen


def cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; returns the bytes cut (0 if none).

    The cut bytes are first saved to ``<path>.torn-<time>``.
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "r+b") as fh:
        end = size
        block = 1 << 16
        while end > 0:  # find the last newline from the end
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                break
            end = start
        else:
            keep = 0
        if keep == size:
            return 0
        fh.seek(keep)
        fragment = fh.read()
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
        path.with_name(f"{path.name}.torn-{stamp}").write_bytes(fragment)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


def read_journal(path: str | Path) -> list[TrialRows]:
    """Every trial in a journal, in order.

    An unfinished last line (no newline: the trial in flight when a writer died) is not a
    trial and is left out; any complete line that fails its checksum or cannot be parsed
    raises :class:`JournalError` naming the line, never skipped silently.
    """
    return read_journal_report(path)[0]


def read_journal_report(path: str | Path) -> tuple[list[TrialRows], int]:
    """(trials, bytes of an unfinished last line); see :func:`read_journal`."""
    out: list[TrialRows] = []
    p = Path(path)
    if not p.exists():
        return out, 0
    data = p.read_bytes()
    lines = data.split(b"\n")
    torn = len(lines[-1])          # after the last newline: empty, or an unfinished line
    for number, line in enumerate(lines[:-1], start=1):
        crc, _, payload = line.partition(b" ")
        try:
            ok = int(crc, 16) == zlib.crc32(payload)
        except ValueError:
            ok = False
        if not ok:
            raise JournalError(f"journal {p} line {number} fails its checksum (the file was altered or the disk "
                               "corrupted it); no trial is skipped silently: inspect or remove that line by hand")
        try:
            out.append(rows_from_json(payload.decode("utf-8")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise JournalError(f"journal {p} line {number} has a valid checksum but cannot be read ({exc})") from None
    return out, torn
