"""Gaze from a Lab Streaming Layer stream (``pylsl``): many eye trackers publish one.

The stream's first two channels are gaze x and y, the third (if any) the pupil. With
``units="deg"`` x/y are already degrees from the screen centre (x right, y up); with
``units="raw"`` they are the tracker's coordinates and the calibration map turns them into
degrees. Sample times are LSL times of this computer (``pylsl.local_clock``, corrected for
the sender's clock offset by liblsl's clock synchronisation: ``proc_clocksync``).

API used (pylsl 1.18.6, ``pylsl/resolve.py`` and ``pylsl/inlet.py``): ``resolve_byprop``,
``StreamInlet(info, max_buflen, processing_flags=...)``, ``pull_chunk(timeout=0.0)``,
``local_clock``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rig.backend import GazeSamples
from rig.errors import UserError

if TYPE_CHECKING:
    from pylsl import StreamInlet


class LslEyeSource:
    """An LSL inlet on the gaze stream named ``stream_name``."""

    clock = "lsl"

    def __init__(self, stream_name: str = "itloop-gaze", *, units: str = "deg", resolve_timeout_s: float = 10.0,
                 calibration=None):
        if units not in ("deg", "raw"):
            raise ValueError(f"eye units {units!r}: expected 'deg' or 'raw'")
        self.name = f"lsl:{stream_name}"
        self.stream_name = stream_name
        self.units = units
        self.resolve_timeout_s = resolve_timeout_s
        self.calibration = calibration
        self.rate_hz = float("nan")
        self._inlet: StreamInlet | None = None

    def open(self) -> None:
        import pylsl

        found = pylsl.resolve_byprop("name", self.stream_name, 1, self.resolve_timeout_s)
        if not found:
            raise UserError(f"no LSL stream named {self.stream_name!r} found within {self.resolve_timeout_s:g} s; "
                            "start the eye tracker's LSL app (or `python -m sim.gaze`) or set eye.lsl_stream")
        info = found[0]
        if info.channel_count() < 2:
            raise UserError(f"LSL stream {self.stream_name!r} has {info.channel_count()} channel(s); a gaze stream "
                            "needs at least x and y")
        self.rate_hz = float(info.nominal_srate())
        inlet = self._inlet = pylsl.StreamInlet(info, max_buflen=60,
                                                processing_flags=pylsl.proc_clocksync | pylsl.proc_monotonize)
        inlet.open_stream(timeout=self.resolve_timeout_s)
        inlet.time_correction(timeout=self.resolve_timeout_s)     # first clock offset estimate, now

    def set_calibration(self, mapping) -> None:
        self.calibration = mapping

    def now_s(self) -> float:
        import pylsl

        return float(pylsl.local_clock())

    def read(self) -> GazeSamples:
        if self._inlet is None:
            raise RuntimeError("LslEyeSource.read before open()")
        parts = []
        while True:
            data, ts = self._inlet.pull_chunk(timeout=0.0, max_samples=4096)
            if not ts:
                break
            parts.append((np.asarray(data, float).reshape(len(ts), -1), np.asarray(ts, float)))
            if len(ts) < 4096:
                break
        if not parts:
            return GazeSamples.empty()
        data = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
        return to_samples(t, data, self.units, self.calibration)

    def close(self) -> None:
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            finally:
                self._inlet = None


def to_samples(t: np.ndarray, data: np.ndarray, units: str, calibration) -> GazeSamples:
    """Columns x, y[, pupil] -> :class:`GazeSamples` (raw mapped through ``calibration``)."""
    raw = data[:, :2]
    pupil = data[:, 2] if data.shape[1] > 2 else np.full(len(t), np.nan)
    if units == "raw" and calibration is not None:
        deg = np.asarray(calibration(raw), float)
    else:
        deg = raw
    return GazeSamples(t, deg[:, 0], deg[:, 1], pupil, raw[:, 0], raw[:, 1])
