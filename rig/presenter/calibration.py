"""The eye calibration routine on the presenter's screen (5 or 9 targets).

For each target (degrees from the screen centre, x right, y up) a dot is drawn every
frame while the eye source's raw samples are read. A target is accepted when the raw gaze
has rested for ``hold_ms`` (counting from ``settle_ms`` after the target appeared): every raw sample of that span lies within ``window`` raw units
of their median (``window`` = ``window_deg`` x ``raw_per_deg``, the expected raw units per
degree; 1 for a tracker that already sends degrees), or when the experimenter presses the
accept key (space). From the second target on, an automatic acceptance also needs the
resting place to lie more than ``2 x window`` from the previous target's (the eye must
have moved there: a gaze still resting on the old target is not taken for the new one).
A reward follows each accepted target. A target not accepted within
``timeout_ms`` is skipped. The routine returns, per target, the raw samples of the
accepted span; the controller fits the map (``rig.sources.calibration``).
"""
from __future__ import annotations

import time

import numpy as np

from rig.backend import GazeSamples


def run_calibration(stage, eye, targets_deg: np.ndarray, *, window_deg: float, hold_ms: float, timeout_ms: float,
                    raw_per_deg: float = 1.0, settle_ms: float = 0.0, should_abort=lambda: None, on_accept=lambda i: None,
                    pace_hz: float | None = None, accept_key: str = "space", announce=None) -> list[dict]:
    """Show each target until accepted; returns [{target_deg, accepted, raw (n, 2), how}] per target."""
    from psychopy import event

    px_per_deg = stage.monitor.px(1.0)
    period = 1.0 / pace_hz if pace_hz else 0.0
    out: list[dict] = []
    radius = window_deg * raw_per_deg
    previous = None                                          # raw resting place of the last accepted target
    hold = hold_ms / 1000.0
    for i, (x, y) in enumerate(np.asarray(targets_deg, float)):
        eye.read()                                           # start fresh at this target
        parts: list[GazeSamples] = []
        t_show = None
        accepted, how, raw = False, "timeout", np.zeros((0, 2))
        event.clearEvents()
        if announce is not None:
            announce(float(x), float(y))
        while True:
            if should_abort():
                return out + [{"target_deg": [x, y], "accepted": False, "raw": np.zeros((0, 2)), "how": "aborted"}]
            stage.draw_target(x * px_per_deg, y * px_per_deg)
            t_flip = stage.win.flip()
            if period:
                time.sleep(period)
            t_show = t_show if t_show is not None else eye.now_s()
            s = eye.read()
            if len(s):
                keep = s.t_s >= t_show + settle_ms / 1000.0          # the eye needs time to get there
                if keep.any():
                    parts.append(GazeSamples(*(getattr(s, n)[keep] for n in
                                               ("t_s", "x_deg", "y_deg", "pupil", "raw_x", "raw_y"))))
            allraw = GazeSamples.concat(parts)
            recent = allraw.t_s >= allraw.t_s[-1] - hold if len(allraw) else np.zeros(0, bool)
            if len(allraw) and recent.sum() >= 3:
                xy = np.c_[allraw.raw_x[recent], allraw.raw_y[recent]]
                med = np.median(xy, axis=0)
                span_ok = allraw.t_s[recent][0] <= allraw.t_s[-1] - hold * 0.9
                moved = previous is None or np.hypot(*(med - previous)) > 2 * radius
                if span_ok and moved and np.all(np.hypot(*(xy - med).T) <= radius):
                    accepted, how, raw = True, "stable", xy
            if event.getKeys(keyList=[accept_key]) and len(allraw):
                sel = allraw.t_s >= allraw.t_s[-1] - hold
                accepted, how, raw = True, "key", np.c_[allraw.raw_x[sel], allraw.raw_y[sel]]
            if accepted:
                previous = np.median(raw, axis=0) if len(raw) else previous
                on_accept(i)
                break
            if t_flip is not None and len(allraw) and allraw.t_s[-1] - t_show > timeout_ms / 1000.0:
                break
            if not len(allraw) and eye.now_s() - t_show > timeout_ms / 1000.0:
                break
        out.append({"target_deg": [float(x), float(y)], "accepted": accepted, "raw": raw, "how": how})
    stage.show_blank()
    return out
