"""The presenter process's protocol loop: receive commands, show trials, answer.

The presenter connects a DEALER socket to the controller's ROUTER, announces itself and
then serves commands (``rig.link.protocol``). It stays single-threaded: while a trial or a
preload runs it polls the socket between frames/images, so an ``abort`` blanks the screen
on the next flip and heartbeats keep flowing both ways. When the controller falls silent
for ``dead_after_s`` the presenter aborts any trial, keeps the screen blank and waits; a
controller that comes back (the same or a restarted one) finds it ready, with the
preloaded images still in place (``hello`` reports what is loaded).
"""
from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zmq

from rig.backend import FIXATION_ACQUIRE_MS, FIXATION_WINDOW_DEG, IMAGE_SIZE_DEG, GazeSamples
from rig.link.eventlog import event_logger
from rig.link.protocol import (
    COMMANDS,
    HEARTBEAT,
    LONG_COMMANDS,
    CurveKeys,
    Message,
    ProtocolError,
    decode,
    encode,
    error_reply,
    require_security,
    set_digest,
)
from rig.presenter.fixation import FixationControl, FixationParams
from rig.presenter.markers import MarkerOutput, NoMarker
from rig.presenter.stage import SCALINGS, Stage
from rig.presenter.timing import frame_counts, frames_at_least
from rig.presenter.trial import run_frames
from rig.sources.reward import KINDS as REWARD_KINDS
from rig.sources.reward import NoReward, RewardLog, give_and_log
from stimuli.stimset import sha1_of

if TYPE_CHECKING:
    from pylsl import StreamOutlet
_events = event_logger(__name__, "presenter")   # the verbose event lines, on stderr

ALLOWED_WHILE_BUSY = ("abort", "status")   # commands served in the middle of a trial or preload
_REPLY_CACHE = 256                          # commands whose replies are kept for resends
_REPLY_CACHE_BYTES = 64 << 20               # and at most this many bytes of them (captures are large)


def _message_bytes(msg: Message) -> int:
    """Bytes a cached reply holds: its arrays plus a nominal header."""
    return 1024 + sum(int(a.nbytes) for a in msg.arrays.values())


class Refused(ValueError):
    """A well-formed command that cannot be executed now; the text says why and what to do."""


