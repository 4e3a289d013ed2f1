"""Spike events through the Open Ephys adapter on loopback: throughput, loss, latency.

A separate publisher process speaks the Event Broadcaster's exact JSON format
(``sim.acquisition.BroadcasterPub``); each spike's ``sample_number`` is the publisher's
``time.perf_counter_ns() // 1000`` at a 1 MHz "sample rate", so the receiver can compute
publish-to-counted latency on the shared monotonic clock. Phases:

1. max rate, itloop's ``OpenEphysSource``: events/s (first to last received) and lost;
2. paced (``--paced-rate``, default 5,000 events/s), itloop: latency percentiles;
3. max rate, open-ephys-python-tools' own ``EventListener`` (if installed), side by side.

Last line: ``events_per_s=... lost=... p99_latency_ms=...`` (itloop, phases 1 and 2).
Numbers depend on the machine and its load; compare the two listeners' ratio.

    python benchmarks/acquisition_bench.py [--events 200000] [--paced-rate 20000]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import threading
import time

import numpy as np

END_LINE, PROBE_LINE = 9, 8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publisher(port: int, n: int, rate: float, ready, done) -> None:
    from sim.acquisition import BroadcasterPub

    pub = BroadcasterPub(f"tcp://127.0.0.1:{port}", 1_000_000.0, stream="bench")
    while not ready.wait(0.01):
        pub.ttl(time.perf_counter_ns() // 1000, PROBE_LINE, True)
    time.sleep(0.1)
    t0 = time.perf_counter()
    for i in range(n):
        if rate > 0:
            due = t0 + i / rate
            while time.perf_counter() < due:
                pass
        pub.spike(time.perf_counter_ns() // 1000, f"Electrode {i % 32 + 1}")
    pub_s = time.perf_counter() - t0
    for _ in range(20):
        pub.ttl(time.perf_counter_ns() // 1000, END_LINE, True)
        time.sleep(0.01)
    done.put(pub_s)
    time.sleep(0.5)
    pub.close()


def run_itloop(n: int, rate: float) -> dict:
    from rig.sources.openephys import OpenEphysSource

    port = _port()
    src = OpenEphysSource("127.0.0.1", port, http_control=False, n_channels=32, ttl_line=END_LINE)
    src.open()
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=publisher, args=(port, n, rate, ready, done))
    proc.start()
    while src.counters["other_ttl_lines"] == 0:        # the probe got through: subscribed
        src.events_since(0.05)
    ready.set()
    got, lat, first, last = 0, [], None, None
    cpu0 = time.thread_time()
    deadline = time.monotonic() + 120
    ended = False
    while not ended and time.monotonic() < deadline:
        ev = src.events_since(0.05)
        now_us = time.perf_counter_ns() / 1000
        if len(ev.spike_times_s):
            first = first or time.perf_counter()
            last = time.perf_counter()
            got += len(ev.spike_times_s)
            lat.append(now_us - ev.spike_times_s * 1e6)
        ended = len(ev.ttl_times_s) > 0
    cpu_s = time.thread_time() - cpu0
    pub_s = done.get(timeout=60)
    proc.join(timeout=10)
    src.close()
    lat_ms = np.concatenate(lat) / 1000 if lat else np.array([np.nan])
    return {"events": got, "lost": n - got, "events_per_s": got / max(last - first, 1e-9) if got else 0.0,
            "publish_per_s": n / pub_s, "cpu_us_per_event": 1e6 * cpu_s / max(got, 1), "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99))}


def run_event_listener(n: int) -> dict | None:
    try:
        from open_ephys.streaming import EventListener
    except ImportError:
        return None
    import contextlib
    import io

    port = _port()
    with contextlib.redirect_stdout(io.StringIO()):
        listener = EventListener("127.0.0.1", port)
    state = {"got": 0, "first": None, "last": None, "probe": threading.Event()}

    def on_spike(info):
        state["first"] = state["first"] or time.perf_counter()
        state["last"] = time.perf_counter()
        state["got"] += 1

    def on_ttl(info):
        if info["line"] == END_LINE:
            listener.stop()
        else:
            state["probe"].set()

    th = threading.Thread(target=lambda: listener.start(ttl_callback=on_ttl, spike_callback=on_spike), daemon=True)
    with contextlib.redirect_stdout(io.StringIO()):
        th.start()
        ctx = mp.get_context("spawn")
        ready, done = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=publisher, args=(port, n, 0.0, ready, done))
        proc.start()
        state["probe"].wait(60)
        ready.set()
        done.get(timeout=120)
        th.join(timeout=60)
        proc.join(timeout=10)
    got = state["got"]
    return {"events": got, "lost": n - got,
            "events_per_s": got / max(state["last"] - state["first"], 1e-9) if got else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--paced-rate", type=float, default=5_000.0)
    args = ap.parse_args()
    fast = run_itloop(args.events, 0.0)
    print(f"itloop OpenEphysSource, max rate: {fast['events']} events, lost {fast['lost']}, "
          f"{fast['events_per_s']:.0f} events/s received (publisher {fast['publish_per_s']:.0f}/s), p99 {fast['p99_ms']:.2f} ms; "
          f"receiver CPU {fast['cpu_us_per_event']:.1f} us/event (one free core: {1e6 / fast['cpu_us_per_event']:.0f} events/s)")
    n_paced = int(min(args.events, args.paced_rate * 5))
    paced = run_itloop(n_paced, args.paced_rate)
    print(f"itloop OpenEphysSource, paced {args.paced_rate:.0f}/s: {paced['events']} events, lost {paced['lost']}, "
          f"latency p50 {paced['p50_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms")
    ref = run_event_listener(args.events)
    if ref is None:
        print("open-ephys-python-tools EventListener: not installed (pip install open-ephys-python-tools)")
    else:
        print(f"open-ephys-python-tools EventListener, max rate: {ref['events']} events, lost {ref['lost']}, "
              f"{ref['events_per_s']:.0f} events/s; itloop/EventListener throughput ratio "
              f"{fast['events_per_s'] / max(ref['events_per_s'], 1e-9):.2f}")
    print(f"events_per_s={fast['events_per_s']:.0f} lost={fast['lost'] + paced['lost']} p99_latency_ms={paced['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
