"""Open Ephys GUI as a :class:`rig.backend.SpikeSource`: Event Broadcaster + HTTP control.

Wire format matched (read from the vendor source, not reimplemented from memory):

- open-ephys-plugins/event-broadcaster ``Source/EventBroadcaster.cpp`` (GUI 0.6+/1.0
  plugin API; commit 178373e8 of that repository): a ZeroMQ PUB socket bound to
  ``tcp://*:5557`` by default; every event is one multipart message of two frames,
  ``uint16 type`` (0 = TTL, 1 = spike; native byte order, little-endian on x86) then, in
  the default "JSON" output format, a JSON object. TTL: ``event_type="ttl", stream,
  source_node, sample_rate, channel_name, sample_number, line, state``. Spike:
  ``event_type="spike", stream, source_node, electrode, num_channels, sample_rate,
  sample_number, sorted_id, amp1..ampN``. No sequence numbers: a lost message is found
  only from the sync pulses (``rig.session.clock``).
- open-ephys-python-tools ``src/open_ephys/streaming/event_listener.py`` (commit
  39b87335): SUB, subscribe to everything, ``recv_multipart``, two parts, JSON in part 2.
- open-ephys-python-tools ``src/open_ephys/control/http_server.py`` (commit 957b719a):
  HTTP on port 37497; GET without a payload, PUT with a JSON body; ``/api/status``
  (``{"mode": "IDLE"|"ACQUIRE"|"RECORD"}``), ``/api/recording`` (``base_text`` names the
  recording folder), ``/api/message`` (``{"text": ...}`` broadcast as a text event that
  the Record Node stores).

The acquisition clock is ``sample_number / sample_rate`` in seconds.
"""
from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import zmq

from rig.backend import AcqEvents
from rig.errors import UserError

TTL, SPIKE = 0, 1


class OpenEphysError(UserError):
    """The Open Ephys GUI cannot be reached or refused a command; the text says which."""


