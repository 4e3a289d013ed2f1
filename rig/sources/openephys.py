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

The acquisition clock is ``sample_number / sample_rate`` in seconds **of one stream**:
every data stream of the GUI (a Neuropixels probe, an NI-DAQ, ...) has its own sample
counter, so spikes and sync TTLs are taken from one stream only (``acquisition.
spike_stream`` / ``ttl_stream``; by default the stream of the first event seen) and the
events of every other stream are counted (``other_stream_spikes``, ``other_stream_ttl``),
never mixed onto that clock.

Recording control: ``PUT /api/status {"mode": "RECORD"}`` answers the GUI's mode; the GUI
records only with a Record Node in its signal chain (Open Ephys GUI docs, "Remote
control", GUI 0.6+ / 1.0), so any answer but ``RECORD`` (after up to 1 s of ``GET
/api/status``) stops the session before its first trial.

Receiving costs about 1.5-2 us of CPU per spike (``benchmarks/acquisition_bench.py``): frames
are read with plain ``recv`` and paired by length (:func:`_drain`), spike payloads go
through a compiled msgspec decoder that reads only the four fields used, and a batch
becomes numpy arrays at once; anything unusual falls back to the message-by-message path.
"""
from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request

import msgspec
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


class _Spike(msgspec.Struct, gc=False):
    """The spike fields itloop uses; every other key of the plugin's JSON is skipped unread.
    (Scalars only, so never in a reference cycle: untracked by the garbage collector.)"""

    sample_number: int
    sample_rate: float
    electrode: str
    stream: str = ""


_SPIKE_HEADER = struct.pack("<H", SPIKE)
_decode_spike = msgspec.json.Decoder(_Spike).decode
_BATCH = 8192                     # messages decoded per pass
_MAX_PER_CALL = 1 << 16           # messages per events_since call, so a flood cannot starve the caller


def _drain(recv, limit: int) -> tuple[list[bytes], list[tuple[bytes, bytes]], int]:
    """Receive up to ``limit`` messages or stray frames without blocking -> (spike payloads,
    other (header, payload) pairs, number of stray frames).

    A broadcaster message is two frames, a 2-byte header then a payload that is never 2
    bytes long (the smallest usable JSON has ``sample_rate`` and ``sample_number``).
    ZeroMQ delivers the frames of a message together, so pairing each 2-byte frame with the
    frame after it recovers every broadcaster message without asking for ``RCVMORE``
    (a ``getsockopt`` costs 3x a ``recv``). A frame that cannot be paired this way (a lone
    header, a payload without one, the extra frames of a foreign message) is stray: counted
    as undecodable, never fatal.
    """
    spikes: list[bytes] = []
    other: list[tuple[bytes, bytes]] = []
    add = spikes.append
    nb = zmq.NOBLOCK
    stray = n = 0
    h = None
    try:
        while n + stray < limit:
            h = recv(nb)
            if len(h) != 2:
                stray += 1
                h = None
                continue
            p = recv(nb)                        # Again here only after a lone 2-byte frame
            while len(p) == 2:                  # h was a lone frame; p may be a header
                stray += 1
                if n + stray >= limit:          # a flood of lone frames: stop, p is stray too
                    return spikes, other, stray + 1
                h = p
                p = recv(nb)
            if h == _SPIKE_HEADER:
                add(p)
            else:
                other.append((h, p))
            h = None
            n += 1
    except zmq.Again:
        stray += h is not None
    return spikes, other, stray


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

    def record(self, name: str, settle_s: float = 1.0) -> str:
        """Ask the GUI to record; raise :class:`OpenEphysError` unless it says RECORD
        (at once, or when asked again within ``settle_s``)."""
        self.send("/api/recording", {"base_text": name})
        mode = str(self.send("/api/status", {"mode": "RECORD"}).get("mode", ""))
        deadline = time.monotonic() + settle_s
        while mode != "RECORD" and time.monotonic() < deadline:
            time.sleep(0.05)
            mode = self.status()
        if mode != "RECORD":
            raise OpenEphysError(f"the Open Ephys GUI at {self.base} answered mode {mode or 'nothing'!r} to RECORD: it "
                                 "is not recording (add a Record Node to the signal chain, check its disk), or set "
                                 "acquisition.http_control = false and record by hand")
        return mode

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
                 ttl_line: int = 0, connect_s: float = 10.0, spike_stream: str = "", ttl_stream: str = ""):
        self.connect_s = float(connect_s)
        self.endpoint = f"tcp://{host}:{event_port}"
        self.http = OpenEphysHttp(host, http_port) if http_control else None
        self.n_channels = int(n_channels)
        self.channel_names = [f"{electrode_prefix}{i + 1}" for i in range(self.n_channels)]
        self._chan = {n: i for i, n in enumerate(self.channel_names)}
        self.ttl_line = int(ttl_line)
        if spike_stream and ttl_stream and spike_stream != ttl_stream:
            raise OpenEphysError(f"acquisition.spike_stream = {spike_stream!r} and ttl_stream = {ttl_stream!r}: two "
                                 "streams have separate sample counters (separate clocks); record the sync TTL on the "
                                 "spikes' stream and name that stream in both keys")
        self.stream: str | None = (spike_stream or ttl_stream) or None   # None: lock onto the first event's stream
        self.sampling_rate_hz = float("nan")
        self.streams: set[str] = set()
        self.counters = {"spikes": 0, "ttl": 0, "other_ttl_lines": 0, "unknown_electrodes": 0, "undecodable": 0,
                         "other_stream_spikes": 0, "other_stream_ttl": 0}
        self.latest_s = float("nan")
        self._sock: zmq.Socket[bytes] | None = None
        self._recording = False

    def open(self) -> None:
        if self._sock is not None:
            return
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)              # never drop on our side: the GUI publishes, we keep up
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        self._sock = sock
        self._recv = sock.recv
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
            self._recording = True              # stop it again on close whatever the answer
            self.http.record(name)

    def message(self, text: str) -> None:
        if self.http is not None:
            self.http.message(text)

    def stop_recording(self) -> None:
        if self.http is not None and self._recording:
            self.http.stop_recording()
            self._recording = False

    def events_since(self, timeout_s: float = 0.0) -> AcqEvents:
        """Everything the broadcaster sent since the last call (at most 65,536 messages;
        the rest waits for the next call), waiting up to ``timeout_s`` for the first."""
        if self._sock is None:
            raise RuntimeError("OpenEphysSource.events_since before open()")
        sock = self._sock
        if timeout_s > 0 and not sock.poll(int(timeout_s * 1000)):
            return AcqEvents(latest_s=self.latest_s)
        st: list[np.ndarray] = []
        sc: list[np.ndarray] = []
        tt: list[float] = []
        tl: list[int] = []
        ts: list[bool] = []
        left = _MAX_PER_CALL
        while left > 0:
            spikes, other, stray = _drain(self._recv, min(_BATCH, left))
            if stray:
                self.counters["undecodable"] += stray
            if not (spikes or other or stray):
                break
            left -= len(spikes) + len(other) + stray
            if spikes:
                t, c = self._take_spikes(spikes)
                st.append(t)
                sc.append(c)
            for h, p in other:
                self._take_other(h, p, tt, tl, ts)
        return AcqEvents(np.concatenate(st) if st else np.zeros(0), np.concatenate(sc) if sc else np.zeros(0, np.int32),
                         np.asarray(tt, float), np.asarray(tl, np.int32), np.asarray(ts, bool), self.latest_s)

    def _saw(self, t_max: float, sample_rate: float) -> None:
        self.sampling_rate_hz = sample_rate
        if not t_max <= self.latest_s:
            self.latest_s = t_max

    def _saw_stream(self, stream) -> None:
        if stream is not None and stream != "" and stream not in self.streams and len(self.streams) < 64:
            self.streams.add(str(stream))

    def _take_spikes(self, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Spike payloads -> (times s, channel indices) of our electrodes, in arrival order.

        Fast path: each payload through a compiled msgspec decoder that reads only the four
        fields used, then the batch as numpy arrays. Any payload it rejects (not JSON, a field
        missing or of another type, an impossible sample rate or number) sends the whole
        batch through the message-by-message path, which counts what it cannot use."""
        try:
            evs = [_decode_spike(p) for p in payloads]
            n = np.array([e.sample_number for e in evs], np.int64)
            sr = np.array([e.sample_rate for e in evs], float)
            ok = (sr > 0) & np.isfinite(sr) & (n < 2**62) & (n > -(2**62))
            if not ok.all():
                raise ValueError("out of range")
        except (msgspec.DecodeError, ValueError, OverflowError, RecursionError):
            return self._take_spikes_one_by_one(payloads)
        t = n / sr
        streams = {e.stream for e in evs}
        if not streams <= self.streams:
            for name in streams:
                self._saw_stream(name)
        if self.stream is None and evs[0].stream:
            self.stream = evs[0].stream
        ours = self.stream
        if ours is not None and not streams <= {ours, ""}:     # an event without a stream field is taken as ours
            keep = np.array([e.stream in (ours, "") for e in evs], bool)
            self.counters["other_stream_spikes"] += int((~keep).sum())
            evs, t, sr = [e for e, k in zip(evs, keep) if k], t[keep], sr[keep]
            if not evs:
                return np.zeros(0), np.zeros(0, np.int32)
        self._saw(float(t.max()), float(sr[-1]))
        chan = self._chan
        ch = np.array([chan.get(e.electrode, -1) for e in evs], np.int32)
        mine = ch >= 0
        n_mine = int(mine.sum())
        self.counters["spikes"] += n_mine
        if n_mine < len(ch):
            self.counters["unknown_electrodes"] += len(ch) - n_mine
            return t[mine], ch[mine]
        return t, ch

    def _take_spikes_one_by_one(self, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        st, sc = [], []
        for p in payloads:
            got = decode_broadcast([_SPIKE_HEADER, p])
            if got is None:
                self.counters["undecodable"] += 1
                continue
            t, ch = self._one_spike(got[1])
            if ch is not None:
                st.append(t)
                sc.append(ch)
        return np.asarray(st, float), np.asarray(sc, np.int32)

    def _ours(self, info: dict) -> bool:
        """Whether an event belongs to the stream whose clock is used (locks onto the first)."""
        stream = info.get("stream", "")
        stream = stream if isinstance(stream, str) else str(stream)
        self._saw_stream(stream)
        if self.stream is None and stream:
            self.stream = stream
        return stream in (self.stream, "")      # an event without a stream field (older GUIs) is taken as ours

    def _one_spike(self, info: dict) -> tuple[float, int | None]:
        sr = float(info["sample_rate"])
        t = int(info["sample_number"]) / sr
        if not self._ours(info):
            self.counters["other_stream_spikes"] += 1
            return t, None
        self._saw(t, sr)
        e = info.get("electrode")
        ch = self._chan.get(e) if isinstance(e, str) else None
        if ch is None:
            self.counters["unknown_electrodes"] += 1
        else:
            self.counters["spikes"] += 1
        return t, ch

    def _take_other(self, header: bytes, payload: bytes, tt: list, tl: list, ts: list) -> None:
        """A TTL (or another event type, which only advances the clock), message by message."""
        got = decode_broadcast([header, payload])
        if got is None:
            self.counters["undecodable"] += 1
            return
        kind, info = got                             # not SPIKE: those have the spike header
        sr = float(info["sample_rate"])
        t = int(info["sample_number"]) / sr
        if not self._ours(info):
            self.counters["other_stream_ttl"] += kind == TTL
            return
        self._saw(t, sr)
        if kind != TTL:
            return
        self.counters["ttl"] += 1
        line = info.get("line", -1)
        if line != self.ttl_line or isinstance(line, bool):
            self.counters["other_ttl_lines"] += 1
            return
        tt.append(t)
        tl.append(line)
        ts.append(bool(info.get("state", True)))

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
                "ttl_line": self.ttl_line, "n_channels": self.n_channels, "clock_stream": self.stream,
                "counters": dict(self.counters), "time": time.time()}
