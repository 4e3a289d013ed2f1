"""Presenter replies are schema-checked like requests (issue 25): a decodable but malformed
reply from the bound presenter is one PresenterError line, never a traceback."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

from rig.link.client import (
    PresenterClient,
    PresenterError,
    _trial_result,
    reply_problem,
)
from rig.link.protocol import HEARTBEAT, Message, encode
from tests.test_curve_auth import FakePresenter, _pump_until


@pytest.mark.parametrize("body, problem", [
    ({"of": [1, 2], "ok": True}, "'of' = [1, 2] is not a command number"),
    ({"of": True, "ok": True}, "'of' = True"),
    ({"of": 1, "ok": "yes"}, "'ok' = 'yes' is not a bool"),
    ({"of": 1, "ok": True, "result": [1]}, "'result' = [1] is not a dict"),
    ({"of": 1, "error": 7}, "'error' = 7 is not a str"),
])
def test_malformed_replies_are_named(body, problem):
    assert problem in reply_problem(Message("ack", body=body))


def test_good_replies_pass_and_unknown_types_do_not():
    assert reply_problem(Message("ack", body={"of": 3, "ok": True, "result": {}})) == ""
    assert reply_problem(Message(HEARTBEAT, body={"presenter": "p", "state": "idle"})) == ""
    assert "not one of" in reply_problem(Message("run_trial", body={"of": 1}))


def test_done_without_arrays_is_a_presenter_error():
    msg = Message("done", body={"of": 1, "ok": True, "result": {"completed": 2, "aborted": False, "events": [],
                                                                "n_on": 6, "n_mask": 6, "refresh_hz": 60.0}})
    with pytest.raises(PresenterError, match="lacks or mistypes onset_s"):
        _trial_result(msg)


def test_a_malformed_reply_from_the_bound_presenter_stops_with_one_line():
    client = PresenterClient("tcp://127.0.0.1:*", dead_after_s=30.0)
    ctx = zmq.Context()
    try:
        p = FakePresenter(client.endpoint, ctx, ident=b"p")
        assert _pump_until(client, lambda: client.peer == b"p", 5.0, lambda: p.send(HEARTBEAT))
        p.sock.send_multipart(encode(Message("ack", body={"of": [1], "ok": True})))
        with pytest.raises(PresenterError, match="malformed 'ack' message") as err:
            for _ in range(200):
                client.pump(0.05)
        assert "\n" not in str(err.value)
        p.close()
    finally:
        client.close()
        ctx.destroy(linger=0)


def test_tuple_events_round_trip():
    arrays = {k: np.zeros(2) for k in ("onset_s", "mask_s", "frames_on", "frames_mask", "dropped", "frame_time_s",
                                        "frame_kind", "frame_pres", "event_time_s")}
    msg = Message("done", body={"of": 1, "ok": True, "result": {"completed": 2, "aborted": False, "events": [["on", 0, 1]],
                                                                "n_on": 6, "n_mask": 6, "refresh_hz": 60}},
                  arrays=arrays)
    assert _trial_result(msg).completed == 2
