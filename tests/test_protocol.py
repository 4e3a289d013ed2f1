"""The presenter wire protocol without a window: framing, security rules, frame arithmetic."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zmq

from rig.link.protocol import (
    KIND_CODE,
    PROTOCOL_VERSION,
    Message,
    ProtocolError,
    curve_keys,
    decode,
    encode,
    is_loopback,
    require_security,
    set_digest,
)
from rig.presenter.geometry import deg_to_cm, deg_to_px
from rig.presenter.timing import frame_counts, frames_at_least, interval_stats, long_intervals, workable_rates
from rig.presenter.trial import TrialLog, frame_sequence


# --------------------------------------------------------------------------- framing
def test_round_trip_keeps_header_body_and_arrays_bit_exact():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    times = rng.normal(size=11)
    msg = Message("load_images", seq=42, session="day3", body={"start": 0, "sha1": ["a", "b", "c"]},
                  arrays={"pixels": pixels, "t": times, "empty": np.zeros((0, 4), np.int32)})
    frames = [bytes(f) for f in encode(msg)]
    header = json.loads(frames[0])
    assert header["type"] == "load_images" and header["seq"] == 42 and header["session"] == "day3"
    assert header["version"] == PROTOCOL_VERSION and header["sent_at"] > 0
    assert len(frames) == 4                                       # header + one frame per array
    back = decode(frames)
    assert (back.type, back.seq, back.session, back.body) == ("load_images", 42, "day3", msg.body)
    np.testing.assert_array_equal(back.arrays["pixels"], pixels)
    assert back.arrays["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(back.arrays["t"], times)
    assert back.arrays["empty"].shape == (0, 4)


def test_object_arrays_never_travel():
    with pytest.raises(TypeError, match="only bool/int/uint/float"):
        encode(Message("ack", arrays={"x": np.array([{"a": 1}], dtype=object)}))
    header = {"type": "ack", "seq": 1, "session": "", "sent_at": 0.0, "version": PROTOCOL_VERSION,
              "body": {}, "arrays": [{"name": "x", "dtype": "|O", "shape": [1]}]}
    with pytest.raises(ProtocolError, match="not allowed"):
        decode([json.dumps(header).encode(), b"\x00" * 8])


def _header(**over):
    h = {"type": "status", "seq": 1, "session": "", "sent_at": 0.0, "version": PROTOCOL_VERSION, "body": {}}
    h.update(over)
    return json.dumps(h).encode()


@pytest.mark.parametrize("frames, problem", [
    ([], "empty message"),
    ([b"\xff\xfe not json"], "not UTF-8 JSON"),
    ([b"[1, 2]"], "JSON object"),
    ([json.dumps({"type": "status"}).encode()], "lacks seq, session, sent_at, version"),
    ([_header(version=99)], "version 99 is not supported"),
    ([_header(type="dance")], "unknown message type 'dance'"),
    ([_header(seq=-3)], "seq -3"),
    ([_header(sent_at="noon")], "sent_at 'noon' must be a number"),
    ([_header(), b"extra"], "describes 0 arrays but 1 binary frames"),
    ([_header(arrays=[{"name": "p", "dtype": "|u1", "shape": [2, 2]}]), b"abc"], "3 bytes"),
])
def test_malformed_messages_are_named(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode(frames)


def test_unknown_type_cannot_be_encoded():
    with pytest.raises(ValueError, match="not part of protocol"):
        encode(Message("dance"))


def test_set_digest_depends_on_content_and_order():
    assert set_digest(["a", "b"]) == set_digest(["a", "b"])
    assert set_digest(["a", "b"]) != set_digest(["b", "a"])


# --------------------------------------------------------------------------- security
@pytest.mark.parametrize("endpoint, loop", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://127.0.0.1:*", True), ("ipc:///tmp/x", True), ("tcp://192.168.1.20:5555", False),
    ("tcp://0.0.0.0:5555", False), ("tcp://rig-stim-pc:5555", False),
])
def test_loopback_detection(endpoint, loop):
    assert is_loopback(endpoint) is loop


def test_non_loopback_endpoint_requires_curve_keys(tmp_path):
    with pytest.raises(ValueError, match="itloop keys"):
        require_security("tcp://192.168.1.20:5555", None, "controller")
    import zmq.auth

    pub, sec = zmq.auth.create_certificates(str(tmp_path), "ctl")
    keys = curve_keys(pub, sec)
    require_security("tcp://192.168.1.20:5555", keys, "controller")       # accepted
    with pytest.raises(ValueError, match="curve_server_key"):
        require_security("tcp://192.168.1.20:5555", keys, "presenter")
    with pytest.raises(ValueError, match="both be set"):
        curve_keys(pub, "")
    with pytest.raises(ValueError, match="neither a 40-character"):
        curve_keys(str(tmp_path / "missing.key"), sec)


def test_curve_link_round_trip_and_wrong_server_key_gets_nothing(tmp_path):
    """A CURVE-encrypted ROUTER/DEALER pair on loopback carries a protocol message; a
    DEALER that does not know the server's public key is never heard."""
    srv_pub, srv_sec = zmq.curve_keypair()
    cli_pub, cli_sec = zmq.curve_keypair()
    other_pub, _ = zmq.curve_keypair()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server, router.curve_publickey, router.curve_secretkey = True, srv_pub, srv_sec
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    good, bad = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock, server_key in ((good, srv_pub), (bad, other_pub)):
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = cli_pub, cli_sec, server_key
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        bad.send_multipart(encode(Message("status", seq=9)))
        good.send_multipart(encode(Message("status", seq=7, arrays={"x": np.arange(3)})))
        assert router.poll(5000)
        frames = router.recv_multipart()
        msg = decode(frames[1:])
        assert msg.seq == 7 and msg.arrays["x"].tolist() == [0, 1, 2]
        assert not router.poll(300)                  # the impostor's message never arrives
    finally:
        for s in (router, good, bad):
            s.close(0)
        ctx.term()


