"""One RSVP trial as a flat loop of frames (after PsychoPy's timing/callOnFlip.py demo).

A trial is: fixation point for ``n_fix`` frames, then for each image ``n_on`` frames of the
image and ``n_mask`` frames of grey mask, then a blank frame. Every flip that changes the
screen is stamped with its flip time (``win.timeOnFlip``) and fires the marker output
(``win.callOnFlip``). ``should_abort`` is asked before every frame; when it returns a
reason the next flip shows a blank screen and the loop ends.

With a ``fixation`` control (``rig.presenter.fixation``) the fixation point stays up until
gaze has been in the window for the acquire time (or the acquire timeout aborts the
trial), and before every image and mask frame the newest gaze samples are checked: a
break turns that very frame into the abort blank, so the image is gone on the next flip.
What each check saw is logged per frame (``frame_gaze_t``, ``frame_gaze_in``).
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
    frame_gaze_t: np.ndarray | None = None    # newest gaze sample the check before each frame saw (NaN: no check)
    frame_gaze_in: np.ndarray | None = None   # that sample was inside the fixation window
    break_t: float = float("nan")             # presenter-clock time of the sample that broke fixation

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


def _mark_flip(win, marker, events: list, kind: str, pres: int, previous, frame: int, image: int) -> None:
    """Queue the coming flip's marker work: on a flip that changes the screen, fire its code,
    stamp the event with the flip time and publish it; one frame later, end the pulse."""
    if (kind, pres) != previous:                       # this flip changes the screen
        event = {"kind": kind, "pres": pres, "frame": frame}
        win.callOnFlip(marker.fire, CODES[kind])
        win.timeOnFlip(event, "t")
        if hasattr(marker, "publish"):                 # after timeOnFlip: the stamp is set when it runs
            win.callOnFlip(marker.publish, event, image)
        events.append(event)
    elif previous is not None and len(events) and events[-1]["frame"] == frame - 1:
        win.callOnFlip(marker.clear)                   # end a one-frame marker pulse


def _pace(now: float, next_flip: float | None, period: float) -> float:
    """Sleep until the next paced flip time (``period`` s apart) and return it."""
    next_flip = now if next_flip is None or next_flip < now - period else next_flip + period
    if next_flip > now:
        time.sleep(next_flip - now)
    return next_flip


def run_frames(stage, images: list[int], n_fix: int, n_on: int, n_mask: int, *,
               should_abort: Callable[[], str | None] = lambda: None,
               marker: MarkerOutput | None = None, pace_hz: float | None = None,
               capture: bool = False, fixation=None, refresh_hz: float | None = None,
               check_lead_s: float = 0.0) -> TrialLog:
    """Show one trial on ``stage``; ``images`` are texture indices in presentation order.

    ``pace_hz``: sleep so flips come at that rate (for displays without vertical sync,
    e.g. Xvfb); None on a real monitor, where ``flip`` waits for the vertical blank.
    ``fixation``: a ``FixationControl``; None keeps the fixed ``n_fix`` fixation frames
    (breaks then come from the controller's ``abort``). ``check_lead_s`` > 0 (with
    ``refresh_hz``): during the RSVP, wait until that long before the next vertical blank
    before reading the gaze and drawing, so a break is caught as late as possible and the
    blank goes up on the very next refresh.
    """
    from psychopy import core
    from psychopy import logging as _pl

    flip_clock, win = _pl.defaultClock.getTime, stage.win
    marker = marker or NoMarker()
    period = 1.0 / pace_hz if pace_hz else 0.0
    times: list[float] = []
    events: list[dict] = []
    kinds, press, captures, gaze_t, gaze_in = [], [], [], [], []
    previous = None
    next_flip = None
    reason = None
    frames = frame_sequence(len(images), 0 if fixation is not None else n_fix, n_on, n_mask)
    i = 0
    acquiring = fixation is not None
    fix_onset = None
    if fixation is not None:
        fixation.start_trial()
        timeout = fixation.params.acquire_timeout_ms / 1000.0
    while True:
        seen = (np.nan, False)
        if acquiring:
            kind, pres = "fix_on", -1
            if fix_onset is not None:
                if fixation.acquired():
                    acquiring = False
                    continue
                if times[-1] - fix_onset > timeout:
                    reason = f"fixation not acquired within {timeout * 1000:.0f} ms"
        else:
            if i >= len(frames):
                break
            kind, pres = frames[i]
            i += 1
        reason = should_abort() or reason
        if fixation is not None and check_lead_s > 0 and refresh_hz and times and kind in ("stim_on", "mask_on"):
            wait = times[-1] + 1.0 / refresh_hz - check_lead_s - flip_clock()      # flips are stamped on this clock
            if wait > 0:
                time.sleep(wait)
        if fixation is not None and not reason and kind in ("stim_on", "mask_on"):
            reason = fixation.broken()
            seen = (fixation.newest_t, fixation.newest_inside)
        if reason:
            kind, pres = "abort_blank", -1
        stage.draw(kind, images[pres] if kind == "stim_on" else -1)
        if capture:
            captures.append(stage.capture("back"))
        _mark_flip(win, marker, events, kind, pres, previous, len(times), images[pres] if kind == "stim_on" else -1)
        if period:
            next_flip = _pace(core.getTime(), next_flip, period)
        times.append(win.flip())
        kinds.append(KIND_CODE[kind])
        press.append(pres)
        gaze_t.append(seen[0])
        gaze_in.append(seen[1])
        previous = (kind, pres)
        if acquiring and fix_onset is None:
            fix_onset = times[-1]
            fixation.count_from(fix_onset)
        if reason:
            break
    return TrialLog(np.array(times, dtype=np.float64), np.array(kinds, dtype=np.int8),
                    np.array(press, dtype=np.int32), events, aborted=bool(reason), reason=reason or "",
                    captures=captures, frame_gaze_t=np.array(gaze_t, dtype=np.float64), frame_gaze_in=np.array(gaze_in, dtype=bool),
                    break_t=fixation.break_t if fixation is not None else float("nan"))
