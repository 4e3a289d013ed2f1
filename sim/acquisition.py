"""The simulated monkey as an acquisition system, in the Open Ephys GUI's exact wire format.

A separate process (``itloop sim-rig``) that plays the photodiode, the animal and the
Open Ephys GUI at once:

- it subscribes to the real presenter's flip markers (``presenter.marker = "zmq"``:
  one JSON message per screen change with the flip time on the presenter clock);
- after each trial's last flip it computes the simulated sites' spikes for the images
  that were on the screen (``sim.monkey.SimulatedMonkey.spikes_for``), on a simulated
  acquisition clock (offset + drift, per presenter process: a restarted presenter is a
  new clock, the acquisition clock runs on) with photodiode jitter;
- it publishes them, with one TTL pair per stimulus onset (some dropped, some spurious,
  as configured), on a ZeroMQ PUB socket in the Open Ephys Event Broadcaster's JSON
  format (two frames: ``uint16`` type, then JSON; see ``rig.sources.openephys`` for the
  vendor source matched), after a random network delay;
- it serves the GUI's HTTP control endpoints that itloop uses (``/api/status``,
  ``/api/recording``, ``/api/message``), logging every message;
- it writes the truth (true light onset on the acquisition clock, whether the pulse was
  dropped, the counts in the response window) to a JSON-lines file, for tests.

Scenario flags (``AcqSimParams``; ``itloop sim-rig --ttl ...`` etc.) reproduce what goes
wrong on real rigs: ``ttl = "free"`` a free-running TTL not locked to the flips (period
``FREE_TTL_PERIOD_S``), ``"periodic"`` a line at the RSVP period (pulses in the gaps
between trials too); ``pulse_jitter_s`` the half-width of the pulse latency jitter
(0.5 ms: a parallel port); ``started_early_s`` > 0: the acquisition clock runs on wall
time and started that long before sim-rig (events are released only once their sample
time has passed, as a GUI does, with a heartbeat TTL on line ``ttl_line + 1`` every 5 ms);
``two_streams``: the sync TTL is also recorded on a second stream with its own sample
counter (another rate and start); ``refuse_record``: the GUI answers RECORD with ACQUIRE
(no Record Node).

Imports only ``numpy``, ``zmq``, the standard library and ``sim`` itself (DESIGN section 3).
"""
from __future__ import annotations

import heapq
import itertools
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zmq

from sim.clocks import PHOTODIODE_JITTER_S, ClockMap
from sim.params import COUNT_WINDOW_S

TTL, SPIKE = 0, 1
FREE_TTL_PERIOD_S = 0.3137          # a free-running line's period: locked to nothing on the screen
SECOND_STREAM = "SIMULATED itloop sim-rig NI-DAQ"
SECOND_STREAM_RATE_HZ = 25000.0     # the second stream's own sample counter: another rate ...
SECOND_STREAM_START_S = -7.25       # ... and another start (its counter read 0 at acquisition time 7.25 s)


class _TtlEdge(NamedTuple):
    """One TTL edge to publish (any publisher)."""
    sample: int
    line: int
    state: bool
    stream: str | None
    sample_rate: float | None


class _Spike(NamedTuple):
    """One spike to publish through the LSL publisher."""
    sample: int
    electrode: str


_Event = list[bytes] | _TtlEdge | _Spike   # list[bytes]: the Event Broadcaster's encoded frames


