"""The presenter's reply cache (resends are answered from it) is bounded by bytes."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

pytest.importorskip("psychopy", reason="the presenter module needs PsychoPy")
from rig.link.protocol import Message
from rig.presenter.server import _REPLY_CACHE, PresenterServer


def _server(limit: int) -> PresenterServer:
    s = PresenterServer.__new__(PresenterServer)      # the cache alone: no window, no socket
    s.replies, s.reply_bytes, s.reply_cache_bytes = OrderedDict(), 0, limit
    return s


def _capture(mb: float) -> Message:
    return Message("done", body={"ok": True}, arrays={"captures": np.zeros(int(mb * (1 << 20)), np.uint8)})


def test_capture_replies_are_evicted_by_bytes_newest_kept():
    s = _server(64 << 20)
    for seq in range(1, 41):                               # 40 capture trials of ~11.7 MB (320x240, 50 frames)
        s._cache(seq, Message("ack", body={"of": seq}), append=False)
        s._cache(seq, _capture(11.7), append=True)
        assert s.reply_bytes <= 64 << 20
        assert s.reply_bytes == sum(1024 + sum(a.nbytes for a in m.arrays.values()) for r in s.replies.values() for m in r)
    assert list(s.replies)[-1] == 40 and len(s.replies) == 5   # the newest are kept for resends
    huge = _capture(100)                                   # one reply larger than the whole budget
    s._cache(41, huge, append=False)
    assert list(s.replies) == [41] and s.replies[41][0] is huge


def test_small_replies_are_bounded_by_count():
    s = _server(64 << 20)
    for seq in range(1, 1000):
        s._cache(seq, Message("ack", body={"of": seq}), append=False)
    assert len(s.replies) == _REPLY_CACHE and list(s.replies)[0] == 1000 - _REPLY_CACHE
