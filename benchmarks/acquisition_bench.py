"""Spike events through the Open Ephys adapter on loopback: throughput, loss, latency.

What is measured: itloop's RECEIVING adapter, ``rig.sources.openephys.OpenEphysSource``
(ZeroMQ SUB + decode + per-channel arrays), fed by a separate publisher process that
speaks the Event Broadcaster's exact wire format on ONE ZeroMQ PUB socket, as the plugin
does: two frames per event, ``uint16`` type then the JSON object, bytes identical to
``sim.acquisition.BroadcasterPub.encode_spike`` (the encoder ``itloop sim-rig`` uses; the
publisher checks this before the clock starts). To let one Python process outpace the
receiver (the real publisher is the GUI's C++ plugin), the publisher encodes each
electrode's message once and only writes the sample number into it per event, and calls
pyzmq's compiled ``send`` directly. Each spike's ``sample_number`` is the publisher's
``time.perf_counter_ns() // 1000`` at a 1 MHz "sample rate" taken just before the send,
so the receiver computes publish-to-counted latency on the shared monotonic clock
("counted" = ``events_since`` returned it as arrays).

1. max rate, itloop: events/s end to end (events received / time from the publisher's
   first send to the last event counted: no faster than the publisher), the receiver's
   drain rate (first to last event counted), lost, latency (a queue builds whenever
   the receiver is descheduled), receiver CPU per event;
2. paced (``--paced-rate``, default 100,000 events/s, sent in 1 ms bursts, as the GUI
   sends each processed block's events together), itloop: lost, latency percentiles;
3. max rate, open-ephys-python-tools' own ``EventListener`` (if installed) on the same
   stream, side by side.

Last line: ``events_per_s=... lost=... p99_latency_ms=...`` (events/s from phase 1, lost
from phases 1 + 2, p99 from phase 2). Every phase shares the machine with the publisher
(and with whatever else runs: the load average is printed); compare the two listeners'
ratio, and the receiver's CPU cost per event, which does not depend on the publisher.

    python benchmarks/acquisition_bench.py [--events 300000] [--paced-rate 100000] [--paced-s 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import threading
import time

import numpy as np

END_LINE, PROBE_LINE = 9, 8
N_ELECTRODES = 32
_MARK = 987654321987654321


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def _templates(pub) -> list[tuple[bytes, bytes, bytes]]:
    """Per electrode: (header frame, JSON before the sample number, JSON after it), checked
    against the encoder byte for byte."""
    out = []
    for e in range(N_ELECTRODES):
        name = f"Electrode {e + 1}"
        hdr, body = pub.encode_spike(_MARK, name)
        pre, post = body.split(b"%d" % _MARK)
        for n in (0, 7, 1_234_567_890_123):
            assert [hdr, pre + b"%d" % n + post] == pub.encode_spike(n, name), "template differs from the encoder"
        out.append((hdr, pre, post))
    return out


def publisher(port: int, n: int, rate: float, ready, done) -> None:
    import zmq
    from zmq.backend.cython._zmq import Socket as CSocket

    from sim.acquisition import BroadcasterPub

    pub = BroadcasterPub(f"tcp://127.0.0.1:{port}", 1_000_000.0, stream="bench")
    tpl = _templates(pub)
    sock, send, more, clock = pub.sock, CSocket.send, zmq.SNDMORE, time.perf_counter_ns
    while not ready.wait(0.01):
        pub.ttl(time.perf_counter_ns() // 1000, PROBE_LINE, True)
    time.sleep(0.1)
    t0 = time.perf_counter()
    i = 0
    while i < n:
        stop = n if rate <= 0 else min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < stop:
            hdr, pre, post = tpl[i % N_ELECTRODES]
            send(sock, hdr, more)
            send(sock, b"%b%d%b" % (pre, clock() // 1000, post))
            i += 1
        if rate > 0 and i < n:
            time.sleep(0.001)
    t1 = time.perf_counter()
    for _ in range(20):
        pub.ttl(time.perf_counter_ns() // 1000, END_LINE, True)
        time.sleep(0.01)
    done.put((t0, t1))
    time.sleep(0.5)
    pub.close()


def run_itloop(n: int, rate: float) -> dict:
    from rig.sources.openephys import OpenEphysSource

    port = _port()
    src = OpenEphysSource("127.0.0.1", port, http_control=False, n_channels=N_ELECTRODES, ttl_line=END_LINE)
    src.open()
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=publisher, args=(port, n, rate, ready, done))
    proc.start()
    while src.counters["other_ttl_lines"] == 0:        # the probe got through: subscribed
        src.events_since(0.05)
    load = _load()
    ready.set()
    got, lat, first, last = 0, [], None, None
    cpu0, pcpu0 = time.thread_time(), time.process_time()
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
    cpu_s, pcpu_s = time.thread_time() - cpu0, time.process_time() - pcpu0
    t0, t1 = done.get(timeout=60)
    proc.join(timeout=10)
    src.close()
    lat_ms = np.concatenate(lat) / 1000 if lat else np.array([np.nan])
    return {"events": got, "lost": n - got, "events_per_s": got / max(last - t0, 1e-9) if got else 0.0,
            "drain_per_s": got / max(last - first, 1e-9) if got else 0.0, "publish_per_s": n / (t1 - t0),
            "cpu_us_per_event": 1e6 * cpu_s / max(got, 1),
            "process_cpu_us_per_event": 1e6 * pcpu_s / max(got, 1), "undecodable": src.counters["undecodable"],
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "max_ms": float(np.max(lat_ms)), "load": load}


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
        load = _load()
        ready.set()
        t0, t1 = done.get(timeout=120)
        th.join(timeout=60)
        proc.join(timeout=10)
    got = state["got"]
    return {"events": got, "lost": n - got, "publish_per_s": n / (t1 - t0), "load": load,
            "events_per_s": got / max(state["last"] - t0, 1e-9) if got else 0.0,
            "drain_per_s": got / max(state["last"] - state["first"], 1e-9) if got else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000, help="spikes in each max-rate phase")
    ap.add_argument("--paced-rate", type=float, default=100_000.0, help="events/s in the paced phase")
    ap.add_argument("--paced-s", type=float, default=2.0, help="length of the paced phase, s")
    args = ap.parse_args()
    print("measured: itloop's Open Ephys receiving adapter (SUB, decode, arrays); publisher: one PUB socket, "
          "the broadcaster's exact two-frame JSON messages, pre-encoded per electrode with the sample number "
          "(= publish time, us) written in per event")
    fast = run_itloop(args.events, 0.0)
    print(f"itloop OpenEphysSource, max rate: {fast['events']} events, lost {fast['lost']}, undecodable {fast['undecodable']}, "
          f"{fast['events_per_s']:.0f} events/s end to end (publisher {fast['publish_per_s']:.0f}/s; receiver drained "
          f"{fast['drain_per_s']:.0f}/s from its first to its last event), "
          f"latency p50 {fast['p50_ms']:.2f} ms, p99 {fast['p99_ms']:.2f} ms (saturated); receiver CPU "
          f"{fast['cpu_us_per_event']:.2f} us/event in the adapter's thread (one free core: {1e6 / fast['cpu_us_per_event']:.0f} "
          f"events/s), {fast['process_cpu_us_per_event']:.2f} us/event with ZeroMQ's I/O thread; {fast['load']} at start")
    n_paced = int(args.paced_rate * args.paced_s)
    paced = run_itloop(n_paced, args.paced_rate)
    print(f"itloop OpenEphysSource, paced {args.paced_rate:.0f}/s in 1 ms bursts: {paced['events']} events, lost {paced['lost']}, "
          f"publisher achieved {paced['publish_per_s']:.0f}/s, received {paced['events_per_s']:.0f}/s, latency p50 "
          f"{paced['p50_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms, max {paced['max_ms']:.2f} ms; {paced['load']} at start")
    ref = run_event_listener(args.events)
    if ref is None:
        print("open-ephys-python-tools EventListener: not installed (pip install open-ephys-python-tools)")
    else:
        print(f"open-ephys-python-tools EventListener, max rate, same publisher: {ref['events']} events, lost {ref['lost']}, "
              f"{ref['events_per_s']:.0f} events/s end to end (publisher {ref['publish_per_s']:.0f}/s; drained {ref['drain_per_s']:.0f}/s); "
              f"itloop/EventListener throughput "
              f"ratio {fast['events_per_s'] / max(ref['events_per_s'], 1e-9):.2f}; {ref['load']} at start")
    print(f"events_per_s={fast['events_per_s']:.0f} lost={fast['lost'] + paced['lost']} p99_latency_ms={paced['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
