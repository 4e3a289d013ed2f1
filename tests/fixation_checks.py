"""Shared checks of the fixation end-to-end tests (``--backend presenter`` and ``--backend rig``):
that every fixation abort came on the frame after the check that first saw an injected
breaking sample (from the presenter's own flip log and per-frame gaze records), that the
aborted presentations were re-queued, and reading what the reward driver wrote to a pty."""
from __future__ import annotations

import os

import numpy as np

from rig.link.protocol import KIND_CODE


def check_aborts_on_next_frame(aborted: list, injected: list[float], tol_s: float = 0.005) -> list[float]:
    """Assert, for each aborted ``TrialResult``, that its last frame is the abort blank, that every
    image/mask frame before it had gaze inside, that the aborting check saw the breaking sample
    while the previous check had not, and that the breaking sample is an injected break (LSL
    clock, within ``tol_s``). Returns breaking sample -> blank flip latencies, ms (informational)."""
    abort_kind = KIND_CODE["abort_blank"]
    image_kinds = (KIND_CODE["stim_on"], KIND_CODE["mask_on"])
    for r in aborted:
        assert r.reason == "fixation broken", r.reason
        kind, gaze_t, gaze_in = r.frame_kind, r.array("frame_gaze_t"), r.array("frame_gaze_in", bool)
        last = len(kind) - 1
        assert kind[last] == abort_kind and not (kind[:last] == abort_kind).any()
        checked = np.flatnonzero(np.isin(kind[:last], image_kinds))
        assert gaze_in[checked].all()                       # every image/mask frame before it had gaze inside
        t_break = r.raw["break_t_s"]
        assert t_break is not None and gaze_t[last] >= t_break   # the aborting check saw the breaking sample
        if checked.size:
            assert gaze_t[checked[-1]] < t_break             # the previous check had not seen it yet
        t_lsl = t_break - r.raw["eye_offset_s"]              # the breaking sample is an injected break
        assert min(abs(t_lsl - t) for t in injected) < tol_s, (t_lsl, injected)
    return [1000 * (r.frame_time_s[-1] - r.raw["break_t_s"]) for r in aborted]


def check_requeued(pres: dict, n_planned: int) -> None:
    """Every planned slot with an invalid (aborted or unsynchronised) showing was shown again
    later and is valid exactly once, at its last showing."""
    for planned in np.unique(pres["planned_index"][~pres["valid"]]):
        rows = np.flatnonzero(pres["planned_index"] == planned)
        assert pres["valid"][rows[-1]] and not pres["valid"][rows[:-1]].any()
    assert pres["valid"].sum() == n_planned


def drain_pty(master: int) -> bytes:
    """Everything waiting on the master side of a pty (non-blocking)."""
    out = b""
    os.set_blocking(master, False)
    try:
        while True:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
    except (BlockingIOError, OSError):
        pass
    return out
