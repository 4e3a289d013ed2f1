"""Collect the TTL edges a :class:`rig.backend.SpikeSource` delivered after a run (bounded waits)."""
from __future__ import annotations

import time

import numpy as np


def collect_rising_edges(source, first_wait_s: float = 30.0, quiet_s: float = 1.0, max_s: float = 120.0) -> np.ndarray:
    """Rising-edge times (acquisition clock, s) on the source's ``ttl_line``, sorted.

    Drains ``source.events_since`` until no new rising edge came for ``quiet_s`` after the
    last one, waiting at most ``first_wait_s`` for the first and ``max_s`` in all (a line
    that never stops pulsing). The source buffers what was sent while the caller was busy
    (ZeroMQ's queue, the LSL inlet's buffer), so call this after the run. Spikes are read
    and discarded.
    """
    edges: list[np.ndarray] = []
    start = last = time.monotonic()
    seen = False
    while True:
        ev = source.events_since(timeout_s=0.05)
        now = time.monotonic()
        rising = np.asarray(ev.ttl_times_s, float)[np.asarray(ev.ttl_states, bool)]
        if len(rising):
            edges.append(rising)
            seen, last = True, now
        if (seen and now - last > quiet_s) or (not seen and now - start > first_wait_s) or now - start > max_s:
            break
    return np.sort(np.concatenate(edges)) if edges else np.zeros(0)