# --------------------------------------------------------------------------- wire
class BroadcasterPub:
    """Publishes events exactly as the Event Broadcaster plugin's JSON output format does."""

    def __init__(self, endpoint: str, sample_rate: float, stream: str = "SIMULATED itloop sim-rig", source_node: int = 101):
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(endpoint)
        self.sample_rate = float(sample_rate)
        self.stream = stream
        self.source_node = source_node

    def encode_ttl(self, sample_number: int, line: int, state: bool, channel_name: str = "TTL Input",
                   stream: str | None = None, sample_rate: float | None = None) -> list[bytes]:
        """The two frames the plugin sends for one TTL edge (of ``stream``, default this one's)."""
        info = {"event_type": "ttl", "stream": stream or self.stream, "source_node": self.source_node,
                "sample_rate": sample_rate or self.sample_rate, "channel_name": channel_name,
                "sample_number": int(sample_number), "line": int(line), "state": bool(state)}
        return [struct.pack("<H", TTL), json.dumps(info).encode()]

    def encode_spike(self, sample_number: int, electrode: str, amplitude_uv: float = 80.0, sorted_id: int = 0) -> list[bytes]:
        """The two frames the plugin sends for one single-channel spike."""
        info = {"event_type": "spike", "stream": self.stream, "source_node": self.source_node,
                "electrode": electrode, "num_channels": 1, "sample_rate": self.sample_rate,
                "sample_number": int(sample_number), "sorted_id": int(sorted_id), "amp1": float(amplitude_uv)}
        return [struct.pack("<H", SPIKE), json.dumps(info).encode()]

    def ttl(self, sample_number: int, line: int, state: bool, channel_name: str = "TTL Input",
            stream: str | None = None, sample_rate: float | None = None) -> None:
        self.sock.send_multipart(self.encode_ttl(sample_number, line, state, channel_name, stream, sample_rate))

    def spike(self, sample_number: int, electrode: str, amplitude_uv: float = 80.0, sorted_id: int = 0) -> None:
        self.sock.send_multipart(self.encode_spike(sample_number, electrode, amplitude_uv, sorted_id))

    def close(self) -> None:
        self.sock.close()


class LslPublisher:
    """The same events as LSL streams (see ``rig.sources.lsl``): spikes (int32 channel index per
    sample) and TTLs (int32 line per rising edge), timestamps = acquisition clock, s."""

    def __init__(self, spike_stream: str, ttl_stream: str, sample_rate: float, channel_names: list[str]):
        import pylsl

        self.sample_rate = float(sample_rate)
        self._index = {n: i for i, n in enumerate(channel_names)}
        si = pylsl.StreamInfo(spike_stream, "Spikes", 1, 0, pylsl.cf_int32, "SIMULATED itloop sim-rig spikes")
        si.desc().append_child_value("sampling_rate", str(self.sample_rate))
        ti = pylsl.StreamInfo(ttl_stream, "Markers", 1, 0, pylsl.cf_int32, "SIMULATED itloop sim-rig ttl")
        self._spk = pylsl.StreamOutlet(si, chunk_size=0, max_buffered=360)
        self._ttl = pylsl.StreamOutlet(ti, chunk_size=0, max_buffered=360)

    def ttl(self, sample_number: int, line: int, state: bool, channel_name: str = "", stream: str | None = None,
            sample_rate: float | None = None) -> None:
        if state and stream is None:
            self._ttl.push_sample([int(line)], sample_number / self.sample_rate)

    def spike(self, sample_number: int, electrode: str, amplitude_uv: float = 80.0, sorted_id: int = 0) -> None:
        self._spk.push_sample([self._index[electrode]], sample_number / self.sample_rate)

    def close(self) -> None:
        del self._spk, self._ttl


class FakeGuiHttp:
    """The Open Ephys GUI's HTTP control endpoints itloop uses, on 127.0.0.1 (a thread)."""

    def __init__(self, port: int, log_path: Path | None = None, refuse_record: bool = False):
        self.mode = "ACQUIRE"
        self.refuse_record = refuse_record
        self.recording: dict = {"base_text": "", "parent_directory": "", "prepend_text": "", "append_text": ""}
        self.messages: list[str] = []
        self.log_path = log_path
        gui = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, obj: dict, code: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/api/status":
                    return self._reply({"mode": gui.mode})
                if self.path == "/api/recording":
                    return self._reply(dict(gui.recording))
                return self._reply({"error": f"unknown endpoint {self.path}"}, 404)

            def do_PUT(self):
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    payload = json.loads(self.rfile.read(n).decode() or "{}")
                except ValueError:
                    return self._reply({"error": "invalid JSON"}, 400)
                if self.path == "/api/status" and payload.get("mode") in ("IDLE", "ACQUIRE", "RECORD"):
                    # a GUI without a Record Node stays in ACQUIRE when asked to RECORD
                    gui.mode = "ACQUIRE" if payload["mode"] == "RECORD" and gui.refuse_record else payload["mode"]
                    gui._log({"status": gui.mode})
                    return self._reply({"mode": gui.mode})
                if self.path == "/api/recording":
                    gui.recording.update({k: v for k, v in payload.items() if k in gui.recording})
                    gui._log({"recording": dict(gui.recording)})
                    return self._reply(dict(gui.recording))
                if self.path == "/api/message" and "text" in payload:
                    gui.messages.append(str(payload["text"]))
                    gui._log({"message": str(payload["text"])})
                    return self._reply({"message": "Message sent."})
                return self._reply({"error": f"unknown request {self.path}"}, 400)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _log(self, obj: dict) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(obj) + "\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- simulation
