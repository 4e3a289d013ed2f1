"""Hostile input to the wire decoder: every frame list decodes or raises ProtocolError.

Hypothesis generates >= 10,000 frame lists (random bytes, JSON of every shape, headers
that are almost right with one hostile field, array descriptors with absurd shapes and
dtypes, with or without matching buffers); ``decode`` must return a Message or raise
ProtocolError, and nothing else, for each.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.link.protocol import ALL_TYPES, PROTOCOL_VERSION, Message, ProtocolError, decode, encode

N_EXAMPLES = 10_000
BATCH = 25               # frame lists per hypothesis example
COUNTER = {"n": 0, "ok": 0}

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                          max_leaves=6)
hostile_int = st.one_of(st.integers(), st.integers(min_value=2 ** 62, max_value=2 ** 70),
                        st.sampled_from([10 ** 20, 2 ** 32, 2 ** 63, -1, 0, 1]))
shape = st.one_of(st.lists(hostile_int, max_size=4), st.lists(st.integers(0, 3), min_size=60, max_size=80), json_value)
dtype = st.one_of(st.sampled_from(["<u1", "|u1", "<f8", ">i4", "?", "|O", "<U4", "V8", "M8[s]", "<c16", "", "f8,i4",
                                   "(2,3)f8", "S3"]), json_value)
descriptor = st.one_of(st.fixed_dictionaries({"name": st.one_of(st.text(max_size=6), json_value), "dtype": dtype,
                                              "shape": shape}), json_value)


@st.composite
def near_valid(draw):
    """A header that is valid except where hypothesis chooses otherwise, plus buffers."""
    header = {"type": draw(st.one_of(st.sampled_from(ALL_TYPES), json_value)),
              "seq": draw(st.one_of(st.integers(0, 1000), hostile_int, json_value)),
              "session": draw(st.one_of(st.text(max_size=10), json_value)),
              "sent_at": draw(st.one_of(st.floats(0, 2e9), st.floats(allow_nan=True, allow_infinity=True), hostile_int,
                                        json_value)),
              "version": draw(st.one_of(st.just(PROTOCOL_VERSION), json_value)),
              "body": draw(st.one_of(st.dictionaries(st.text(max_size=6), json_value, max_size=4), json_value)),
              "arrays": draw(st.one_of(st.lists(descriptor, max_size=3), json_value))}
    for key in draw(st.lists(st.sampled_from(sorted(header)), max_size=2)):
        header.pop(key, None)
    text = json.dumps(header, allow_nan=True)
    if draw(st.booleans()):  # splice a huge integer literal or deep nesting into the text
        text = text.replace("0", draw(st.sampled_from(["9" * 5000, "[" * 3000, "1e400", "-0"])), 1)
    n_arrays = len(header["arrays"]) if isinstance(header.get("arrays"), list) else draw(st.integers(0, 2))
    buffers = draw(st.lists(st.binary(max_size=64), min_size=n_arrays, max_size=n_arrays + draw(st.integers(0, 1))))
    return [text.encode("utf-8"), *buffers]


@st.composite
def mutated(draw):
    """A valid encoded message with a few bytes of its header overwritten or cut."""
    frames = [bytes(f) for f in encode(Message(draw(st.sampled_from(ALL_TYPES)), seq=draw(st.integers(0, 99)),
                                               body={"k": 1}, sent_at=1.7e9, arrays={"a": np.arange(draw(st.integers(0, 6)), dtype="<i2")}))]
    head = bytearray(frames[0])
    for pos, byte in draw(st.lists(st.tuples(st.integers(0, len(head) - 1), st.integers(0, 255)), min_size=1, max_size=4)):
        head[pos] = byte
    frames[0] = bytes(head[: draw(st.integers(0, len(head)))]) if draw(st.booleans()) else bytes(head)
    return frames


frames_strategy = st.one_of(
    mutated(),
    st.lists(st.binary(max_size=200), max_size=4),                                          # noise
    st.builds(lambda v: [json.dumps(v, allow_nan=True).encode()], json_value),               # any JSON
    near_valid(),
    st.builds(lambda n: [b"[" * n], st.integers(1, 300_000)),                                 # deep nesting
)


@settings(max_examples=N_EXAMPLES // BATCH, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(frames_strategy, min_size=BATCH, max_size=BATCH))
def _decode_never_raises_anything_else(batch):
    for frames in batch:
        COUNTER["n"] += 1
        try:
            msg = decode(frames)
        except ProtocolError:
            continue
        COUNTER["ok"] += 1
        _check_message(msg)


def _check_message(msg):
    assert isinstance(msg, Message) and msg.type in ALL_TYPES and 0 <= msg.seq < 2 ** 63
    assert np.isfinite(msg.sent_at) and isinstance(msg.session, str)
    for arr in msg.arrays.values():
        assert arr.dtype.kind in "biuf"


@pytest.mark.slow
def test_fuzzed_frame_lists_decode_or_raise_protocol_error():
    COUNTER.update(n=0, ok=0)
    _decode_never_raises_anything_else()
    assert COUNTER["n"] >= N_EXAMPLES
    assert COUNTER["ok"] > 0            # some generated messages were valid and decoded


@pytest.mark.parametrize("frames, problem", [
    ([b"[" * 200_000], "nested too deeply|nests"),
    ([b'{"type": "ack", "seq": ' + b"9" * 5000 + b', "session": "", "sent_at": 1, "version": 1}'], "number"),
    ([b'{"type": "ack", "seq": 1, "session": "", "sent_at": ' + b"9" * 400 + b', "version": 1}'], "sent_at"),
    ([b'{"type": "ack", "seq": 1, "session": "", "sent_at": 1e400, "version": 1}'], "sent_at"),
    ([json.dumps({"type": "ack", "seq": 1, "session": "", "sent_at": 1, "version": 1,
                  "arrays": [{"name": "a", "dtype": "<u1", "shape": [10 ** 20]}]}).encode(), b""], "shape"),
    ([json.dumps({"type": "ack", "seq": 1, "session": "", "sent_at": 1, "version": 1,
                  "arrays": [{"name": "a", "dtype": "<u1", "shape": [2 ** 32, 2 ** 32]}]}).encode(), b""], "expected"),
    ([json.dumps({"type": "ack", "seq": 1, "session": "", "sent_at": 1, "version": 1,
                  "arrays": [{"name": "a", "dtype": "<u1", "shape": [1] * 70}]}).encode(), b"x"], "dimensions"),
    ([json.dumps({"type": "ack", "seq": 1, "session": "", "sent_at": 1, "version": 1,
                  "arrays": [{"name": "a", "dtype": "f8,i4", "shape": [1]}]}).encode(), b"x" * 12], "not allowed"),
])
def test_issue_reproductions_are_protocol_errors(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode(frames)


def test_valid_messages_still_round_trip():
    msg = Message("done", seq=7, session="s", body={"x": [1, 2.5, None], "nan": float("nan")},
                  arrays={"a": np.arange(12, dtype="<i4").reshape(3, 4), "e": np.zeros((0, 5))})
    back = decode([bytes(f) for f in encode(msg)])
    assert back.type == "done" and back.seq == 7 and back.body["x"] == [1, 2.5, None]
    np.testing.assert_array_equal(back.arrays["a"], msg.arrays["a"])
    assert back.arrays["e"].shape == (0, 5)
