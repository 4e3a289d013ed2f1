"""CURVE client authentication (ZAP allow-list) and the presenter bound for the session.

Real ZeroMQ sockets on 127.0.0.1: fake presenters are DEALER sockets speaking the real
protocol (``announce`` / ``heartbeat``) with their own CURVE key pairs.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
import zmq.auth

from rig.cli import main
from rig.link.client import PresenterClient
from rig.link.protocol import HEARTBEAT, Message, curve_keys, encode
from rig.link.zap import load_allowed_keys


def _pair(folder, name):
    pub, sec = zmq.auth.create_certificates(str(folder), name)
    return zmq.auth.load_certificate(sec)


class FakePresenter:
    def __init__(self, endpoint, ctx, pair=None, server_public=None, ident=b"p1"):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, ident)
        if pair is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = pair
            self.sock.curve_serverkey = server_public
        self.sock.connect(endpoint)

    def send(self, mtype):
        try:      # never block: a refused (or not yet connected) peer has nowhere to send
            self.sock.send_multipart(encode(Message(mtype, body={"presenter": "fake", "state": "idle"})), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self):
        self.sock.close(linger=0)


def _pump_until(client, cond, timeout_s=5.0, sender=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sender is not None:
            sender()
        client.pump(0.05)
        if cond():
            return True
    return False


@pytest.fixture
def curve(tmp_path):
    ctl = _pair(tmp_path, "controller")
    good, other, stranger = _pair(tmp_path, "good"), _pair(tmp_path, "other"), _pair(tmp_path, "stranger")
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("good", "other"):
        (allow / f"{name}.key").write_bytes((tmp_path / f"{name}.key").read_bytes())
    keys = curve_keys(str(tmp_path / "controller.key"), str(tmp_path / "controller.key_secret"))
    client = PresenterClient("tcp://127.0.0.1:*", keys=keys, allowed_keys=load_allowed_keys(str(allow)),
                             dead_after_s=30.0, verbose=True)
    ctx = zmq.Context()
    yield client, ctx, ctl, good, other, stranger
    client.close()
    ctx.destroy(linger=0)


def test_only_allow_listed_keys_connect_and_the_key_is_named(curve, capsys):
    client, ctx, ctl, good, other, stranger = curve
    intruder = FakePresenter(client.endpoint, ctx, stranger, ctl[0], ident=b"intruder")
    # a never-authorised pair that knows the server key is refused by ZAP: nothing arrives
    assert not _pump_until(client, lambda: client.peer is not None, 2.0, lambda: intruder.send("announce"))
    assert client.gate.refused == [stranger[0]]
    p = FakePresenter(client.endpoint, ctx, good, ctl[0], ident=b"good-presenter")
    assert _pump_until(client, lambda: client.peer is not None, 5.0, lambda: p.send("announce"))
    assert client.peer == b"good-presenter" and client.presenter_key == good[0].decode()
    assert f"presenter good-presenter connected with CURVE key {good[0].decode()}" in capsys.readouterr().err
    # another authorised key is still not the session's presenter: it cannot take over
    rival = FakePresenter(client.endpoint, ctx, other, ctl[0], ident=b"rival")
    assert not _pump_until(client, lambda: client.peer == b"rival", 2.0, lambda: rival.send("announce"))
    assert client.peer == b"good-presenter" and client.ignored.get(b"rival", 0) > 0
    assert "is not the session's presenter key" in capsys.readouterr().err
    # the same key restarted under a new identity (a restarted presenter) is adopted
    p.close()
    again = FakePresenter(client.endpoint, ctx, good, ctl[0], ident=b"good-restarted")
    assert _pump_until(client, lambda: client.peer == b"good-restarted", 5.0, lambda: again.send("announce"))
    for s in (intruder, rival, again):
        s.close()


def test_curve_without_an_allow_list_is_refused(tmp_path):
    _pair(tmp_path, "controller")
    keys = curve_keys(str(tmp_path / "controller.key"), str(tmp_path / "controller.key_secret"))
    with pytest.raises(ValueError, match="curve_authorized_keys"):
        PresenterClient("tcp://127.0.0.1:*", keys=keys)


def test_without_curve_a_second_peer_cannot_take_over_a_live_presenter():
    client = PresenterClient("tcp://127.0.0.1:*", dead_after_s=30.0)
    ctx = zmq.Context()
    try:
        first, second = FakePresenter(client.endpoint, ctx, ident=b"first"), FakePresenter(client.endpoint, ctx, ident=b"second")
        assert _pump_until(client, lambda: client.peer == b"first", 5.0, lambda: first.send(HEARTBEAT))
        assert not _pump_until(client, lambda: client.peer == b"second", 1.0, lambda: second.send(HEARTBEAT))
        assert client.ignored[b"second"] > 0
        # nor by announcing itself while the session's presenter is alive (issue 25)
        assert not _pump_until(client, lambda: client.peer == b"second", 1.5,
                               lambda: (first.send(HEARTBEAT), second.send("announce")))
        assert client.peer == b"first"
        # a restarted presenter (the first one fell silent) announces itself and is adopted
        first.close()
        assert _pump_until(client, lambda: client.peer == b"second", 10.0, lambda: second.send("announce"))
        second.close()
    finally:
        client.close()
        ctx.destroy(linger=0)


def test_itloop_keys_writes_the_allow_list(tmp_path, capsys):
    assert main(["keys", "--out", str(tmp_path / "k"), "--name", "presenter1", "--authorize", str(tmp_path / "allow")]) == 0
    assert "authorised" in capsys.readouterr().out
    public, _ = zmq.auth.load_certificate(str(tmp_path / "k" / "presenter1.key"))
    assert load_allowed_keys(str(tmp_path / "allow")) == {public}
    assert main(["keys", "--out", str(tmp_path / "k2"), "--name", "presenter1", "--authorize", str(tmp_path / "allow")]) == 2


def test_the_day_file_names_the_presenter_that_connected(tmp_path):
    from rig.backend import SessionInfo
    from rig.session.runner import run_session
    from rig.store.reader import read_day
    from tests.fakes import CountingBackend
    from tests.test_dayfile import _new, _stimuli

    class Named(CountingBackend):
        def session_attrs(self):
            return {"presenter_curve_key": "K" * 40, "presenter_id": "presenter-1"}

    ss = _stimuli()
    w, sch = _new(tmp_path / "d.h5", ss)
    with w:
        run_session(Named(), w, ss, sch, SessionInfo("t", 1), (70, 170), max_trials=1)
    attrs = read_day(tmp_path / "d.h5").attrs
    assert attrs["presenter_curve_key"] == "K" * 40 and attrs["presenter_id"] == "presenter-1"
    assert np.isfinite(read_day(tmp_path / "d.h5").counts).all()
