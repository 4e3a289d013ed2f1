"""One RSVP trial as a flat loop of frames (after PsychoPy's timing/callOnFlip.py demo).

A trial is: fixation point for ``n_fix`` frames, then for each image ``n_on`` frames of the
image and ``n_mask`` frames of grey mask, then a blank frame. Every flip that changes the
screen is stamped with its flip time (``win.timeOnFlip``) and fires the marker output
(``win.callOnFlip``). ``should_abort`` is asked before every frame; when it returns a
reason the next flip shows a blank screen and the loop ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rig.link.protocol import KIND_CODE
from rig.presenter.markers import CODES, MarkerOutput, NoMarker
from rig.presenter.timing import long_intervals



def frame_sequence(n_images: int, n_fix: int, n_on: int, n_mask: int) -> list[tuple[str, int]]:
    """What each frame shows: (kind, presentation index or -1), ending with one blank frame."""
    frames = [("fix_on", -1)] * n_fix
    for i in range(n_images):
        frames += [("stim_on", i)] * n_on + [("mask_on", i)] * n_mask
    return frames + [("blank", -1)]


@dataclass
class TrialLog:
    """Every flip of one trial: its time (presenter clock, s), what it showed, and events."""

    frame_time_s: np.ndarray
    frame_kind: np.ndarray            # int8 codes into rig.link.protocol.FRAME_KINDS
    frame_pres: np.ndarray            # int32 presentation index, -1 for none
    events: list[dict]                # screen changes: {kind, pres, frame, t}
    aborted: bool = False
    reason: str = ""
    captures: list[np.ndarray] = field(default_factory=list)   # back buffer before each flip

    def presentations(self, n_images: int, n_on: int, n_mask: int, refresh_hz: float) -> dict:
        """Per presentation: onset/mask flip times, frames counted, dropped flag; and ``completed``.

        Presentation i is complete when all its ``n_on`` image frames and ``n_mask`` mask
        frames were flipped and a later flip ended them. ``completed`` counts the complete
        presentations from the start of the trial.
        """
        kind, pres, t = self.frame_kind, self.frame_pres, self.frame_time_s
        frames_on = np.array([np.sum((kind == KIND_CODE["stim_on"]) & (pres == i)) for i in range(n_images)])
        frames_mask = np.array([np.sum((kind == KIND_CODE["mask_on"]) & (pres == i)) for i in range(n_images)])
        complete = (frames_on == n_on) & (frames_mask == n_mask)
        completed = int(np.argmin(complete)) if not complete.all() else n_images
        onset = np.full(n_images, np.nan)
        mask = np.full(n_images, np.nan)
        dropped = np.zeros(n_images, dtype=bool)
        for e in self.events:
            if e["kind"] == "stim_on":
                onset[e["pres"]] = e["t"]
            elif e["kind"] == "mask_on":
                mask[e["pres"]] = e["t"]
        for i in range(n_images):
            idx = np.flatnonzero(pres == i)
            if len(idx):
                span = t[idx[0]: idx[-1] + 2]          # through the flip that ended the mask
                dropped[i] = bool(long_intervals(span, refresh_hz).any())
        return {"completed": completed, "onset_s": onset, "mask_s": mask, "frames_on": frames_on,
                "frames_mask": frames_mask, "dropped": dropped}


def run_frames(stage, images: list[int], n_fix: int, n_on: int, n_mask: int, *,
               should_abort: Callable[[], str | None] = lambda: None,
               marker: MarkerOutput | None = None, pace_hz: float | None = None,
               capture: bool = False) -> TrialLog:
    """Show one trial on ``stage``; ``images`` are texture indices in presentation order.

    ``pace_hz``: sleep so flips come at that rate (for displays without vertical sync,
    e.g. Xvfb); None on a real monitor, where ``flip`` waits for the vertical blank.
    """
    from psychopy import core

    win = stage.win
    marker = marker or NoMarker()
    period = 1.0 / pace_hz if pace_hz else 0.0
    times, kinds, press, events, captures = [], [], [], [], []
    previous = None
    next_flip = None
    reason = None
    for kind, pres in frame_sequence(len(images), n_fix, n_on, n_mask):
        reason = should_abort()
        if reason:
            kind, pres = "abort_blank", -1
        stage.draw(kind, images[pres] if kind == "stim_on" else -1)
        if capture:
            captures.append(stage.capture("back"))
        if (kind, pres) != previous:                       # this flip changes the screen
            event = {"kind": kind, "pres": pres, "frame": len(times)}
            win.callOnFlip(marker.fire, CODES[kind])
            win.timeOnFlip(event, "t")
            if hasattr(marker, "publish"):                 # after timeOnFlip: the stamp is set when it runs
                win.callOnFlip(marker.publish, event, images[pres] if kind == "stim_on" else -1)
            events.append(event)
        elif previous is not None and len(events) and events[-1]["frame"] == len(times) - 1:
            win.callOnFlip(marker.clear)                   # end a one-frame marker pulse
        if period:
            now = core.getTime()
            next_flip = now if next_flip is None or next_flip < now - period else next_flip + period
            if next_flip > now:
                time.sleep(next_flip - now)
        times.append(win.flip())
        kinds.append(KIND_CODE[kind])
        press.append(pres)
        previous = (kind, pres)
        if reason:
            break
    return TrialLog(np.array(times, dtype=np.float64), np.array(kinds, dtype=np.int8),
                    np.array(press, dtype=np.int32), events, aborted=bool(reason), reason=reason or "",
                    captures=captures)