@dataclass
class AcqSimParams:
    sample_rate_hz: float = 30000.0
    ttl_line: int = 0
    drop_fraction: float = 0.01
    extra_fraction: float = 0.0
    jitter_s: float = 0.001
    electrode_prefix: str = "Electrode "
    window_s: tuple[float, float] = COUNT_WINDOW_S
    seed: int = 0
    ttl: str = "photodiode"             # "photodiode" | "free" | "periodic" (see module docstring)
    ttl_period_s: float = 0.2           # the RSVP period (stim on + mask), for ttl = "periodic"
    pulse_jitter_s: float = PHOTODIODE_JITTER_S
    started_early_s: float = 0.0        # > 0: wall-time acquisition clock that started this long before sim-rig
    two_streams: bool = False
    refuse_record: bool = False


class AcquisitionSim:
    """Watches presenter flips, publishes the simulated recording (see module docstring)."""

    def __init__(self, monkey, pixels: np.ndarray | Callable[[], np.ndarray], marker_endpoint: str, event_endpoint: str,
                 params: AcqSimParams, http_port: int | None = None, truth_path: str | Path | None = None,
                 http_log: str | Path | None = None, lsl_streams: tuple[str, str] | None = None):
        self.monkey = monkey
        self._pixels = pixels                 # uint8 (N,H,W,3), or a callable returning them when first needed
        self._ready = False
        self.p = params
        names = [f"{params.electrode_prefix}{c + 1}" for c in range(monkey.n_channels)]
        self.pub = (LslPublisher(*lsl_streams, params.sample_rate_hz, names) if lsl_streams
                    else BroadcasterPub(event_endpoint, params.sample_rate_hz))
        self.gui = (FakeGuiHttp(http_port, Path(http_log) if http_log else None, params.refuse_record)
                    if http_port is not None else None)
        self.sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(marker_endpoint)
        self.truth_path = Path(truth_path) if truth_path else None
        self.clocks: dict[str, ClockMap] = {}
        self.last_acq_s = float(monkey.clock.offset_s) + 100.0
        self.pending: dict[str, list[dict]] = {}
        self.trials = 0
        self._recent = (np.zeros(0), np.zeros(0, int))     # spikes of the last 2 s (truth counts)
        self.published = {"spikes": 0, "ttl": 0, "dropped_pulses": 0, "extra_pulses": 0}
        self.rng = np.random.default_rng([int(params.seed) & 0xFFFFFFFF, 77])
        self.wall = params.started_early_s > 0
        self.zero_unix_s = time.time() - params.started_early_s     # the acquisition clock's zero (wall mode)
        if self.wall:
            self.last_acq_s = self.now_acq_s()
        self._first_seen: dict[str, tuple[float, float]] = {}       # presenter -> (first flip t, unix s received)
        self._held: list[tuple[float, int, _Event]] = []            # wall mode: (sample time s, n, frames) heap
        self._order = itertools.count()
        self._ttl_until = -np.inf                                    # free / periodic line published up to here
        self._ttl_phase = float(self.rng.uniform(0, 0.1))
        self._beat_at = 0.0

    def clock_for(self, presenter: str, first_t: float) -> ClockMap:
        """The acquisition clock as seen from this presenter process (drift from the monkey's clock)."""
        cm = self.clocks.get(presenter)
        if cm is None:
            drift = self.monkey.clock.drift_ppm
            slope = 1.0 + drift * 1e-6
            if self.wall:                            # the flip happened (about) when its marker arrived
                t_p, unix = self._first_seen.get(presenter, (first_t, time.time()))
                cm = self.clocks[presenter] = ClockMap(unix - self.zero_unix_s - slope * t_p, drift)
                return cm
            start = self.last_acq_s + 1.0            # the acquisition clock runs on across presenter restarts
            cm = self.clocks[presenter] = ClockMap(start - slope * first_t, drift)
        return cm

    def _ensure_stimuli(self) -> None:
        if not self._ready:
            px = self._pixels() if callable(self._pixels) else self._pixels
            self.monkey.set_stimuli(np.asarray(px))
            self._ready = True

    def handle(self, msg: dict) -> None:
        key = str(msg.get("presenter", ""))
        self._first_seen.setdefault(key, (float(msg["t"]), time.time()))
        self.pending.setdefault(key, []).append(msg)
        if msg.get("kind") in ("blank", "abort_blank"):
            self.publish_trial(key, self.pending.pop(key))

    def publish_trial(self, presenter: str, events: list[dict]) -> None:
        self._ensure_stimuli()
        p, fs = self.p, self.p.sample_rate_hz
        rng = np.random.default_rng([int(p.seed) & 0xFFFFFFFF, self.trials])
        self.trials += 1
        t = np.array([e["t"] for e in events], float)
        cm = self.clock_for(presenter, float(t[0]))
        on_i = [i for i, e in enumerate(events) if e["kind"] == "stim_on"]
        images = np.array([events[i]["image"] for i in on_i], int)
        onset_p = t[on_i]
        off_p = np.array([t[i + 1] if i + 1 < len(t) else t[i] for i in on_i])
        light_acq = cm.to_acq(onset_p + rng.uniform(-p.pulse_jitter_s, p.pulse_jitter_s, len(on_i)))
        # one spike train: a trial's spikes start where the previous trial's (tail included) ended
        t0, t1 = max(float(cm.to_acq(t[0])), self.last_acq_s), float(cm.to_acq(t[-1])) + 0.3
        if len(on_i):
            st, sc = self.monkey.spikes_for(images, light_acq, (off_p - onset_p) * cm.slope, rng, t_start_s=t0, t_stop_s=t1)
        else:
            st, sc = np.zeros(0), np.zeros(0, int)
        st_n = np.round(np.asarray(st) * fs).astype(np.int64)
        pulse_n = np.round(light_acq * fs).astype(np.int64)
        dropped = rng.random(len(on_i)) < p.drop_fraction
        n_extra = rng.binomial(max(len(on_i), 1), p.extra_fraction) if p.extra_fraction > 0 else 0
        extra_n = np.round(rng.uniform(t0, t1, n_extra) * fs).astype(np.int64)
        if p.ttl != "photodiode":                    # the sync line is not the photodiode: no onset has its pulse,
            dropped = np.ones(len(on_i), bool)       # the line's own pulses come instead
            extra_n = np.r_[extra_n, self._line_pulses(t1)].astype(np.int64)
        # truth: counts in the response window after the true light onset, from the published (sample) times
        if self.truth_path is not None:
            rt, rc = self._recent
            ts = np.r_[rt, st_n / fs]
            sc_all = np.r_[rc, np.asarray(sc, int)]
            keep = ts > t1 - 2.0
            self._recent = (ts[keep], sc_all[keep])
            lines = []
            for j, i in enumerate(on_i):
                lo, hi = light_acq[j] + p.window_s[0], light_acq[j] + p.window_s[1]
                counts = np.bincount(sc_all[(ts >= lo) & (ts < hi)], minlength=self.monkey.n_channels)
                lines.append(json.dumps({"presenter": presenter, "t_presenter": float(onset_p[j]),
                                         "t_acq_true": float(light_acq[j]), "image": int(images[j]), "pres": events[i]["pres"],
                                         "pulse": not bool(dropped[j]), "counts": counts.tolist(),
                                         "near_edge": np.bincount(sc_all[(np.abs(ts - lo) < 1e-3) | (np.abs(ts - hi) < 1e-3)],
                                                                  minlength=self.monkey.n_channels).tolist()}))
            with open(self.truth_path, "a") as fh:
                fh.write("".join(x + "\n" for x in lines))
        if p.jitter_s > 0:
            time.sleep(float(rng.uniform(0, p.jitter_s)))
        self._publish(st_n, np.asarray(sc, int), np.r_[pulse_n[~dropped], extra_n])
        self.published["spikes"] += len(st_n)
        self.published["ttl"] += int((~dropped).sum()) + len(extra_n)
        self.published["dropped_pulses"] += int(dropped.sum())
        self.published["extra_pulses"] += len(extra_n)
        self.last_acq_s = max(self.last_acq_s, t1)

    def _line_pulses(self, t1: float) -> np.ndarray:
        """Rising edges (samples) of a free-running or periodic sync line from where the last
        trial's ended up to ``t1`` (acquisition s): it runs through the gaps between trials too."""
        period = FREE_TTL_PERIOD_S if self.p.ttl == "free" else self.p.ttl_period_s
        lo = max(self._ttl_until, t1 - 30.0)
        k = np.arange(np.ceil((lo - self._ttl_phase) / period), np.ceil((t1 - self._ttl_phase) / period))
        self._ttl_until = t1
        return np.round((self._ttl_phase + k * period) * self.p.sample_rate_hz).astype(np.int64)

    def _publish(self, spike_n: np.ndarray, spike_ch: np.ndarray, pulse_n: np.ndarray) -> None:
        """Spikes and TTL pairs in acquisition-time order, as the GUI would: at once, or (wall
        mode) held until their sample time has passed."""
        p, fs = self.p, self.p.sample_rate_hz
        names = [f"{p.electrode_prefix}{c + 1}" for c in range(self.monkey.n_channels)]
        frames: list[tuple[int, _Event]] = [
            (int(n), self.pub.encode_spike(int(n), names[c]) if isinstance(self.pub, BroadcasterPub) else _Spike(int(n), names[c]))
            for n, c in zip(spike_n, spike_ch)]
        for n in pulse_n:
            for edge, state in ((int(n), True), (int(n) + int(0.01 * fs), False)):
                frames.append((edge, _TtlEdge(edge, p.ttl_line, state, None, None)))
                if p.two_streams:            # the same line on a second stream: its own counter
                    n2 = round((edge / fs - SECOND_STREAM_START_S) * SECOND_STREAM_RATE_HZ)
                    frames.append((edge, _TtlEdge(n2, p.ttl_line, state, SECOND_STREAM, SECOND_STREAM_RATE_HZ)))
        frames.sort(key=lambda f: f[0])
        for n, fr in frames:
            if self.wall:
                heapq.heappush(self._held, (n / fs, next(self._order), fr))
            else:
                self._send(fr)
        self.release()

    def _send(self, fr: _Event) -> None:
        if isinstance(fr, _TtlEdge):
            self.pub.ttl(fr.sample, fr.line, fr.state, stream=fr.stream, sample_rate=fr.sample_rate)
        elif isinstance(fr, _Spike):
            self.pub.spike(fr.sample, fr.electrode)
        elif isinstance(self.pub, BroadcasterPub):
            self.pub.sock.send_multipart(fr)
        else:
            raise TypeError("encoded Event Broadcaster frames reached the LSL publisher")

    def now_acq_s(self) -> float:
        return time.time() - self.zero_unix_s

    def release(self) -> None:
        """Wall mode: publish every held event whose sample time has passed, and the heartbeat."""
        if not self.wall:
            return
        now = self.now_acq_s()
        while self._held and self._held[0][0] <= now:
            self._send(heapq.heappop(self._held)[2])
        if now >= self._beat_at:
            n = int(now * self.p.sample_rate_hz)
            self.pub.ttl(n, self.p.ttl_line + 1, True)
            self._beat_at = now + 0.005

    def serve(self, max_s: float = 3600.0, idle_exit_s: float | None = None) -> dict:
        """Run until ``max_s`` passed or (if set) no marker came for ``idle_exit_s``; returns counters."""
        deadline = time.monotonic() + max_s
        last = time.monotonic()
        try:
            while time.monotonic() < deadline:
                self.release()
                if self.sub.poll(2 if self.wall else 50):
                    while True:
                        try:
                            raw = self.sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            msg = json.loads(raw.decode())
                        except ValueError:
                            continue
                        if isinstance(msg, dict) and "t" in msg and "kind" in msg:
                            self.handle(msg)
                    last = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
        finally:
            self.close()
        return dict(self.published)

    def close(self) -> None:
        self.sub.close()
        self.pub.close()
        if self.gui is not None:
            self.gui.close()