# --------------------------------------------------------------------------- frames and geometry
def test_whole_frames_at_common_rates():
    assert frame_counts(100, 100, 60.0, 0.1) == (6, 6)
    assert frame_counts(100, 100, 100.0, 0.1) == (10, 10)
    assert frame_counts(100, 100, 59.94, 0.1) == (6, 6)      # a real 60 Hz monitor


def test_not_whole_frames_refused_with_workable_rates():
    with pytest.raises(ValueError) as err:
        frame_counts(100, 100, 75.0, 0.1)                     # 7.5 frames
    text = str(err.value)
    assert "7.50" in text and "75.00 Hz" in text
    for rate in ("60", "100", "120"):
        assert rate in text
    assert workable_rates([100, 100], 0.1) == [50.0, 60.0, 90.0, 100.0, 120.0, 180.0, 200.0, 240.0]
    assert frames_at_least(300, 60) == 18 and frames_at_least(301, 60) == 19 and frames_at_least(0, 60) == 0


def test_dropped_frame_detection_and_stats():
    t = np.array([0, 1, 2, 3, 5, 6]) / 60.0                    # one missed vertical blank
    assert long_intervals(t, 60.0).tolist() == [False, False, False, True, False]
    stats = interval_stats(t, 60.0)
    assert stats["dropped"] == 1 and math.isclose(stats["max_ms"], 2000 / 60)


def test_visual_angle_known_answers():
    assert math.isclose(deg_to_cm(8.0, 57.0), 2 * 57 * math.tan(math.radians(4.0)))
    assert abs(deg_to_cm(1.0, 57.0) - 0.9948) < 1e-3           # the classic 57 cm rule: ~1 cm per degree
    assert math.isclose(deg_to_px(8.0, 53.0, 1920, 57.0), deg_to_cm(8.0, 57.0) * 1920 / 53.0)
    with pytest.raises(ValueError, match="distance_cm"):
        deg_to_cm(8.0, 0.0)


def test_trial_log_bookkeeping_counts_frames_and_completed():
    seq = frame_sequence(3, 2, 6, 6)
    assert len(seq) == 2 + 3 * 12 + 1 and seq[0] == ("fix_on", -1) and seq[-1] == ("blank", -1)
    # abort replaces frame 2 + 12 + 8 (2nd presentation, 3rd mask frame) with a blank
    cut = 2 + 12 + 8
    shown = seq[:cut] + [("abort_blank", -1)]
    t = np.arange(len(shown)) / 60.0
    t[5] += 0.02                                               # a late flip inside presentation 0
    events = [{"kind": k, "pres": p, "frame": f, "t": t[f]} for f, (k, p) in enumerate(shown)
              if f == 0 or shown[f - 1] != (k, p)]
    log = TrialLog(t, np.array([KIND_CODE[k] for k, _ in shown], np.int8), np.array([p for _, p in shown], np.int32),
                   events, aborted=True, reason="abort")
    per = log.presentations(3, 6, 6, 60.0)
    assert per["completed"] == 1
    assert per["frames_on"].tolist() == [6, 6, 0] and per["frames_mask"].tolist() == [6, 2, 0]
    assert per["dropped"].tolist() == [True, False, False]
    assert per["onset_s"][0] == t[2] and per["onset_s"][1] == t[14] and np.isnan(per["onset_s"][2])


def test_marker_outputs_are_named_and_checked():
    from rig.presenter.markers import CODES, NoMarker, make_marker

    assert isinstance(make_marker("none"), NoMarker)
    assert len(set(CODES.values())) == len(CODES)               # every event has its own code
    with pytest.raises(ValueError, match="'none', 'parallel', 'serial' or 'zmq'"):
        make_marker("smoke-signal")
    with pytest.raises(ValueError, match="serial"):
        make_marker("serial", "")                                # no pyserial here, or no address
