"""Fixation control next to the flips: is the eye inside the window now?

:class:`FixationControl` reads an ``EyeSource`` (degrees, on the source's clock) before
every frame, maps the sample times onto the presenter clock (the clock PsychoPy stamps
flips with) and answers two questions for the trial loop:

- while the fixation point is up: has gaze been inside the window (a circle of radius
  ``window_deg`` around the point) for ``acquire_ms`` without leaving it? (a sample
  outside restarts the count);
- during the RSVP: did the newest sample leave the window (or did samples stop arriving
  for ``lost_ms``)? Then the trial is aborted and the next flip is blank.

``window_deg`` is the window's radius in degrees (MonkeyLogic's convention). The
clock map is an offset measured by bracketing ``now()`` around ``source.now_s()`` (both
monotonic clocks on this computer; re-measured every trial, so slow drift is followed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rig.backend import EyeSource, GazeSamples


@dataclass
class FixationParams:
    window_deg: float = 2.0          # radius of the fixation window around the point, deg
    acquire_ms: float = 300.0        # gaze inside the window this long before the RSVP starts, ms
    acquire_timeout_ms: float = 5000.0   # give up (trial aborted, re-queued) after this long, ms
    lost_ms: float = 100.0           # no sample for this long during the RSVP counts as a break, ms
    check_lead_ms: float = 4.0       # read the gaze this long before the next refresh (0: right after the last flip), ms
    point_deg: tuple[float, float] = (0.0, 0.0)


@dataclass
class FrameCheck:
    """What the check before one frame saw (presenter clock)."""

    newest_t: float        # time of the newest sample seen, s (NaN: none yet)
    inside: bool


@dataclass
class FixationControl:
    """Gaze from ``eye`` held against a window; ``now`` is the presenter clock (s)."""

    eye: EyeSource
    now: Callable[[], float]
    params: FixationParams = field(default_factory=FixationParams)

    def __post_init__(self) -> None:
        self.offset_s = 0.0                  # presenter clock - eye clock
        self._trace: list[GazeSamples] = []
        self._newest_t = math.nan
        self._newest_inside = False
        self._inside_since = math.nan
        self._floor = -math.inf              # samples before this (the fixation point's flip) do not count
        self._first_out_t = math.nan
        self.break_t = math.nan              # time of the sample that broke fixation (presenter clock)

    # ------------------------------------------------------------------ clocks
    def measure_offset(self, tries: int = 5) -> float:
        """Presenter clock minus eye clock, from the tightest of ``tries`` brackets."""
        best = (math.inf, 0.0)
        for _ in range(tries):
            a = self.now()
            e = self.eye.now_s()
            b = self.now()
            best = min(best, (b - a, (a + b) / 2 - e))
        self.offset_s = best[1]
        return self.offset_s

    # ------------------------------------------------------------------ per trial
    def start_trial(self) -> None:
        """New trial: fresh clock offset, old samples dropped, counts reset."""
        self.measure_offset()
        self.eye.read()                       # drop what arrived between trials
        self._trace = []
        self._newest_t = math.nan
        self._newest_inside = False
        self._inside_since = math.nan
        self._floor = -math.inf
        self._first_out_t = math.nan
        self.break_t = math.nan

    def count_from(self, t: float) -> None:
        """Count the acquire time from ``t`` (the flip that showed the fixation point) at the earliest."""
        self._floor = t

    def update(self) -> FrameCheck:
        """Read the samples that arrived; returns what the newest one says."""
        s = self.eye.read()
        if len(s):
            s.t_s = s.t_s + self.offset_s
            self._trace.append(s)
            d = np.hypot(s.x_deg - self.params.point_deg[0], s.y_deg - self.params.point_deg[1])
            inside = d <= self.params.window_deg
            for t, ok in zip(s.t_s, inside):        # the acquire count restarts at every sample outside
                if ok and not math.isfinite(self._inside_since):
                    self._inside_since = t
                elif not ok:
                    self._inside_since = math.nan
            self._newest_t = float(s.t_s[-1])
            self._newest_inside = bool(inside[-1])
            outside = np.flatnonzero(~inside)
            self._first_out_t = float(s.t_s[outside[0]]) if len(outside) else math.nan
        else:
            self._first_out_t = math.nan
        return FrameCheck(self._newest_t, self._newest_inside)

    @property
    def newest_t(self) -> float:
        """Presenter-clock time of the newest sample read so far (NaN: none this trial)."""
        return self._newest_t

    @property
    def newest_inside(self) -> bool:
        """Whether that sample was inside the window."""
        return self._newest_inside

    def acquired(self) -> bool:
        """Gaze has been inside the window for ``acquire_ms`` up to the newest sample."""
        self.update()
        since = max(self._inside_since, self._floor)
        return (math.isfinite(self._inside_since) and self._newest_inside
                and self._newest_t - since >= self.params.acquire_ms / 1000.0)

    def broken(self) -> str | None:
        """During the RSVP: a reason if a sample since the last check left the window or samples stopped."""
        self.update()
        if math.isfinite(self._first_out_t):
            self.break_t = self._first_out_t
            return "fixation broken"
        if math.isfinite(self._newest_t) and self.now() - self._newest_t > self.params.lost_ms / 1000.0:
            self.break_t = self._newest_t
            return "eye signal lost"
        return None

    def trace(self) -> GazeSamples:
        """The trial's samples so far, times on the presenter clock."""
        return GazeSamples.concat(self._trace)
