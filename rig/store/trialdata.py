"""One trial as the rows it adds to each day-file table, and a checksum over them.

The writer stores exactly :func:`trial_tables`; ``day check`` recomputes
:func:`tables_digest` from the day file's rows and from the journal line of the same
trial and reports any trial where they differ.
"""
from __future__ import annotations

import hashlib

import numpy as np

from rig.backend import TrialRows, fixation_states, invalid_reasons

# table name -> (day-file dataset, dtype, which row counter slices it)
PRESENTATION_TABLES = ("planned_index", "stim_index", "trial_index", "position", "shown", "onset_presenter_s",
                       "onset_acq_s", "frames_on", "frames_mask", "dropped_frame", "fixation_ok", "valid",
                       "invalid_reason", "fixation")
EYE_TABLES = ("trial_index", "t_presenter_s", "t_acq_s", "x_deg", "y_deg", "pupil")
REWARD_TABLES = ("trial_index", "t_presenter_s", "t_acq_s", "duration_ms", "kind")
TABLES = {**{f"presentations/{c}": "presentations" for c in PRESENTATION_TABLES},
          "spikes/counts": "presentations", "spikes/times_s": "spikes", "spikes/channel": "spikes",
          "sync/presenter_s": "sync", "sync/acq_s": "sync", "sync/segment": "sync",
          **{f"eye/{c}": "eye" for c in EYE_TABLES}, **{f"rewards/{c}": "reward" for c in REWARD_TABLES}}
ROW_COUNTERS = ("presentations", "spikes", "sync", "eye", "reward")   # /trials/<counter>_end
TRIAL_FIELDS = ("trial_index", "n_planned", "completed", "fixation_ok", "acquisition_ok", "start_acq_s", "end_acq_s",
                "end_presenter_s")


def trial_tables(rows: TrialRows) -> dict[str, np.ndarray]:
    """The rows one trial appends to every growing table (keys: dataset paths), plus
    ``trials/<field>`` one-element arrays for its row in /trials (without the *_end counters)."""
    t, r = rows.trial, rows.record
    k, c = len(t.stim_indices), r.completed
    shown = np.arange(k) < c

    def pad(a, fill, dt):
        return np.concatenate([np.asarray(a, dt), np.full(k - c, fill, dt)])

    out = {
        "presentations/planned_index": np.asarray(t.planned_indices, "i8"),
        "presentations/stim_index": np.asarray(t.stim_indices, "i8"),
        "presentations/trial_index": np.full(k, t.trial_index, "i8"),
        "presentations/position": np.arange(k, dtype="i4"), "presentations/shown": shown,
        "presentations/onset_presenter_s": pad(r.onset_presenter_s, np.nan, "f8"),
        "presentations/onset_acq_s": np.asarray(rows.onset_acq_s, "f8"),
        "presentations/frames_on": pad(r.frames_on, 0, "i4"), "presentations/frames_mask": pad(r.frames_mask, 0, "i4"),
        "presentations/dropped_frame": pad(r.dropped_frame, False, "?"), "presentations/fixation_ok": shown & r.fixation_monitored,
        "presentations/valid": np.asarray(rows.valid, "?"),
        "presentations/invalid_reason": np.asarray(rows.invalid_reason if rows.invalid_reason is not None
                                                   else invalid_reasons(r, k, rows.valid), "u1"),
        "presentations/fixation": fixation_states(r, k),
        "spikes/counts": np.asarray(rows.counts, "f4"),
        "spikes/times_s": np.asarray(r.spike_times_s, "f8"), "spikes/channel": np.asarray(r.spike_channels, "i4"),
        "sync/presenter_s": np.asarray(r.sync_presenter_s, "f8"), "sync/acq_s": np.asarray(r.sync_acq_s, "f8"),
        "sync/segment": np.array([r.clock_segment] * len(r.sync_acq_s), dtype=object),
    }
    n_eye, n_rew = len(r.eye_presenter_s), len(r.reward_presenter_s)
    eye_acq = rows.eye_acq_s if rows.eye_acq_s is not None and len(rows.eye_acq_s) == n_eye else np.full(n_eye, np.nan)
    rew_acq = rows.reward_acq_s if rows.reward_acq_s is not None and len(rows.reward_acq_s) == n_rew else np.full(n_rew, np.nan)
    out.update({"eye/trial_index": np.full(n_eye, t.trial_index, "i8"), "eye/t_presenter_s": np.asarray(r.eye_presenter_s, "f8"),
                "eye/t_acq_s": np.asarray(eye_acq, "f8"), "eye/x_deg": np.asarray(r.eye_x_deg, "f4"),
                "eye/y_deg": np.asarray(r.eye_y_deg, "f4"), "eye/pupil": np.asarray(r.eye_pupil, "f4"),
                "rewards/trial_index": np.full(n_rew, t.trial_index, "i8"),
                "rewards/t_presenter_s": np.asarray(r.reward_presenter_s, "f8"),
                "rewards/t_acq_s": np.asarray(rew_acq, "f8"), "rewards/duration_ms": np.asarray(r.reward_ms, "f4"),
                "rewards/kind": np.asarray(r.reward_kind, "i1")})
    trow = {"trial_index": (t.trial_index, "i8"), "n_planned": (k, "i4"), "completed": (c, "i4"),
            "fixation_ok": (r.fixation_ok and r.fixation_monitored, "?"), "acquisition_ok": (r.acquisition_ok, "?"),
            "start_acq_s": (r.start_acq_s, "f8"), "end_acq_s": (r.end_acq_s, "f8"),
            "end_presenter_s": (r.end_presenter_s, "f8")}
    out.update({f"trials/{name}": np.asarray([v], dt) for name, (v, dt) in trow.items()})
    return out


def tables_digest(tables: dict[str, np.ndarray]) -> str:
    """sha1 over every table's name, dtype, shape and bytes (NaN payloads included; text
    columns such as the clock segment by their characters)."""
    h = hashlib.sha1()
    for name in sorted(tables):
        a = tables[name]
        if a.dtype == object or a.dtype.kind in "SU":
            a = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype="U")
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stored_tables(tables, trial_row: int) -> dict[str, np.ndarray]:
    """The rows trial ``trial_row`` (0-based row of /trials) holds in ``tables``: an open day
    file, or :meth:`rig.store.reader.DayData.tables` (anything indexed by dataset path)."""
    starts, ends = {}, {}
    for counter in ROW_COUNTERS:
        col = tables[f"trials/{counter}_end"]
        ends[counter] = int(col[trial_row])
        starts[counter] = int(col[trial_row - 1]) if trial_row else 0
    out = {name: tables[name][starts[c]:ends[c]] for name, c in TABLES.items()}
    out.update({f"trials/{f}": tables[f"trials/{f}"][trial_row:trial_row + 1] for f in TRIAL_FIELDS})
    return out
