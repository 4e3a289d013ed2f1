"""The real presenter process in a real PsychoPy window (run under ``xvfb-run -a``).

One presenter subprocess serves the whole module (its start costs seconds); each test
talks to it through the real ZeroMQ protocol. Xvfb has no vertical sync, so the presenter
runs with ``--refresh-hz 60 --pace`` and the tests check frame counts, ordering and
pixels, never milliseconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rig.link.client import PresenterClient, PresenterLost, PresenterRefused
from rig.link.protocol import FRAME_KINDS as KINDS
from rig.link.protocol import KIND_CODE, PROTOCOL_VERSION
from rig.presenter.geometry import deg_to_px
from rig.presenter.stage import PHOTODIODE_PX
from stimuli.stimset import sha1_of

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")

WIN_W, WIN_H = 400, 300
MONITOR = {"width_cm": 40.0, "width_px": 800, "height_px": 600, "distance_cm": 57.0}
SIZE_DEG = 6.4275            # 127.99 px on this monitor
GREY = 128
SESSION = "test-session"


def quadrant_images(n: int, side: int = 64) -> np.ndarray:
    """Images with four flat quadrants of distinct colours (so orientation and scale show)."""
    rng = np.random.default_rng(5)
    out = np.empty((n, side, side, 3), np.uint8)
    h = side // 2
    for i in range(n):
        cols = rng.integers(0, 256, (4, 3))
        cols[:, 0] = np.clip(cols[:, 0], 0, 100)              # never the mid grey of the background
        out[i, :h, :h], out[i, :h, h:], out[i, h:, :h], out[i, h:, h:] = cols
    return out


IMAGES = quadrant_images(6)
SHA1 = [sha1_of(p) for p in IMAGES]


class Rig:
    def __init__(self, tmp):
        cfg = tmp / "presenter.toml"
        cfg.write_text("[monitor]\n" + "".join(f"{k} = {v}\n" for k, v in MONITOR.items()) + "fullscreen = false\n"
                       "[presenter]\nheartbeat_s = 0.2\ndead_after_s = 1.0\nack_timeout_s = 1.0\n")
        self.client = self.new_client("tcp://127.0.0.1:*")
        self.endpoint = self.client.endpoint
        self.log = open(tmp / "presenter.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--config", str(cfg),
                                      "--endpoint", self.endpoint, "--windowed", f"{WIN_W}x{WIN_H}",
                                      "--refresh-hz", "60", "--pace"], stdout=self.log, stderr=subprocess.STDOUT)
        self.client.wait_for_presenter(timeout_s=60)

    @staticmethod
    def new_client(endpoint):
        return PresenterClient(endpoint, session=SESSION, heartbeat_s=0.2, dead_after_s=3.0, ack_timeout_s=1.0)

    def ready(self, fixation_ms=50.0):
        c = self.client
        c.hello()
        c.configure(stim_on_ms=100, mask_ms=100, fixation_ms=fixation_ms, image_size_deg=SIZE_DEG)
        c.load_stimuli(IMAGES, SHA1)
        return c

    def stop(self):
        try:
            if self.proc.poll() is None:
                self.client.shutdown()
                self.proc.wait(timeout=10)
        except Exception:  # fall through to kill
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.client.close()
            self.log.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("presenter"))
    yield r
    r.stop()


def expected_sequence(n_fix, n_images, n_on, n_mask):
    codes = [KIND_CODE["fix_on"]] * n_fix
    for _ in range(n_images):
        codes += [KIND_CODE["stim_on"]] * n_on + [KIND_CODE["mask_on"]] * n_mask
    return codes + [KIND_CODE["blank"]]


# --------------------------------------------------------------------------- what is drawn
def test_drawn_frames_show_image_at_size_mask_grey_and_photodiode_on_onsets_only(rig):
    c = rig.ready(fixation_ms=50.0)
    res = c.run_trial(0, [2, 4], capture=True)
    assert res.completed == 2 and res.captures.shape == (len(res.frame_kind), WIN_H, WIN_W, 3)
    side = deg_to_px(SIZE_DEG, MONITOR["width_cm"], MONITOR["width_px"], MONITOR["distance_cm"])
    assert abs(side - 128) < 0.5
    patch = (slice(WIN_H - PHOTODIODE_PX + 2, WIN_H - 2), slice(2, PHOTODIODE_PX - 2))
    cy, cx = WIN_H // 2, WIN_W // 2
    for frame, kind, pres in zip(res.captures, res.frame_kind, res.frame_pres):
        kind = KINDS[kind]
        patch_px = frame[patch].reshape(-1, 3)
        body = frame.copy()
        body[WIN_H - PHOTODIODE_PX:, :PHOTODIODE_PX] = GREY             # ignore the patch corner
        if kind == "stim_on":
            assert (patch_px == 255).all(), "photodiode patch must be white while the image is up"
            img = IMAGES[[2, 4][pres]]
            ys, xs = np.nonzero(np.any(body != GREY, axis=2))
            assert ys.min() == cy - 64 and ys.max() == cy + 63          # 128 x 128, centred
            assert xs.min() == cx - 64 and xs.max() == cx + 63
            # quadrant centres show the stored pixels exactly, top-left quadrant top-left
            for (y, x), (iy, ix) in zip([(cy - 32, cx - 32), (cy - 32, cx + 32), (cy + 32, cx - 32), (cy + 32, cx + 32)],
                                        [(16, 16), (16, 48), (48, 16), (48, 48)]):
                np.testing.assert_array_equal(frame[y, x], img[iy, ix])
        else:
            assert (patch_px == 0).all(), f"photodiode patch must be black on {kind} frames"
            dot = np.hypot(*np.mgrid[:WIN_H, :WIN_W] - np.array([cy, cx])[:, None, None]) < 8
            assert (body[~dot] == GREY).all(), f"{kind} frame must be uniform grey"
            if kind in ("fix_on", "mask_on"):
                assert (frame[cy, cx] > 200).all(), "fixation point missing"
            else:
                assert (body == GREY).all(), "the final blank has no fixation point"


def test_trial_has_exact_frames_per_presentation_in_order(rig):
    c = rig.ready(fixation_ms=50.0)
    res = c.run_trial(1, [0, 1, 2])
    f = c.frames
    assert (f["n_on"], f["n_mask"], f["n_fix"]) == (6, 6, 3)
    assert res.frame_kind.tolist() == expected_sequence(3, 3, 6, 6)
    assert res.completed == 3 and not res.aborted
    assert res.frames_on.tolist() == [6, 6, 6] and res.frames_mask.tolist() == [6, 6, 6]
    kinds = [e[0] for e in res.events]
    assert kinds == ["fix_on"] + ["stim_on", "mask_on"] * 3 + ["blank"]
    # each screen change is stamped (callOnFlip) with the flip time of the frame that shows it
    frames = [e[2] for e in res.events]
    np.testing.assert_array_equal(res.event_time_s, res.frame_time_s[frames])
    assert np.all(np.diff(res.frame_time_s) > 0)
    np.testing.assert_array_equal(res.onset_s, res.frame_time_s[[3, 15, 27]])


def test_abort_mid_trial_blanks_and_reports_completed_presentations(rig):
    c = rig.ready(fixation_ms=50.0)
    res = c.run_trial(2, [0, 1, 2, 3, 4], abort_after_s=0.45)    # the trial lasts ~1.05 s
    assert res.aborted and "abort" in res.reason
    assert KINDS[res.frame_kind[-1]] == "abort_blank" and res.events[-1][0] == "abort_blank"
    stim, mask = KIND_CODE["stim_on"], KIND_CODE["mask_on"]
    full = [np.sum((res.frame_kind == stim) & (res.frame_pres == i)) == 6
            and np.sum((res.frame_kind == mask) & (res.frame_pres == i)) == 6 for i in range(5)]
    expected_completed = full.index(False)
    assert 1 <= expected_completed < 5
    assert res.completed == expected_completed
    assert res.frames_on[:res.completed].tolist() == [6] * res.completed
    assert np.isnan(res.onset_s[res.shown:]).all()
    # the presenter is ready for the next trial
    assert c.run_trial(3, [5]).completed == 1


def test_wrong_hash_image_is_refused_and_presenter_keeps_running(rig):
    c = rig.ready()
    bad = list(SHA1)
    bad[3] = sha1_of(IMAGES[3] ^ 1)
    with pytest.raises(PresenterRefused, match="image 3 refused: its sha1"):
        c.load_stimuli(IMAGES, bad, force=True)
    with pytest.raises(PresenterRefused, match="preload with 0 of 6 images"):
        c.preload()
    assert c.status()["state"] in ("ready", "configured")
    c.load_stimuli(IMAGES, SHA1, force=True)
    assert c.run_trial(4, [3]).completed == 1


def _reply(c, seq=None, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c.pump(0.02)
        if seq is None and c.errors:
            return c.errors.pop(0)
        if seq is not None and c.replies.get(seq):
            return c.replies[seq].pop(0)
    raise AssertionError("no reply from the presenter")


def test_malformed_unknown_and_out_of_order_messages_get_error_replies(rig):
    c = rig.ready()
    c.send_frames([b"this is not json"])
    assert "malformed message" in _reply(c).body["error"]
    c.send_frames([b'{"type": "status", "seq": 1}'])
    assert "lacks" in _reply(c).body["error"]
    hdr = b'{"type": "status", "seq": 99, "session": "", "sent_at": 0, "version": %d}'
    c.send_frames([hdr % (PROTOCOL_VERSION + 1)])
    assert "not supported" in _reply(c).body["error"]
    c.send_frames([hdr.replace(b"status", b"dance") % PROTOCOL_VERSION])
    assert "unknown message type 'dance'" in _reply(c).body["error"]
    seq = c.send_command("ack", {"of": 3})                         # a reply type sent as a command
    assert "not a command" in _reply(c, seq).body["error"]
    # out of order: a fresh seq lower than one already executed
    c.seq += 10
    c.status()
    seq = c.send_command("status", seq=c.seq - 5)
    assert "out of order" in _reply(c, seq).body["error"]
    # out of order: a trial for another session
    c.session = "someone-else"
    seq = c.send_command("run_trial", {"trial_index": 0, "stim_indices": [0]})
    assert "out of order" in _reply(c, seq).body["error"]
    c.session = SESSION
    with pytest.raises(PresenterRefused, match="stim_indices"):
        c.run_trial(5, [0, 99])
    assert rig.proc.poll() is None and c.run_trial(6, [1]).completed == 1


HOSTILE = [
    [b"[" * 200_000],                                                                   # RecursionError before
    [b'{"type": "status", "seq": ' + b"9" * 5000 + b', "session": "", "sent_at": 1, "version": 1}'],
    [b'{"type": "status", "seq": 1, "session": "", "sent_at": ' + b"9" * 400 + b', "version": 1}'],
    [b'{"type": "status", "seq": 1, "session": "", "sent_at": 1, "version": 1, "arrays": '
     b'[{"name": "a", "dtype": "<u1", "shape": [100000000000000000000]}]}', b""],
    [b'{"type": "status", "seq": 1, "session": "", "sent_at": 1, "version": 1, "arrays": '
     b'[{"name": "a", "dtype": "<u1", "shape": [4294967296, 4294967296]}]}', b""],
    [b'{"type": "status", "seq": 1, "session": "", "sent_at": 1, "version": 1, "arrays": '
     b'[{"name": "a", "dtype": "<u1", "shape": [' + b",".join([b"1"] * 70) + b']}]}', b"x"],
    [b"\xff" * 64, b"", b"junk"],
]


def test_hostile_messages_get_error_replies_and_presenter_keeps_serving(rig):
    c = rig.ready()
    for frames in HOSTILE:
        c.send_frames(frames)
        reply = _reply(c)
        assert reply.type == "error" and "malformed message" in reply.body["error"], reply.body
        assert len(reply.body["error"]) < 600                # a 5000-digit number is not echoed back
    assert rig.proc.poll() is None
    assert c.status()["state"] == "ready" and c.run_trial(8, [2]).completed == 1


def test_resent_seq_is_executed_once(rig):
    c = rig.ready()
    before = c.status()["trials_run"]
    seq = c.start_trial(7, [0, 1])
    c.send_command("run_trial", {"trial_index": 7, "stim_indices": [0, 1], "capture": False}, seq=seq)  # resend mid-trial
    first = c.finish_trial(seq, 2)
    c.send_command("run_trial", {"trial_index": 7, "stim_indices": [0, 1], "capture": False}, seq=seq)  # resend after
    again = c.finish_trial(seq, 2)
    np.testing.assert_array_equal(first.frame_time_s, again.frame_time_s)   # the stored answer, not a rerun
    assert c.status()["trials_run"] == before + 1


def test_refuses_durations_that_are_not_whole_frames(rig):
    c = rig.client
    with pytest.raises(PresenterRefused, match=r"not a whole number of frames at 60.00 Hz.*120"):
        c.configure(stim_on_ms=25, mask_ms=100)
    rig.ready()


def test_killed_controller_leaves_presenter_blank_and_waiting_and_restart_resumes(rig):
    c = rig.ready(fixation_ms=50.0)
    lost_before = c.status()["controller_lost_count"]
    c.start_trial(8, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])        # ~2 s of RSVP
    silent = "screen blank, waiting for it"
    already = Path(rig.log.name).read_text().count(silent)
    c.close()                                               # the controller dies mid-trial
    # wait (bounded) until the presenter has noticed: it logs when its controller went silent
    deadline = time.monotonic() + 30
    while Path(rig.log.name).read_text().count(silent) == already and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(rig.log.name).read_text().count(silent) > already, "the presenter never noticed its controller died"
    assert rig.proc.poll() is None, "the presenter must survive its controller"
    rig.client = c2 = Rig.new_client(rig.endpoint)          # a restarted controller, same endpoint
    assert c2.wait_for_presenter(timeout_s=30, say_hello=False)["state"] == "waiting"
    info = c2.hello()
    assert info["controller_lost_count"] > lost_before
    assert info["last_trial"]["trial_index"] == 8 and info["last_trial"]["aborted"]
    assert info["last_trial"]["reason"] == "controller lost"
    assert c2.request_message("capture").body["result"]["showing"] == "abort_blank"
    screen = c2.capture()
    screen[WIN_H - PHOTODIODE_PX:, :PHOTODIODE_PX] = GREY
    assert (screen == GREY).all(), "the screen must be blank while waiting"
    # resume: same session, images still preloaded
    assert c2.load_stimuli(IMAGES, SHA1).get("reused")
    res = c2.run_trial(9, [4, 5])
    assert res.completed == 2 and res.frames_on.tolist() == [6, 6]


def test_timing_check_prints_frame_statistics(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rig.cli", "present", "--timing-check", "--seconds", "1",
                          "--windowed", f"{WIN_W}x{WIN_H}", "--refresh-hz", "60", "--pace", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr            # 1 means dropped frames were found
    assert "refresh rate        60.000 Hz (frames: 6 on, 6 mask)" in out.stdout
    assert "flips               61 over 5 presentations" in out.stdout
    assert "dropped frames" in out.stdout and "verdict" in out.stdout


def test_images_read_from_a_plan_file_by_path(rig, tmp_path):
    from rig.session.schedule import build_schedule
    from rig.store.dayfile import write_plan
    from stimuli.stimset import StimulusSet

    ss = StimulusSet(IMAGES[::-1].copy())
    path = write_plan(tmp_path / "plan.h5", "[rsvp]\n", 1, ss, build_schedule(ss.parent, 1, 2, 0, 0.3))
    c = rig.ready()
    with pytest.raises(PresenterRefused, match="image 0 refused"):
        c.load_file(path, SHA1)                              # the file holds the set in another order
    assert c.load_file(path, ss.ids)["n_images"] == len(IMAGES)
    res = c.run_trial(11, [0], capture=True)
    stim = res.captures[res.frame_kind == KIND_CODE["stim_on"]][0]
    np.testing.assert_array_equal(stim[WIN_H // 2 - 32, WIN_W // 2 - 32], IMAGES[-1][16, 16])
    c.load_stimuli(IMAGES, SHA1)                             # back to the module's set


def test_controller_notices_a_dead_presenter(rig):
    """Runs last in this module: it kills the shared presenter."""
    c = rig.ready()
    seq = c.start_trial(10, [0, 1, 2, 3, 4, 5])
    rig.proc.kill()                                         # the stimulus computer dies mid-trial
    rig.proc.wait(timeout=10)
    with pytest.raises(PresenterLost, match="sent nothing for"):
        c.finish_trial(seq, 6)