def decode_broadcast(parts: list[bytes]) -> tuple[int, dict] | None:
    """One Event Broadcaster message -> ``(type, json dict)``; None if it is not one (e.g.
    the "Raw Binary" output format, or garbage): never raises."""
    if len(parts) != 2 or len(parts[0]) != 2:
        return None
    (kind,) = struct.unpack("<H", parts[0])
    try:
        info = json.loads(parts[1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return _checked(kind, info)


def _decode_many(raw: list[list[bytes]], counters: dict) -> list[tuple[int, dict]]:
    """Decode a batch of messages; one ``json.loads`` for the whole batch when every payload
    is one JSON object (about twice as fast), else message by message."""
    frames = [p for p in raw if len(p) == 2 and len(p[0]) == 2 and p[1].lstrip()[:1] == b"{" and p[1].rstrip()[-1:] == b"}"]
    infos = None
    if len(frames) == len(raw):
        try:
            infos = json.loads(b"[" + b",".join(p[1] for p in frames) + b"]")
            if not isinstance(infos, list) or len(infos) != len(frames):
                infos = None
        except (UnicodeDecodeError, ValueError, RecursionError):
            infos = None
    out = []
    if infos is None:
        for p in raw:
            got = decode_broadcast(p)
            if got is None:
                counters["undecodable"] += 1
            else:
                out.append(got)
        return out
    for p, info in zip(frames, infos):
        got = _checked(struct.unpack("<H", p[0])[0], info)
        if got is None:
            counters["undecodable"] += 1
        else:
            out.append(got)
    return out


def _checked(kind: int, info) -> tuple[int, dict] | None:
    if not isinstance(info, dict):
        return None
    try:
        sr = float(info["sample_rate"])
        n = int(info["sample_number"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not (np.isfinite(sr) and sr > 0 and abs(n) < 2**62):
        return None
    return kind, info


class OpenEphysHttp:
    """The GUI's HTTP control API (stdlib urllib; every call bounded by ``timeout_s``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 37497, timeout_s: float = 2.0):
        self.base = f"http://{host}:{port}"
        self.timeout_s = timeout_s

    def send(self, endpoint: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base + endpoint, data=data, method="GET" if payload is None else "PUT")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read().decode() or "{}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise OpenEphysError(f"Open Ephys HTTP API at {self.base}{endpoint}: {exc}; enable the GUI's HTTP server "
                                 "or set acquisition.http_control = false") from None

    def status(self) -> str:
        return str(self.send("/api/status").get("mode", ""))

    def record(self, name: str) -> str:
        self.send("/api/recording", {"base_text": name})
        return str(self.send("/api/status", {"mode": "RECORD"}).get("mode", ""))

    def stop_recording(self) -> str:
        return str(self.send("/api/status", {"mode": "ACQUIRE"}).get("mode", ""))

    def message(self, text: str) -> dict:
        return self.send("/api/message", {"text": text})


class OpenEphysSource:
    """Spikes and sync TTLs from the Event Broadcaster; recording control over HTTP.

    Channel ``i`` is the electrode named ``electrode_prefix + str(i + 1)`` (sorted units
    of one electrode are pooled: a site is an electrode). TTLs on other lines than
    ``ttl_line`` and spikes of unknown electrodes are counted, not used.
    """

    name = "openephys"

    def __init__(self, host: str = "127.0.0.1", event_port: int = 5557, http_port: int = 37497,
                 http_control: bool = True, n_channels: int = 32, electrode_prefix: str = "Electrode ",
                 ttl_line: int = 0, connect_s: float = 10.0):
        self.connect_s = float(connect_s)
        self.endpoint = f"tcp://{host}:{event_port}"
        self.http = OpenEphysHttp(host, http_port) if http_control else None
        self.n_channels = int(n_channels)
        self.channel_names = [f"{electrode_prefix}{i + 1}" for i in range(self.n_channels)]
        self._chan = {n: i for i, n in enumerate(self.channel_names)}
        self.ttl_line = int(ttl_line)
        self.sampling_rate_hz = float("nan")
        self.streams: set[str] = set()
        self.counters = {"spikes": 0, "ttl": 0, "other_ttl_lines": 0, "unknown_electrodes": 0, "undecodable": 0}
        self.latest_s = float("nan")
        self._sock = None
        self._recording = False

    def open(self) -> None:
        if self._sock is not None:
            return
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)              # never drop on our side: the GUI publishes, we keep up
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        self._sock = sock
        if self.http is not None:                    # fails in one line if the GUI does not answer within connect_s
            deadline = time.monotonic() + self.connect_s
            while True:
                try:
                    self.gui_mode = self.http.status()
                    break
                except OpenEphysError:
                    if time.monotonic() >= deadline:
                        self.close()
                        raise
                    time.sleep(0.2)

    def start_recording(self, name: str) -> None:
        if self.http is not None:
            self.http.record(name)
            self._recording = True

    def message(self, text: str) -> None:
        if self.http is not None:
            self.http.message(text)

    def stop_recording(self) -> None:
        if self.http is not None and self._recording:
            self.http.stop_recording()
            self._recording = False

    def events_since(self, timeout_s: float = 0.0) -> AcqEvents:
        if self._sock is None:
            raise RuntimeError("OpenEphysSource.events_since before open()")
        st, sc, tt, tl, ts = [], [], [], [], []
        sock = self._sock
        if timeout_s > 0 and not sock.poll(int(timeout_s * 1000)):
            return AcqEvents(latest_s=self.latest_s)
        while True:
            raw = []
            while len(raw) < 8192:
                try:
                    raw.append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if not raw:
                break
            for kind, info in _decode_many(raw, self.counters):
                sr = float(info["sample_rate"])
                t = int(info["sample_number"]) / sr
                self.sampling_rate_hz = sr
                stream = info.get("stream")
                if stream is not None and stream not in self.streams and len(self.streams) < 64:
                    self.streams.add(str(stream))
                if not t <= self.latest_s:
                    self.latest_s = t
                if kind == SPIKE:
                    e = info.get("electrode")
                    ch = self._chan.get(e) if isinstance(e, str) else None
                    if ch is None:
                        self.counters["unknown_electrodes"] += 1
                        continue
                    self.counters["spikes"] += 1
                    st.append(t)
                    sc.append(ch)
                elif kind == TTL:
                    self.counters["ttl"] += 1
                    line = info.get("line", -1)
                    if line != self.ttl_line or isinstance(line, bool):
                        self.counters["other_ttl_lines"] += 1
                        continue
                    tt.append(t)
                    tl.append(line)
                    ts.append(bool(info.get("state", True)))
        return AcqEvents(np.asarray(st, float), np.asarray(sc, np.int32), np.asarray(tt, float),
                         np.asarray(tl, np.int32), np.asarray(ts, bool), self.latest_s)

    def close(self) -> None:
        try:
            self.stop_recording()
        except OpenEphysError:
            pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def describe(self) -> dict:
        return {"system": "Open Ephys GUI", "interface": "Event Broadcaster (JSON) + HTTP control",
                "endpoint": self.endpoint, "http": self.http.base if self.http else "off",
                "streams": sorted(self.streams), "sampling_rate_hz": self.sampling_rate_hz,
                "ttl_line": self.ttl_line, "n_channels": self.n_channels,
                "counters": dict(self.counters), "time": time.time()}