class PresenterServer:
    """Serves one controller at a time on ``endpoint`` (the presenter connects, never binds)."""

    def __init__(self, stage: Stage, endpoint: str, *, heartbeat_s: float = 0.5, dead_after_s: float = 3.0,
                 refresh_hz: float | None = None, pace: bool = False, frame_tolerance: float = 0.1,
                 marker: MarkerOutput | None = None, keys: CurveKeys | None = None, verbose: bool = True,
                 eye=None, fixation: FixationParams | None = None, reward=None, reward_ms: float = 100.0,
                 manual_reward_key: str = "r"):
        require_security(endpoint, keys, "presenter")
        self.stage = stage
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.pace = pace
        self.frame_tolerance = frame_tolerance
        self.marker = marker or NoMarker()
        self.verbose = verbose
        self.presenter_id = f"presenter-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if hasattr(self.marker, "bind_presenter"):
            self.marker.bind_presenter(self.presenter_id)
        refresh = refresh_hz or stage.measure_refresh_hz()
        if not refresh:
            raise ValueError("could not measure a stable refresh rate; check the display driver's vsync "
                             "setting or pass --refresh-hz")
        self.refresh_hz: float = refresh
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.presenter_id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)          # never queue for a controller that is not there
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if keys is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = keys.public, keys.secret
            self.sock.curve_serverkey = keys.server_public
        self.sock.connect(endpoint)
        # controller bookkeeping
        self.controller_id: str | None = None
        self.highest_seq = 0
        self.replies: OrderedDict[int, list[Message]] = OrderedDict()
        self.reply_bytes = 0                            # bytes held by self.replies (arrays + headers)
        self.reply_cache_bytes = _REPLY_CACHE_BYTES
        self.last_heard = 0.0
        self.controller_seen = False
        self.lost = False
        self.lost_count = 0
        self.out_seq = 0
        self.last_beat = 0.0
        self.busy_seq: int | None = None
        self.stop = False
        # session state
        self.session = ""
        self.frames: dict | None = None                 # n_fix, n_on, n_mask, refresh_hz
        self.expected = 0
        self.sha1s: list[str] = []
        self.pixels: list[np.ndarray] = []
        self.preloaded_digest = ""
        self.trials_run = 0
        self.last_trial: dict = {}
        # eye, fixation and reward (rig.presenter.fixation, rig.sources.reward)
        from psychopy import logging as _pl

        self.clock = _pl.defaultClock.getTime            # the clock flips are stamped with
        self.eye = eye
        self.fixation = FixationControl(eye, self.clock, fixation or FixationParams()) if eye is not None else None
        self.reward = reward or NoReward()
        self.reward_ms = float(reward_ms)
        self.manual_reward_key = manual_reward_key
        self.rewards = RewardLog()

    # ------------------------------------------------------------------ i/o
    def log(self, text: str) -> None:
        if self.verbose:
            _events.info(text)

    def send(self, msg: Message) -> None:
        """Send without blocking; a message for an absent controller is dropped."""
        self.out_seq += 1
        msg.seq = msg.seq or self.out_seq
        msg.session = msg.session or self.session
        try:
            self.sock.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass

    def beat_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_beat >= self.heartbeat_s:
            self.last_beat = now
            self.send(Message(HEARTBEAT, body={"presenter": self.presenter_id, "state": self.state()}))
        if self.controller_seen and not self.lost and now - self.last_heard > self.dead_after_s:
            self.lost, self.lost_count = True, self.lost_count + 1
            self.log(f"controller silent for {now - self.last_heard:.1f} s: screen blank, waiting for it")

    def state(self) -> str:
        if self.lost:
            return "waiting"
        if self.busy_seq is not None:
            return "busy"
        if self.preloaded_digest:
            return "ready"
        return "configured" if self.frames else "idle"

    def receive(self) -> Message | None:
        """One message if one is waiting (errors are answered here and give None)."""
        try:
            frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return None
        self.last_heard = time.monotonic()
        self.controller_seen = True
        if self.lost:
            self.lost = False
            self.log("controller is back")
        try:
            return decode(frames)
        except ProtocolError as exc:
            self.send(error_reply(-1, f"malformed message: {exc}"))
            return None

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Serve until ``shutdown`` (exit code 0)."""
        self.log(f"{self.presenter_id} connecting to {self.endpoint}; refresh {self.refresh_hz:.2f} Hz"
                 f"{' (paced)' if self.pace else ''}; window {self.stage.size_px[0]}x{self.stage.size_px[1]} px")
        self.stage.show_blank()
        self.send(Message("announce", body=self.describe()))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        last_pump = 0.0
        while not self.stop:
            if poller.poll(timeout=20):
                msg = self.receive()
                while msg is not None and not self.stop:
                    self.dispatch(msg, busy=False)
                    msg = self.receive() if not self.stop else None
            self.beat_if_due()
            if time.monotonic() - last_pump > 0.1:         # keep the window responsive while idle
                last_pump = time.monotonic()
                self.stage.win.winHandle.dispatch_events()
                self.check_manual_reward()
        self.marker.close()
        if self.eye is not None:
            self.eye.close()
        self.reward.close()
        self.sock.close(linger=0)
        return 0

    def dispatch(self, msg: Message, busy: bool) -> str | None:
        """Handle one message; returns an abort reason when ``busy`` and the trial must stop."""
        if msg.type == HEARTBEAT:
            return None
        if msg.type not in COMMANDS:
            self.send(error_reply(msg.seq, f"message type {msg.type!r} is not a command; the presenter "
                                           f"accepts {', '.join(COMMANDS)}"))
            return None
        if msg.type == "hello":
            if msg.body.get("controller") != self.controller_id:
                self.controller_id = msg.body.get("controller")
                self.highest_seq, self.replies, self.reply_bytes = 0, OrderedDict(), 0
                self.log(f"controller {self.controller_id} connected")
        elif self.controller_id is None:
            self.send(error_reply(msg.seq, f"out of order: {msg.type} before hello; send hello first"))
            return None
        if msg.seq in self.replies:                         # a resend: answer again, execute once
            for reply in self.replies[msg.seq]:
                self.send(reply)
            return None
        if busy and msg.seq == self.busy_seq:
            self.send(Message("ack", body={"of": msg.seq, "ok": True, "result": {"accepted": True}}))
            return None
        if msg.seq <= self.highest_seq:
            self.send(error_reply(msg.seq, f"out of order: seq {msg.seq} arrived after seq {self.highest_seq}; "
                                           "commands must carry increasing sequence numbers"))
            return None
        if busy and msg.type not in ALLOWED_WHILE_BUSY:
            self.send(error_reply(msg.seq, f"busy: command seq {self.busy_seq} is running; send {msg.type} "
                                           "again when it is done (or abort it)"))
            return None
        if msg.type not in ("hello", "configure", "status", "capture", "shutdown", "calibrate") and msg.session != self.session:
            self.send(error_reply(msg.seq, f"out of order: message for session {msg.session!r} but the presenter "
                                           f"is configured for session {self.session!r}; send configure first"))
            return None
        self.highest_seq = msg.seq
        if busy and msg.type == "abort":
            self._remember(msg.seq, Message("ack", body={"of": msg.seq, "ok": True,
                                                         "result": {"aborting": self.busy_seq}}))
            return f"abort requested: {msg.body.get('reason', 'fixation broken')}"
        handler = getattr(self, f"cmd_{msg.type}")
        long = msg.type in LONG_COMMANDS
        try:
            if long:
                ack = Message("ack", body={"of": msg.seq, "ok": True, "result": {"accepted": True}})
                self._remember(msg.seq, ack)
                self.busy_seq = msg.seq
                try:
                    result, arrays = handler(msg)
                finally:
                    self.busy_seq = None
                reply = Message("done", body={"of": msg.seq, "ok": True, "result": result}, arrays=arrays)
            else:
                result, arrays = handler(msg)
                reply = Message("ack", body={"of": msg.seq, "ok": True, "result": result}, arrays=arrays)
        except (Refused, ValueError) as exc:
            reply = error_reply(msg.seq, str(exc))
        except Exception as exc:  # a bug in one command must not take the screen down
            import traceback

            self.log(traceback.format_exc())
            reply = error_reply(msg.seq, f"internal error in {msg.type}: {exc!r} (see the presenter's log)")
        if long:
            self._cache(msg.seq, reply, append=True)
            self.send(reply)
        else:
            self._remember(msg.seq, reply)
        return None

    def _remember(self, seq: int, reply: Message) -> None:
        self._cache(seq, reply, append=False)
        self.send(reply)

    def _cache(self, seq: int, reply: Message, append: bool) -> None:
        """Keep ``reply`` for resends of ``seq``; evict the oldest until at most _REPLY_CACHE
        commands and ``reply_cache_bytes`` bytes are held (the newest is always kept)."""
        if not append and seq in self.replies:
            self.reply_bytes -= sum(_message_bytes(m) for m in self.replies.pop(seq))
        self.replies.setdefault(seq, []).append(reply)
        self.replies.move_to_end(seq)
        self.reply_bytes += _message_bytes(reply)
        while len(self.replies) > 1 and (len(self.replies) > _REPLY_CACHE or self.reply_bytes > self.reply_cache_bytes):
            _, old = self.replies.popitem(last=False)
            self.reply_bytes -= sum(_message_bytes(m) for m in old)

    def serve_while_busy(self) -> str | None:
        """Between frames/images: heartbeats, abort, status. Returns an abort reason or None."""
        reason = None
        msg = self.receive()
        while msg is not None:
            reason = self.dispatch(msg, busy=True) or reason
            msg = self.receive()
        self.beat_if_due()
        self.check_manual_reward()
        if self.lost:
            reason = reason or "controller lost"
        return reason

    def check_manual_reward(self) -> None:
        """The experimenter's reward key (``reward.manual_key``) gives one reward now."""
        if not self.manual_reward_key:
            return
        from psychopy import event

        for _ in event.getKeys(keyList=[self.manual_reward_key]):
            give_and_log(self.reward, self.rewards, self.reward_ms, "manual", self.clock)
            self.log(f"manual reward ({self.reward_ms:g} ms)")

    # ------------------------------------------------------------------ commands
    def describe(self) -> dict:
        return {"presenter": self.presenter_id, "pid": os.getpid(), "state": self.state(),
                "refresh_hz": self.refresh_hz, "paced": self.pace, "window_px": list(self.stage.size_px),
                "session": self.session, "frames": self.frames, "n_images": len(self.sha1s),
                "set_digest": self.preloaded_digest, "trials_run": self.trials_run,
                "controller_lost_count": self.lost_count, "last_trial": self.last_trial,
                "eye": getattr(self.eye, "name", "none") if self.eye is not None else "none",
                "acquire_timeout_s": self.fixation.params.acquire_timeout_ms / 1000.0 if self.fixation is not None else 0.0,
                "reward": getattr(self.reward, "name", "none"), "reward_ms": self.reward_ms,
                "scaling": getattr(self.stage, "scaling", "smooth"),
                "reply_cache": {"entries": len(self.replies), "bytes": self.reply_bytes, "limit": self.reply_cache_bytes}}

    def cmd_hello(self, msg):
        return self.describe(), {}

    def cmd_status(self, msg):
        return self.describe(), {}

    def cmd_shutdown(self, msg):
        self.stop = True
        self.log("shutdown requested")
        return {"stopping": True}, {}

    def cmd_abort(self, msg):
        return {"aborting": None, "note": "no trial is running"}, {}

    def cmd_capture(self, msg):
        """The screen as it is now, uint8 (H, W, 3)."""
        return {"showing": self.stage.current[0]}, {"screen": self.stage.capture_screen()}

    def cmd_configure(self, msg):
        b = msg.body
        try:
            stim_on, mask = float(b["stim_on_ms"]), float(b["mask_ms"])
            fixation_ms = float(b.get("fixation_ms", FIXATION_ACQUIRE_MS))
            size_deg = float(b.get("image_size_deg", IMAGE_SIZE_DEG))
            window_deg = float(b.get("fixation_window_deg", FIXATION_WINDOW_DEG))
        except (KeyError, TypeError, ValueError) as exc:
            raise Refused(f"configure needs numeric stim_on_ms, mask_ms (and optionally fixation_ms, "
                          f"image_size_deg, fixation_window_deg): {exc!r}") from None
        n_on, n_mask = frame_counts(stim_on, mask, self.refresh_hz, self.frame_tolerance)
        if not size_deg > 0:
            raise Refused(f"image_size_deg = {size_deg}: expected degrees > 0")
        if self.fixation is not None:
            self.fixation.params.window_deg = window_deg
            self.fixation.params.acquire_ms = fixation_ms
        if b.get("reward_ms") is not None:
            self.reward_ms = float(b["reward_ms"])
        if b.get("image_scaling") is not None:
            if b["image_scaling"] not in SCALINGS:
                raise Refused(f"configure: image_scaling {b['image_scaling']!r}; expected one of {', '.join(SCALINGS)}")
            self.stage.set_scaling(str(b["image_scaling"]))
        if b.get("calibration") and self.eye is not None:       # the raw -> degrees map the controller uses
            from rig.sources.calibration import CalibrationMap

            self.eye.set_calibration(CalibrationMap.from_dict(b["calibration"]))
        self.session = msg.session
        self.frames = {"n_fix": frames_at_least(fixation_ms, self.refresh_hz), "n_on": n_on, "n_mask": n_mask,
                       "refresh_hz": self.refresh_hz}
        size_px = self.stage.set_image_size(size_deg)
        self.log(f"session {self.session!r}: {n_on} frames on, {n_mask} mask, {self.frames['n_fix']} fixation "
                 f"at {self.refresh_hz:.2f} Hz; images {size_deg} deg = {size_px:.1f} px")
        return {**self.frames, "image_size_px": size_px, "image_scaling": self.stage.scaling,
                "gamma": {k: v for k, v in (self.stage.gamma or {}).items() if k != "monitor"} or None,
                "fixation_window_px": self.stage.monitor.px(window_deg)}, {}

    def cmd_calibrate(self, msg):
        """Show calibration targets: body {targets_deg: [[x, y], ...], window_deg, hold_ms, timeout_ms,
        raw_per_deg}; reply: accepted flags and the raw samples of each accepted target."""
        if self.eye is None:
            raise Refused("calibrate: this presenter has no eye tracker (set eye.source in its config)")
        from rig.presenter.calibration import run_calibration

        b = msg.body
        try:
            targets = np.asarray(b["targets_deg"], float).reshape(-1, 2)
            window, hold, timeout = float(b.get("window_deg", 3.0)), float(b.get("hold_ms", 300.0)), float(b.get("timeout_ms", 5000.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise Refused(f"calibrate needs targets_deg [[x, y], ...] (and numeric window_deg, hold_ms, timeout_ms): {exc!r}") from None
        saved = getattr(self.eye, "calibration", None)
        self.eye.set_calibration(None)                      # raw samples while calibrating
        try:
            res = run_calibration(self.stage, self.eye, targets, window_deg=window, hold_ms=hold, timeout_ms=timeout,
                                  raw_per_deg=float(b.get("raw_per_deg", 1.0)), settle_ms=float(b.get("settle_ms", 0.0)),
                                  should_abort=self.serve_while_busy,
                                  on_accept=lambda i: give_and_log(self.reward, self.rewards, self.reward_ms,
                                                                   "calibration", self.clock),
                                  pace_hz=self.refresh_hz if self.pace else None, announce=self._target_outlet(str(b.get("target_stream", "itloop-calibration-target"))))
        finally:
            self.eye.set_calibration(saved)
        arrays = {f"raw_{i}": np.asarray(r["raw"], np.float64) for i, r in enumerate(res)}
        rewards = self.rewards.take()
        arrays.update({"reward_t_s": np.asarray(rewards.t_s, np.float64),
                       "reward_ms": np.asarray(rewards.duration_ms, np.float64)})
        return {"targets": [{k: r[k] for k in ("target_deg", "accepted", "how")} for r in res]}, arrays

    def _target_outlet(self, name: str):
        """An LSL marker stream ``name`` ("x y" in degrees per target shown), so recording software
        (and the simulated monkey's eye) can see which target is up; None without pylsl."""
        if not hasattr(self, "_targets"):
            self._targets: dict[str, StreamOutlet] = {}
        if name not in self._targets:
            try:
                import pylsl
            except ImportError:
                return None
            info = pylsl.StreamInfo(name, "Markers", 1, 0, pylsl.cf_string, f"{self.presenter_id}-{name}")
            self._targets[name] = pylsl.StreamOutlet(info)
            self._targets[name].wait_for_consumers(2.0)      # a listener gets the first target too
        outlet = self._targets[name]
        return lambda x, y: outlet.push_sample([f"{x:.4f} {y:.4f}"])

    def cmd_load_images(self, msg):
        """A chunk of the stimulus set: body {start, n_total, sha1: [...]}, array ``pixels``."""
        b, px = msg.body, msg.arrays.get("pixels")
        if px is None or px.dtype != np.uint8 or px.ndim != 4 or px.shape[-1] != 3 or min(px.shape[1:3]) < 1:
            raise Refused("load_images needs a uint8 array 'pixels' of shape (k, H, W, 3) with H, W >= 1")
        start, sha1s = int(b.get("start", -1)), list(b.get("sha1", []))
        if start == 0:
            self.expected, self.sha1s, self.pixels, self.preloaded_digest = int(b.get("n_total", 0)), [], [], ""
        if start != len(self.pixels):
            raise Refused(f"out of order: chunk starts at image {start} but {len(self.pixels)} images are loaded; "
                          "send chunks in order from start=0")
        if len(sha1s) != len(px):
            raise Refused(f"load_images has {len(px)} images but {len(sha1s)} sha1 values")
        self._verify(px, sha1s, start)
        if start + len(px) > self.expected:
            raise Refused(f"chunk ends at image {start + len(px)} but n_total is {self.expected}")
        self.pixels.extend(np.array(p) for p in px)
        self.sha1s.extend(sha1s)
        return {"received": len(self.pixels), "n_total": self.expected}, {}

    def _verify(self, pixels: np.ndarray, sha1s: list[str], start: int) -> None:
        for k, (p, want) in enumerate(zip(pixels, sha1s)):
            got = sha1_of(p)
            if got != want:
                raise Refused(f"image {start + k} refused: its sha1 is {got} but the controller expects {want}; "
                              "the pixels were corrupted or the stimulus set changed - reload the whole set")

    def cmd_load_file(self, msg):
        """Read the whole set from a file: body {path, dataset (HDF5) , sha1: [...]}; .npy also works."""
        b = msg.body
        path, sha1s = Path(str(b.get("path", ""))), list(b.get("sha1", []))
        if not path.is_file():
            raise Refused(f"load_file: {path} does not exist on the presenter computer; copy the day/plan file "
                          "there or send the pixels with load_images")
        if path.suffix == ".npy":
            px = np.load(path, allow_pickle=False)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                name = str(b.get("dataset", "stimuli/pixels"))
                if name not in f:
                    raise Refused(f"load_file: {path} has no dataset {name!r}")
                px = f[name][()]
        if px.dtype != np.uint8 or px.ndim != 4 or px.shape[-1] != 3 or len(px) != len(sha1s) or min(px.shape[1:3]) < 1:
            raise Refused(f"load_file: {path} holds {px.dtype} {px.shape}; expected uint8 ({len(sha1s)}, H, W, 3)")
        self._verify(px, sha1s, 0)
        self.expected, self.sha1s, self.pixels, self.preloaded_digest = len(px), sha1s, list(px), ""
        return {"received": len(px), "n_total": len(px)}, {}

    def cmd_preload(self, msg):
        if not self.expected or len(self.pixels) != self.expected:
            raise Refused(f"out of order: preload with {len(self.pixels)} of {self.expected} images loaded; "
                          "send every image (load_images or load_file) first")
        t0 = time.perf_counter()

        def keep_serving(i):
            if i % 16 == 0:
                self.serve_while_busy()

        self.stage.preload(np.stack(self.pixels) if len({p.shape for p in self.pixels}) == 1 else self.pixels,
                           keep_serving)
        self.pixels = [np.empty((0, 0, 3), np.uint8)] * len(self.pixels)   # textures hold them now
        self.preloaded_digest = set_digest(self.sha1s)
        self.stage.show_blank()
        seconds = time.perf_counter() - t0
        self.log(f"preloaded {len(self.sha1s)} images in {seconds:.1f} s")
        shown = self.stage.shown_size_px(self.stage.images[0]._itloop_shape[0]) if self.stage.images else None
        return {"n_images": len(self.sha1s), "seconds": seconds, "set_digest": self.preloaded_digest,
                "image_scaling": self.stage.scaling, "image_shown_px": shown}, {}

    def cmd_run_trial(self, msg):
        if not self.preloaded_digest or self.frames is None:
            raise Refused("out of order: run_trial before configure and preload")
        b = msg.body
        idx = [int(i) for i in b.get("stim_indices", [])]
        if not idx or min(idx) < 0 or max(idx) >= len(self.sha1s):
            raise Refused(f"run_trial: stim_indices {idx} must be a non-empty list in [0, {len(self.sha1s)})")
        capture = bool(b.get("capture", False))
        f = self.frames
        if capture and f["n_fix"] + len(idx) * (f["n_on"] + f["n_mask"]) > 400:
            raise Refused("run_trial: capture is for short diagnostic trials (at most 400 frames)")
        log = run_frames(self.stage, idx, f["n_fix"], f["n_on"], f["n_mask"], should_abort=self.serve_while_busy,
                         marker=self.marker, pace_hz=self.refresh_hz if self.pace else None, capture=capture,
                         fixation=self.fixation, refresh_hz=self.refresh_hz,
                         check_lead_s=self.fixation.params.check_lead_ms / 1000.0 if self.fixation is not None else 0.0)
        per = log.presentations(len(idx), f["n_on"], f["n_mask"], self.refresh_hz)
        self.trials_run += 1
        if not log.aborted and per["completed"] == len(idx):
            give_and_log(self.reward, self.rewards, self.reward_ms, "trial", self.clock)
        trace = self.fixation.trace() if self.fixation is not None else GazeSamples.empty()
        rewards = self.rewards.take()
        result = {"trial_index": b.get("trial_index"), "completed": per["completed"], "aborted": log.aborted,
                  "reason": log.reason, "n_presentations": len(idx), **{k: f[k] for k in ("n_fix", "n_on", "n_mask")},
                  "refresh_hz": self.refresh_hz,
                  "events": [(e["kind"], e["pres"], e["frame"]) for e in log.events]}
        self.last_trial = {"seq": msg.seq, **{k: result[k] for k in ("trial_index", "completed", "aborted", "reason")}}
        if log.aborted:
            self.log(f"trial {b.get('trial_index')} aborted ({log.reason}) after {per['completed']} presentations")
        arrays = {"onset_s": per["onset_s"], "mask_s": per["mask_s"], "frames_on": per["frames_on"].astype(np.int32),
                  "frames_mask": per["frames_mask"].astype(np.int32), "dropped": per["dropped"],
                  "frame_time_s": log.frame_time_s, "frame_kind": log.frame_kind, "frame_pres": log.frame_pres,
                  "event_time_s": np.array([e["t"] for e in log.events], dtype=np.float64),
                  "frame_gaze_t": log.frame_gaze_t, "frame_gaze_in": log.frame_gaze_in,
                  "eye_t_s": trace.t_s, "eye_x_deg": trace.x_deg, "eye_y_deg": trace.y_deg, "eye_pupil": trace.pupil,
                  "reward_t_s": np.asarray(rewards.t_s, np.float64),
                  "reward_ms": np.asarray(rewards.duration_ms, np.float64),
                  "reward_kind": np.asarray([REWARD_KINDS.index(k) for k in rewards.kind], np.int8)}
        result["break_t_s"] = log.break_t if np.isfinite(log.break_t) else None
        result["eye"] = self.eye.name if self.eye is not None else "none"
        result["eye_offset_s"] = self.fixation.offset_s if self.fixation is not None else None   # presenter - eye clock
        if capture:
            arrays["captures"] = np.stack(log.captures)
        return result, arrays
