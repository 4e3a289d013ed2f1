"""Lab Streaming Layer as a :class:`rig.backend.SpikeSource`, and itloop's marker outlet.

Streams (resolved by name from ``[acquisition]``; pylsl wraps the liblsl shipped in its wheel):

- spikes (``acquisition.lsl_spike_stream``): irregular rate, one int32 channel; one
  sample per spike whose value is the 0-based channel (electrode) index and whose LSL
  timestamp is the spike time on the sender's clock. A nominal rate or a
  ``<desc><sampling_rate>`` entry, if the sender gives one, is stored as provenance.
- TTL / photodiode (``acquisition.lsl_ttl_stream``): irregular rate, one int32 channel;
  one sample per rising edge whose value is the TTL line.

Every timestamp is moved onto this computer's LSL clock with the inlet's
``time_correction()`` (refreshed every few seconds), so the acquisition clock is the
controller's ``pylsl.local_clock()`` timeline, in seconds.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from rig.backend import AcqEvents
from rig.errors import UserError

if TYPE_CHECKING:
    from pylsl import StreamInlet


class LslError(UserError):
    """An LSL stream cannot be found or read; the text names it."""


def _pylsl():
    try:
        import pylsl
    except ImportError:  # pragma: no cover - pylsl is a dependency
        raise LslError("acquisition.system = 'lsl' needs pylsl: pip install pylsl") from None
    return pylsl


def resolve_inlet(name: str, timeout_s: float) -> StreamInlet:
    """An open inlet on the stream called ``name``; LslError if none answers within ``timeout_s``."""
    pylsl = _pylsl()
    found = pylsl.resolve_byprop("name", name, 1, timeout_s)
    if not found:
        raise LslError(f"no LSL stream named {name!r} answered within {timeout_s:g} s; start the sender or fix "
                       "acquisition.lsl_spike_stream / lsl_ttl_stream (and check that multicast works on this network)")
    inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=True)
    inlet.open_stream(timeout=timeout_s)
    return inlet


class LslSource:
    """Spikes and TTLs from two LSL streams (see module docstring)."""

    name = "lsl"

    def __init__(self, spike_stream: str = "itloop-spikes", ttl_stream: str = "itloop-ttl", n_channels: int = 32,
                 ttl_line: int = 0, resolve_s: float = 5.0, electrode_prefix: str = "Electrode "):
        self.spike_stream, self.ttl_stream = spike_stream, ttl_stream
        self.n_channels = int(n_channels)
        self.channel_names = [f"{electrode_prefix}{i + 1}" for i in range(self.n_channels)]
        self.ttl_line = int(ttl_line)
        self.resolve_s = float(resolve_s)
        self.sampling_rate_hz = float("nan")
        self.latest_s = float("nan")
        self.counters = {"spikes": 0, "ttl": 0, "other_ttl_lines": 0, "unknown_channels": 0}
        self._spk: StreamInlet | None = None
        self._ttl: StreamInlet | None = None
        self._tc = {"spikes": 0.0, "ttl": 0.0}
        self._tc_at = 0.0
        self._hosts: dict[str, str] = {}

    def open(self) -> None:
        if self._spk is not None:
            return
        spk = self._spk = resolve_inlet(self.spike_stream, self.resolve_s)
        ttl = self._ttl = resolve_inlet(self.ttl_stream, self.resolve_s)
        info = spk.info()
        rate = info.nominal_srate()
        desc = info.desc().child_value("sampling_rate")
        self.sampling_rate_hz = float(desc) if desc else (float(rate) if rate > 0 else float("nan"))
        for key, inlet in (("spikes", spk), ("ttl", ttl)):
            i = inlet.info()
            self._hosts[key] = f"{i.name()} ({i.type()}, source_id {i.source_id() or '-'}, host {i.hostname()})"
        self._correct(force=True)

    def _correct(self, force: bool = False) -> None:
        if self._spk is None or self._ttl is None:
            raise RuntimeError("LslSource clock correction before open()")
        now = time.monotonic()
        if force or now - self._tc_at > 5.0:
            for key, inlet in (("spikes", self._spk), ("ttl", self._ttl)):
                try:
                    self._tc[key] = float(inlet.time_correction(timeout=2.0 if force else 0.5))
                except Exception as exc:  # pylsl raises TimeoutError / LostError subclasses
                    if force:
                        raise LslError(f"LSL stream {getattr(self, key + '_stream', key)}: no clock correction ({exc})") from None
            self._tc_at = now

    def clock_zero_unix_s(self) -> float:
        """Wall time (unix s) at which this computer's LSL clock, the acquisition clock
        here, read zero: exact, no event needed."""
        return time.time() - _pylsl().local_clock()

    def start_recording(self, name: str) -> None:
        pass                                  # LSL recorders (LabRecorder) are started by the user

    def message(self, text: str) -> None:
        pass                                  # trial markers go out on the marker outlet instead

    def stop_recording(self) -> None:
        pass

    def events_since(self, timeout_s: float = 0.0) -> AcqEvents:
        if self._spk is None or self._ttl is None:
            raise RuntimeError("LslSource.events_since before open()")
        self._correct()
        st: list[tuple[np.ndarray, np.ndarray]] = []
        tt: list[tuple[np.ndarray, np.ndarray]] = []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            for inlet, kind in ((self._spk, "spikes"), (self._ttl, "ttl")):
                while True:
                    values, stamps = inlet.pull_chunk(timeout=0.0, max_samples=4096)
                    if not stamps:
                        break
                    v = np.asarray(values).reshape(len(stamps), -1)[:, 0].astype(int)
                    t = np.asarray(stamps, float) + self._tc[kind]
                    (st if kind == "spikes" else tt).append((t, v))
            if st or tt or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        spk_t = np.concatenate([t for t, _ in st]) if st else np.zeros(0)
        spk_c = np.concatenate([v for _, v in st]) if st else np.zeros(0, int)
        ok = (spk_c >= 0) & (spk_c < self.n_channels)
        self.counters["unknown_channels"] += int((~ok).sum())
        self.counters["spikes"] += int(ok.sum())
        ttl_t = np.concatenate([t for t, _ in tt]) if tt else np.zeros(0)
        ttl_v = np.concatenate([v for _, v in tt]) if tt else np.zeros(0, int)
        mine = ttl_v == self.ttl_line
        self.counters["ttl"] += len(ttl_v)
        self.counters["other_ttl_lines"] += int((~mine).sum())
        for arr in (spk_t, ttl_t):
            if len(arr) and not arr.max() <= self.latest_s:
                self.latest_s = float(arr.max())
        return AcqEvents(spk_t[ok], spk_c[ok].astype(np.int32), ttl_t[mine], ttl_v[mine].astype(np.int32),
                         np.ones(int(mine.sum()), bool), self.latest_s)

    def close(self) -> None:
        for inlet in (self._spk, self._ttl):
            if inlet is not None:
                inlet.close_stream()
        self._spk = self._ttl = None

    def describe(self) -> dict:
        pylsl = _pylsl()
        return {"system": "Lab Streaming Layer", "interface": f"pylsl {pylsl.__version__}, liblsl {pylsl.library_version()}",
                "endpoint": "LSL (resolved by name)", "streams": [self._hosts.get("spikes", self.spike_stream),
                                                                  self._hosts.get("ttl", self.ttl_stream)],
                "sampling_rate_hz": self.sampling_rate_hz, "time_correction_s": dict(self._tc),
                "ttl_line": self.ttl_line, "n_channels": self.n_channels, "counters": dict(self.counters),
                "time": time.time()}


class LslMarkerOutlet:
    """itloop's trial/stimulus markers as an LSL string stream (type ``Markers``), for LabRecorder."""

    def __init__(self, name: str = "itloop-markers", source_id: str = "itloop-controller"):
        pylsl = _pylsl()
        info = pylsl.StreamInfo(name, "Markers", 1, 0, pylsl.cf_string, source_id)
        self._outlet = pylsl.StreamOutlet(info)

    def push(self, text: str) -> None:
        self._outlet.push_sample([str(text)])
