"""The wall time at which an acquisition clock read zero, read from the stream itself.

Every event the acquisition system sends carries its sample time ``t`` (s, acquisition
clock); it can only be received after it happened, so ``wall_received - t`` is never
earlier than the clock's zero in wall time, and the smallest such value over many events
is the zero, late by the shortest delivery latency (sub-millisecond to a few ms on a
local network). :class:`ClockZero` keeps the minimum over a window at connection and over
a window at the end; both, and their difference, go into the day file (a change means the
acquisition clock drifts against the wall clock, or restarted).

A source that knows its clock's zero exactly (LSL: the acquisition clock is this
computer's ``pylsl.local_clock()``) offers ``clock_zero_unix_s()``; that value is used
then, the event bound is kept beside it as a check.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from collections import deque


def iso_utc(unix_s: float) -> str:
    return _dt.datetime.fromtimestamp(unix_s, _dt.UTC).isoformat(timespec="microseconds")


class ClockZero:
    """Minimum of ``wall_received - latest_sample_time`` over events, at start and at end
    (the end window includes the last ``RECENT_S`` seconds of the session)."""

    RECENT_S = 10.0

    def __init__(self) -> None:
        self.start = math.inf          # unix s: bound from the connection window
        self.end = math.inf            # unix s: bound from the end window
        self.n_start = self.n_end = 0
        self._phase = "start"
        self.exact_start = self.exact_end = math.nan
        self._recent: deque = deque(maxlen=100_000)     # (monotonic s, estimate) while running
        self._prev = -math.inf

    def observe(self, latest_s: float) -> None:
        """After each read of the stream: ``latest_s`` the newest sample time seen (s, of any
        event of the clock's stream, TTLs on other lines included); counted when it advanced."""
        if not (math.isfinite(latest_s) and latest_s > self._prev):
            return
        self._prev = latest_s
        est = time.time() - latest_s
        if self._phase == "start":
            self.start, self.n_start = min(self.start, est), self.n_start + 1
        elif self._phase == "end":
            self.end, self.n_end = min(self.end, est), self.n_end + 1
        else:                                            # running: the last RECENT_S seconds count for the end
            now = time.monotonic()
            self._recent.append((now, est))
            while self._recent and self._recent[0][0] < now - self.RECENT_S:
                self._recent.popleft()

    def begin(self, exact: float | None) -> None:
        self.exact_start = math.nan if exact is None else float(exact)

    def running(self) -> None:
        self._phase = "running"

    def ending(self, exact: float | None) -> None:
        self._phase = "end"
        self.exact_end = math.nan if exact is None else float(exact)
        if self._recent:
            self.end = min(self.end, min(e for _, e in self._recent))
            self.n_end += len(self._recent)

    def start_attrs(self, what: str) -> dict:
        """Day-file attrs after the connection window (empty if nothing was heard)."""
        if math.isfinite(self.exact_start):
            how = (f"read from {what} at connection (its clock's zero is known exactly); event bound "
                   f"{self._bound_text(self.start, self.n_start)}")
            return {"acq_clock_zero_utc": iso_utc(self.exact_start), "acq_clock_zero_source": how,
                    "acq_clock_zero_start_unix_s": self.exact_start}
        if not math.isfinite(self.start):
            return {"acq_clock_zero_source": f"{what} sent no event within the connection window; read at the end"}
        how = (f"read from {what}: min over {self.n_start} events of (wall time received - sample time) within "
               "the connection window; late by the shortest delivery latency")
        return {"acq_clock_zero_utc": iso_utc(self.start), "acq_clock_zero_source": how,
                "acq_clock_zero_start_unix_s": self.start}

    def end_attrs(self, what: str) -> dict:
        """Day-file attrs at the end: the end reading and its difference from the start."""
        end = self.exact_end if math.isfinite(self.exact_end) else self.end
        start = self.exact_start if math.isfinite(self.exact_start) else self.start
        if not math.isfinite(end):
            return {"acq_clock_zero_end_source": f"{what} sent no event at the end: not read"}
        out = {"acq_clock_zero_end_utc": iso_utc(end), "acq_clock_zero_end_unix_s": end,
               "acq_clock_zero_end_source": f"min over {self.n_end} events at the end"}
        if math.isfinite(start):
            out["acq_clock_zero_change_s"] = end - start
        else:                                            # silent at connection: the end reading is all there is
            out.update({"acq_clock_zero_utc": iso_utc(end),
                        "acq_clock_zero_source": f"read from {what} at the end only (silent at connection): min over "
                                                 f"{self.n_end} events of (wall time received - sample time)"})
        return out

    @staticmethod
    def _bound_text(v: float, n: int) -> str:
        return f"{iso_utc(v)} from {n} events" if math.isfinite(v) else "none (no events)"
