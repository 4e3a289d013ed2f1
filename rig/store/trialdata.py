"""One trial as the rows it adds to each day-file table, and a checksum over them.

The writer stores exactly :func:`trial_tables`; ``day check`` recomputes
:func:`tables_digest` from the day file's rows and from the journal line of the same
trial and reports any trial where they differ.
"""
from __future__ import annotations

import hashlib

import numpy as np

from rig.backend import TrialRows

# table name -> (day-file dataset, dtype, which row counter slices it)
PRESENTATION_TABLES = ("planned_index", "stim_index", "trial_index", "position", "shown", "onset_presenter_s",
                       "onset_acq_s", "frames_on", "frames_mask", "dropped_frame", "fixation_ok", "valid")
TABLES = {**{f"presentations/{c}": "presentations" for c in PRESENTATION_TABLES},
          "spikes/counts": "presentations", "spikes/times_s": "spikes", "spikes/channel": "spikes",
          "sync/presenter_s": "sync", "sync/acq_s": "sync"}
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
        "presentations/dropped_frame": pad(r.dropped_frame, False, "?"), "presentations/fixation_ok": shown,
        "presentations/valid": np.asarray(rows.valid, "?"),
        "spikes/counts": np.asarray(rows.counts, "f4"),
        "spikes/times_s": np.asarray(r.spike_times_s, "f8"), "spikes/channel": np.asarray(r.spike_channels, "i4"),
        "sync/presenter_s": np.asarray(r.sync_presenter_s, "f8"), "sync/acq_s": np.asarray(r.sync_acq_s, "f8"),
    }
    trow = {"trial_index": (t.trial_index, "i8"), "n_planned": (k, "i4"), "completed": (c, "i4"),
            "fixation_ok": (r.fixation_ok, "?"), "acquisition_ok": (r.acquisition_ok, "?"),
            "start_acq_s": (r.start_acq_s, "f8"), "end_acq_s": (r.end_acq_s, "f8"),
            "end_presenter_s": (r.end_presenter_s, "f8")}
    out.update({f"trials/{name}": np.asarray([v], dt) for name, (v, dt) in trow.items()})
    return out


def tables_digest(tables: dict[str, np.ndarray]) -> str:
    """sha1 over every table's name, dtype, shape and bytes (NaN payloads included)."""
    h = hashlib.sha1()
    for name in sorted(tables):
        a = np.ascontiguousarray(tables[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stored_tables(h5, trial_row: int) -> dict[str, np.ndarray]:
    """The rows trial ``trial_row`` (0-based row of /trials) holds in an open day file."""
    tr = h5["trials"]
    starts, ends = {}, {}
    for counter in ("presentations", "spikes", "sync"):
        col = tr[f"{counter}_end"]
        ends[counter] = int(col[trial_row])
        starts[counter] = int(col[trial_row - 1]) if trial_row else 0
    out = {name: h5[name][starts[c]:ends[c]] for name, c in TABLES.items()}
    out.update({f"trials/{f}": tr[f][trial_row:trial_row + 1] for f in TRIAL_FIELDS})
    return out
