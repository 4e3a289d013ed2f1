"""Gaze from an SR Research EyeLink through its own Python package ``sr-research-pylink``
(imported as ``pylink``; the unrelated PyPI package ``pylink`` is a different thing).

Samples come over the EyeLink link (``startRecording(0, 0, 1, 0)``: link samples only),
read with ``getNextData()`` / ``getFloatData()`` until the queue is empty. The gaze is in
screen pixels (the EyeLink's own calibration), turned into degrees from the screen centre
(x right, y up) with the display's pixels per degree; a raw -> degrees calibration map can
replace that. Sample times are tracker milliseconds (``clock = "eyelink"``), read now with
``trackerTime()``.

``address=None`` (config ``eye.eyelink_address = "dummy"``) opens pylink's dummy mode,
``EyeLink(None)``: the library runs, nothing is connected and no samples arrive.
API as in sr-research-pylink 2.2.596.0 (``pylink/eyelink.py``, ``pylink/tracker.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rig.backend import GazeSamples
from rig.errors import UserError

if TYPE_CHECKING:
    from pylink import EyeLink

SAMPLE_TYPE = 200          # pylink.SAMPLE_TYPE: a float sample in the link queue


class EyeLinkEyeSource:
    """One EyeLink tracker; ``address`` its IP ("100.1.1.1") or None for dummy mode."""

    clock = "eyelink"

    def __init__(self, address: str | None, *, screen_px: tuple[int, int], px_per_deg: float, calibration=None):
        self.address = address
        self.name = f"eyelink:{address or 'dummy'}"
        self.screen_px = (int(screen_px[0]), int(screen_px[1]))
        self.px_per_deg = float(px_per_deg)
        self.calibration = calibration
        self.dummy = address is None
        self._el: EyeLink | None = None

    def open(self) -> None:
        try:
            import pylink
        except ImportError:
            raise UserError("eye.source = 'eyelink' needs SR Research's package: pip install sr-research-pylink "
                            "(not the PyPI 'pylink')") from None
        try:
            el = self._el = pylink.EyeLink(self.address)
        except RuntimeError as exc:
            raise UserError(f"cannot connect to the EyeLink at {self.address} ({exc}); check the cable and "
                            "eye.eyelink_address, or use 'dummy'") from None
        self.dummy = bool(el.getDummyMode())
        w, h = self.screen_px
        el.sendCommand(f"screen_pixel_coords = 0 0 {w - 1} {h - 1}")
        el.sendCommand("link_sample_data = LEFT,RIGHT,GAZE,AREA,STATUS")
        err = el.startRecording(0, 0, 1, 0)
        if err:
            raise UserError(f"the EyeLink refused startRecording (error {err}); is it in a setup screen?")

    def set_calibration(self, mapping) -> None:
        self.calibration = mapping

    def now_s(self) -> float:
        if self._el is None:
            raise RuntimeError("EyeLinkEyeSource.now_s before open()")
        return float(self._el.trackerTime()) / 1000.0

    def read(self) -> GazeSamples:
        if self._el is None:
            raise RuntimeError("EyeLinkEyeSource.read before open()")
        t, xy, pupil = [], [], []
        while True:
            kind = self._el.getNextData()
            if not kind:
                break
            if kind != SAMPLE_TYPE:
                continue
            s = self._el.getFloatData()
            eye = s.getRightEye() if s.isRightSample() else s.getLeftEye() if s.isLeftSample() else None
            if eye is None:
                continue
            gx, gy = eye.getGaze()
            t.append(s.getTime() / 1000.0)
            xy.append((gx, gy))
            pupil.append(eye.getPupilSize())
        if not t:
            return GazeSamples.empty()
        return self.samples_from_pixels(np.asarray(t), np.asarray(xy, float), np.asarray(pupil, float))

    def samples_from_pixels(self, t_s: np.ndarray, gaze_px: np.ndarray, pupil: np.ndarray) -> GazeSamples:
        """EyeLink screen pixels (origin top left, y down; 1e8 = missing) -> degrees."""
        gaze_px = np.asarray(gaze_px, float).reshape(-1, 2).copy()
        gaze_px[np.abs(gaze_px) >= 1e7] = np.nan          # pylink.MISSING_DATA (-32768) / 1e8 sentinels
        gaze_px[gaze_px <= -32768] = np.nan
        if self.calibration is not None:
            deg = np.asarray(self.calibration(gaze_px), float)
        else:
            w, h = self.screen_px
            deg = np.stack([(gaze_px[:, 0] - w / 2) / self.px_per_deg, (h / 2 - gaze_px[:, 1]) / self.px_per_deg], 1)
        return GazeSamples(t_s, deg[:, 0], deg[:, 1], pupil, gaze_px[:, 0], gaze_px[:, 1])

    def close(self) -> None:
        if self._el is not None:
            try:
                self._el.stopRecording()
                self._el.close()
            finally:
                self._el = None
