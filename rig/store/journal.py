"""The day file's journal: one checksummed JSON line per trial, fsynced before HDF5.

Line format: ``<crc32 hex> <json>\n``. Should the HDF5 day file be damaged, the journal
and the plan rebuild it (:func:`rig.store.repair.recover_day`).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from rig.backend import Trial, TrialRecord, TrialRows


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
        "pulse_ok": r.pulse_ok.tolist(),
        "onset_acq_s": rows.onset_acq_s.tolist(), "counts": rows.counts.tolist(), "valid": rows.valid.tolist(),
    }
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
                      **{k: d[k] for k in ("eye_presenter_s", "eye_x_deg", "eye_y_deg", "eye_pupil",
                                           "reward_presenter_s", "reward_ms", "reward_kind") if k in d})
    opt = lambda k: None if d.get(k) is None else np.asarray(d[k], float)  # noqa: E731
    return TrialRows(trial, rec, np.asarray(d["onset_acq_s"], float),
                     np.asarray(d["counts"], float).reshape(len(trial.stim_indices), -1), np.asarray(d["valid"], bool),
                     eye_acq_s=opt("eye_acq_s"), reward_acq_s=opt("reward_acq_s"))


class Journal:
    """Append-only, fsynced, checksummed log of trials: ``<crc32 hex> <json>\\n`` per line."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, rows: TrialRows) -> None:
        payload = rows_to_json(rows)
        self._fh.write(f"{zlib.crc32(payload.encode()):08x} {payload}\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_journal(path: str | Path) -> list[TrialRows]:
    """Every intact trial in a journal (a torn or corrupt last line is ignored)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            crc, _, payload = line.rstrip("\n").partition(" ")
            try:
                if int(crc, 16) != zlib.crc32(payload.encode()):
                    continue
                out.append(rows_from_json(payload))
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
    return out

