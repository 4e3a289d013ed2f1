"""The Open Ephys adapter against the broadcaster wire format on a real loopback socket,
and its HTTP control calls against a loopback server implementing the GUI's endpoints."""
from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest

from rig.sources.openephys import OpenEphysError, OpenEphysHttp, OpenEphysSource, _decode_spike, decode_broadcast
from sim.acquisition import BroadcasterPub, FakeGuiHttp
from tests.configs import free_port


def _collect(src, want_spikes, want_ttl, timeout_s=10.0):
    st, sc, tt = [], [], []
    deadline = time.monotonic() + timeout_s
    while (len(st) < want_spikes or len(tt) < want_ttl) and time.monotonic() < deadline:
        ev = src.events_since(0.05)
        st += ev.spike_times_s.tolist()
        sc += ev.spike_channels.tolist()
        tt += ev.ttl_times_s[ev.ttl_states].tolist()
    return np.array(st), np.array(sc), np.array(tt)


def test_decode_matches_the_plugin_frames():
    parts = [struct.pack("<H", 1), json.dumps({"event_type": "spike", "stream": "s", "source_node": 104,
                                                "electrode": "Electrode 3", "num_channels": 1, "sample_rate": 30000.0,
                                                "sample_number": 123456, "sorted_id": 0, "amp1": 55.0}).encode()]
    kind, info = decode_broadcast(parts)
    assert kind == 1 and info["sample_number"] == 123456
    for bad in ([b"\x00"], [b"\x00\x00", b"{not json"], [b"\x00\x00", b"[1,2]"], [b"\x00\x00", b'{"sample_rate": 0, "sample_number": 1}'],
                [b"\x00\x00", b"[" * 200000], [b"\x00\x00", b'{"sample_rate": 3e4, "sample_number": 1e400}']):
        assert decode_broadcast(bad) is None


def test_spikes_and_pulses_round_trip_through_a_real_socket():
    port, http_port = free_port(), free_port()
    pub = BroadcasterPub(f"tcp://127.0.0.1:{port}", 30000.0)
    gui = FakeGuiHttp(http_port)
    src = OpenEphysSource("127.0.0.1", port, http_port, True, n_channels=4)
    try:
        src.open()
        # a PUB drops messages until the SUB's subscription arrives: send a probe until one is seen
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not len(src.events_since(0.05).ttl_times_s):
            pub.ttl(1, 5, True)
        rng = np.random.default_rng(0)
        n = rng.integers(1, 10**7, 500)
        ch = rng.integers(0, 4, 500)
        for s_, c_ in zip(n, ch):
            pub.spike(int(s_), f"Electrode {c_ + 1}")
        pub.spike(5, "Tetrode 9")                       # not one of ours: counted, not used
        for s_ in (30000, 60000, 90000):
            pub.ttl(s_, 0, True)
            pub.ttl(s_ + 300, 0, False)
            pub.ttl(s_ + 10, 3, True)                   # another line
        pub.sock.send_multipart([b"\x01\x00", b"garbage"])
        pub.sock.send_multipart([b"\x01\x00", b'{"event_type": "spike", "electrode": ["x"], "sample_rate": 3e4, "sample_number": 7}'])
        st, sc, tt = _collect(src, 500, 3)
        assert np.array_equal(st, n / 30000.0) and np.array_equal(sc, ch)
        assert np.array_equal(tt, [1.0, 2.0, 3.0])
        assert src.sampling_rate_hz == 30000.0 and src.counters["unknown_electrodes"] == 2
        assert src.counters["undecodable"] == 1 and src.counters["other_ttl_lines"] >= 3
        src.start_recording("itloop-day000-abc")
        assert gui.mode == "RECORD" and gui.recording["base_text"] == "itloop-day000-abc"
        src.message("itloop trial=0 stim=1,2,3")
        assert gui.messages == ["itloop trial=0 stim=1,2,3"]
        src.close()
        assert gui.mode == "ACQUIRE"
        d = src.describe()
        assert d["system"] == "Open Ephys GUI" and d["streams"] == ["SIMULATED itloop sim-rig"]
    finally:
        src.close()
        pub.close()
        gui.close()


def test_an_absent_gui_is_one_clear_error():
    with pytest.raises(OpenEphysError, match="HTTP API"):
        OpenEphysHttp("127.0.0.1", free_port(), timeout_s=1.0).status()


def test_day_run_with_no_acquisition_system_is_one_line_and_leaves_no_file(tmp_path, capsys):
    from pathlib import Path

    from rig.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text((Path(__file__).parent / "data" / "tiny.toml").read_text()
                   + f"\n[acquisition]\nn_channels = 6\nevent_port = {free_port()}\nhttp_port = {free_port()}\n")
    rc = main(["day", "run", "--day", "0", "--backend", "rig", "--out", str(tmp_path / "exp"), "--config", str(cfg),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Open Ephys HTTP API" in err[0]
    assert not (tmp_path / "exp" / "day_000.h5").exists()


def test_fast_path_and_stray_frames_keep_every_event_in_order():
    """The batch decoder reads the plugin's messages whatever their JSON layout (JUCE's
    ``JSON::toString`` writes multi-line, indented objects); a payload it rejects sends its
    batch message by message; frames that are not a broadcaster message are counted."""
    port = free_port()
    pub = BroadcasterPub(f"tcp://127.0.0.1:{port}", 30000.0)
    src = OpenEphysSource("127.0.0.1", port, http_control=False, n_channels=4)
    try:
        src.open()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not len(src.events_since(0.05).ttl_times_s):
            pub.ttl(1, 5, True)
        want_n, want_c = [], []

        def spike(n, c):
            pub.spike(n, f"Electrode {c + 1}")
            want_n.append(n)
            want_c.append(c)

        for i in range(300):
            spike(1000 + i, i % 4)
        info = json.loads(pub.encode_spike(2000, "Electrode 2")[1])
        pretty = json.dumps(info, indent=2).replace("\n", "\r\n").encode()
        assert _decode_spike(pretty).sample_number == 2000
        pub.sock.send_multipart([b"\x01\x00", pretty])          # multi-line JSON, fast path
        want_n.append(2000)
        want_c.append(1)
        pub.sock.send_multipart([b"\x01\x00"])                   # a lone header: stray
        spike(2001, 2)
        pub.sock.send_multipart([pub.encode_spike(2002, "Electrode 1")[1]])   # payload without header: stray
        pub.sock.send_multipart(pub.encode_spike(2003, "Electrode 4") + [b"extra"])  # extra frame: stray
        want_n.append(2003)
        want_c.append(3)
        info["sample_number"] = 2004.0                            # a float: the batch goes one by one
        pub.sock.send_multipart([b"\x01\x00", json.dumps(info).encode()])
        want_n.append(2004)
        want_c.append(1)
        info["sample_number"], info["sample_rate"] = 2005, 0      # impossible: undecodable
        pub.sock.send_multipart([b"\x01\x00", json.dumps(info).encode()])
        for i in range(300):
            spike(3000 + i, (i + 1) % 4)
        pub.ttl(90000, 0, True)
        st, sc, tt = _collect(src, len(want_n), 1)
        assert np.array_equal(st, np.array(want_n) / 30000.0) and np.array_equal(sc, want_c)
        assert np.array_equal(tt, [3.0])
        assert src.counters["undecodable"] == 4 and src.counters["spikes"] == len(want_n)
        assert src.counters["unknown_electrodes"] == 0 and src.latest_s == 3.0
    finally:
        src.close()
        pub.close()
