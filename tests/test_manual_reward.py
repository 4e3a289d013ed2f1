"""The manual-reward key on the presenter: a real key press (XTEST into Xvfb) on the presenter's
window drives the serial reward (a real pty) and is logged with its time in the next trial's
reply, next to the trial's own reward."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rig.link.client import PresenterClient

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")
Xlib = pytest.importorskip("Xlib", reason="python-xlib (a PsychoPy dependency) sends the key press")


def _press(key: str) -> None:
    from Xlib import XK, X, display
    from Xlib.ext import xtest

    d = display.Display()
    w, h = d.screen().width_in_pixels, d.screen().height_in_pixels
    xtest.fake_input(d, X.MotionNotify, x=w // 2, y=h // 2)      # over the (centred) presenter window
    d.set_input_focus(X.PointerRoot, X.RevertToPointerRoot, X.CurrentTime)
    code = d.keysym_to_keycode(XK.string_to_keysym(key))
    xtest.fake_input(d, X.KeyPress, code)
    xtest.fake_input(d, X.KeyRelease, code)
    d.sync()
    d.close()


def _read(master: int, want: bytes, timeout_s: float) -> bytes:
    got, end = b"", time.monotonic() + timeout_s
    os.set_blocking(master, False)
    while time.monotonic() < end and got.count(b"\n") < want.count(b"\n"):
        try:
            got += os.read(master, 256)
        except BlockingIOError:
            time.sleep(0.02)
    return got


def test_manual_reward_key_gives_and_logs_a_reward(tmp_path):
    master, slave = os.openpty()
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[reward]\ndriver = "serial"\nport = "{os.ttyname(slave)}"\nduration_ms = 60.0\nmanual_key = "r"\n')
    client = PresenterClient("tcp://127.0.0.1:*", session="manual", heartbeat_s=0.2, dead_after_s=10.0)
    log = open(tmp_path / "presenter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--config", str(cfg), "--endpoint",
                             client.endpoint, "--windowed", "320x240", "--refresh-hz", "60", "--pace"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        client.wait_for_presenter(90)
        assert client.presenter_info["reward"].startswith("serial:")
        _press("r")
        assert _read(master, b"R 60\n", 20) == b"R 60\n"          # the pump was told at once, while idle
        client.configure(stim_on_ms=100, mask_ms=100, fixation_ms=50, reward_ms=75.0)
        img = np.full((1, 16, 16, 3), 40, np.uint8)
        from stimuli.stimset import sha1_of

        client.load_stimuli(img, [sha1_of(img[0])])
        res = client.run_trial(0, [0])
        assert res.completed == 1
        assert res.array("reward_kind", np.int8).tolist() == [1, 0]        # the manual one, then the trial's
        assert res.array("reward_ms").tolist() == [60.0, 75.0]
        t = res.array("reward_t_s")
        assert t[0] < res.onset_s[0] < t[1]                                 # on the presenter's flip clock
        assert _read(master, b"R 75\n", 20) == b"R 75\n"
        client.shutdown()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        client.close()
        log.close()
        os.close(master)
        os.close(slave)
