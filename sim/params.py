"""The simulated monkey's parameters (``[sim]`` of the config), without torch.

:class:`SimParams` is the one declaration of the ``[sim]`` keys and their rules: the
config section ``rig.config.SimConfig`` is this class (it adds nothing), so a value the
simulator refuses is refused when the config is loaded, naming the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from rig.backend import COUNT_WINDOW_MS

_U32 = 2 ** 32 - 1
COUNT_WINDOW_S = (COUNT_WINDOW_MS[0] / 1000.0, COUNT_WINDOW_MS[1] / 1000.0)   # the default count window, s


@dataclass
class SimParams:
    """The simulated monkey's parameters (units in the comments)."""

    n_channels: int = 32                 # simulated sites (= recording channels)
    linear_fraction: float = 0.5         # share of drive variance linear in (hidden or model) features
    model_alignment: float = 0.0         # share of the linear drive in the designing model's feature space
    input_px: int = 32                   # the sites see the image resampled to this many pixels (0: as is)
    smoothing_px: float = 2.0            # Gaussian blur sigma at input_px resolution, pixels (calibrated)
    hidden_width: int = 32               # random conv net standing in for the model when none is given
    baseline_hz: list[float] = field(default_factory=lambda: [5.0, 30.0])   # [lo, hi] Hz
    peak_hz: float = 200.0               # saturation rate, Hz
    drive_gain: float = 1.5              # slope of the sigmoid on the unit-variance drive
    latency_ms: list[float] = field(default_factory=lambda: [70.0, 100.0])  # [lo, hi] ms
    gain_noise_cv: float = 0.2           # trial-to-trial multiplicative gain noise (CV)
    fixation_break_prob: float = 0.05    # probability a trial's fixation breaks
    clock_offset_s: float = 0.0123       # acquisition minus presenter clock at presenter t=0, s
    clock_drift_ppm: float = 20.0        # acquisition clock runs fast by this, parts per million
    seed: int = 1234                     # fixes the sites, the hidden network and the noise

    def problems(self) -> list[tuple[str, object, str]]:
        """Every impossible parameter as (key, value, what is expected); [] if all are fine."""
        out: list[tuple[str, object, str]] = []

        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                out.append((key, getattr(self, key), expected))

        def whole(v: float, lo: int, hi: int) -> bool:
            return float(v).is_integer() and lo <= v <= hi

        need(whole(self.n_channels, 1, 100_000), "n_channels", "an integer in [1, 100000]")
        need(0 <= self.linear_fraction <= 1, "linear_fraction", "a fraction in [0, 1]")
        need(0 <= self.model_alignment <= 1, "model_alignment",
             "a fraction in [0, 1] (0: no part of the sites lives in the designing model)")
        need(self.input_px == 0 or whole(self.input_px, 32, 4096), "input_px",
             "0 (no resampling) or an integer in [32, 4096] (pixels)")
        need(0 <= self.smoothing_px <= 4096, "smoothing_px", "a Gaussian sigma in pixels in [0, 4096]")
        need(whole(self.hidden_width, 1, 100_000), "hidden_width", "an integer in [1, 100000]")
        lo_hi = len(self.baseline_hz) == 2 and 0 <= self.baseline_hz[0] <= self.baseline_hz[1] <= 10_000
        need(lo_hi, "baseline_hz", "[low, high] with 0 <= low <= high <= 10000 (Hz)")
        if lo_hi:
            need(self.baseline_hz[1] < self.peak_hz <= 10_000, "peak_hz",
                 f"a rate above the highest baseline ({self.baseline_hz[1]} Hz) and <= 10000 Hz")
        need(0 <= self.drive_gain <= 1e6, "drive_gain", "a slope in [0, 1e6] (0: flat sites)")
        need(len(self.latency_ms) == 2 and 0 <= self.latency_ms[0] <= self.latency_ms[1] <= 10_000, "latency_ms",
             "[low, high] with 0 <= low <= high <= 10000 (ms)")
        need(0 <= self.gain_noise_cv <= 100, "gain_noise_cv", "a coefficient of variation in [0, 100]")
        need(0 <= self.fixation_break_prob < 1, "fixation_break_prob", "a probability in [0, 1)")
        need(math.isfinite(self.clock_offset_s) and abs(self.clock_offset_s) <= 1e6, "clock_offset_s",
             "seconds in [-1e6, 1e6] (what the clock model accepts)")
        need(math.isfinite(self.clock_drift_ppm) and abs(self.clock_drift_ppm) <= 1000, "clock_drift_ppm",
             "parts per million in [-1000, 1000]")
        need(whole(self.seed, 0, _U32), "seed", f"an integer in [0, {_U32}]")
        return out

    def validate(self) -> None:
        """Raise ValueError naming the first impossible parameter and what is expected."""
        for key, value, expected in self.problems():
            raise ValueError(f"sim.{key} = {value!r} is impossible; expected {expected}")
