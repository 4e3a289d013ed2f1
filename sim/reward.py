"""The simulated monkey's juice line (a ``rig.backend.Reward``): a valve that opens for the
asked duration and a running total of juice delivered (ml, at ``flow_ml_per_s``)."""
from __future__ import annotations

import time


class SimReward:
    """Keeps every valve opening (monotonic time, s; duration, ms) and the juice total."""

    name = "sim"

    def __init__(self, flow_ml_per_s: float = 1.0):
        self.flow_ml_per_s = float(flow_ml_per_s)
        self.openings: list[tuple[float, float]] = []

    def give(self, duration_ms: float) -> None:
        if not duration_ms >= 0:
            raise ValueError(f"reward duration {duration_ms} ms: expected >= 0")
        self.openings.append((time.monotonic(), float(duration_ms)))

    @property
    def juice_ml(self) -> float:
        return sum(d for _, d in self.openings) / 1000.0 * self.flow_ml_per_s

    def close(self) -> None:
        pass
