"""The controller's side of the presenter protocol (``rig.link.protocol``).

The controller binds a ROUTER socket; the presenter connects and announces itself::

    with PresenterClient("tcp://127.0.0.1:*", session="day3") as pc:
        pc.wait_for_presenter(timeout_s=30)
        pc.configure(stim_on_ms=100, mask_ms=100, fixation_ms=300, image_size_deg=8)
        pc.load_stimuli(stimset.pixels, stimset.ids)      # verified by sha1, then preloaded
        result = pc.run_trial(trial_index=0, stim_indices=[4, 9, 1])

Every command is resent with the same seq until acknowledged (the presenter executes it
once). Heartbeats go out whenever the client waits; a presenter silent for
``dead_after_s`` raises :class:`PresenterLost`. Single-threaded: call ``pump()`` if the
controller idles for longer than ``dead_after_s`` between commands and wants to notice.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import zmq

from rig.backend import FIXATION_ACQUIRE_MS, FIXATION_WINDOW_DEG, IMAGE_SIZE_DEG
from rig.link.eventlog import event_logger
from rig.link.protocol import (
    HEARTBEAT,
    KIND_CODE,
    LONG_COMMANDS,
    CurveKeys,
    Message,
    ProtocolError,
    decode,
    encode,
    require_security,
    set_digest,
)

_events = event_logger(__name__, "controller")   # the verbose event lines, on stderr

_CHUNK_BYTES = 8 << 20          # load_images messages carry about this many pixel bytes


class PresenterError(RuntimeError):
    """The presenter refused a command or cannot be reached; the text says which and why."""


class PresenterRefused(PresenterError):
    """The presenter answered a command with an error reply."""


class PresenterLost(PresenterError):
    """No message from the presenter for ``dead_after_s`` seconds."""


@dataclass
class TrialResult:
    """What the presenter reports for one trial (times on the presenter clock, s)."""

    trial_index: int | None      # as the presenter echoed it (None if it did not)
    completed: int
    aborted: bool
    reason: str
    onset_s: np.ndarray          # (K,) stim_on flip time per presentation; NaN if never shown
    mask_s: np.ndarray           # (K,) mask_on flip time
    frames_on: np.ndarray        # (K,) frames the image was up
    frames_mask: np.ndarray      # (K,) frames the mask was up
    dropped: np.ndarray          # (K,) a frame was dropped in this presentation
    frame_time_s: np.ndarray     # every flip
    frame_kind: np.ndarray       # code into rig.presenter.trial.KINDS per flip
    frame_pres: np.ndarray       # presentation index per flip (-1: none)
    events: list                 # (kind, presentation, frame) per screen change
    event_time_s: np.ndarray     # flip time of each event (callOnFlip stamp)
    n_on: int
    n_mask: int
    refresh_hz: float
    captures: np.ndarray | None = None
    raw: dict = field(default_factory=dict, repr=False)
    arrays: dict = field(default_factory=dict, repr=False)   # every array the presenter sent (eye trace, rewards, ...)

    def array(self, name: str, dtype=np.float64) -> np.ndarray:
        """An optional array of the reply (``eye_t_s``, ``reward_ms``, ``frame_gaze_t``, ...); empty if absent."""
        return np.asarray(self.arrays.get(name, np.zeros(0)), dtype=dtype)

    def image_off_s(self) -> np.ndarray:
        """(K,) flip time that took each shown image off the screen (mask or abort blank); NaN if never shown."""
        off = np.full(len(self.onset_s), np.nan)
        for i in range(len(off)):
            idx = np.flatnonzero((self.frame_kind == KIND_CODE["stim_on"]) & (self.frame_pres == i))
            if len(idx) and idx[-1] + 1 < len(self.frame_time_s):
                off[i] = self.frame_time_s[idx[-1] + 1]
        return off

    @property
    def shown(self) -> int:
        """Presentations whose image reached the screen (complete or not)."""
        return int(np.sum(np.isfinite(self.onset_s)))


class PresenterClient:
    """Controller end of one presenter link (binds ``endpoint``)."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", *, session: str = "", heartbeat_s: float = 0.5,
                 dead_after_s: float = 3.0, ack_timeout_s: float = 1.0, max_resends: int = 5,
                 keys: CurveKeys | None = None, allowed_keys: set[bytes] | None = None, verbose: bool = False):
        require_security(endpoint, keys, "controller")
        if keys is not None and not allowed_keys:
            raise ValueError("CURVE keys are set but no presenter key is authorised: set presenter.curve_authorized_keys "
                             "to a folder of presenter public .key files (`itloop keys --authorize DIR` on the "
                             "controller), so that only those presenters can connect")
        self.session = session
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        self.ack_timeout_s, self.max_resends = ack_timeout_s, max_resends
        self.controller_id = uuid.uuid4().hex
        self.verbose = verbose
        self.gate = None
        if keys is not None and allowed_keys:   # own context: its ZAP handler answers for this socket only
            from rig.link.zap import KeyGate

            self.ctx = zmq.Context()
            self.gate = KeyGate(self.ctx, allowed_keys)
        else:
            self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if keys is not None:
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = keys.public, keys.secret
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peer: bytes | None = None
        self.presenter_info: dict = {}
        self.frames: dict = {}
        self.seq = 0
        self.last_heard = 0.0
        self.last_beat = 0.0
        self.replies: dict[int, list[Message]] = {}
        self.errors: list[Message] = []        # error replies not tied to a command (seq -1)
        self.presenter_key: str = ""           # Z85 CURVE key of the bound presenter ("" without CURVE)
        self.ignored: dict[bytes, int] = {}    # messages from peers that are not the bound presenter

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> "PresenterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (the presenter notices after dead_after_s); safe to call twice."""
        if not self.sock.closed:
            self.sock.close(linger=0)
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
            self.ctx.term()

    def _send(self, msg: Message) -> None:
        if self.peer is None:
            raise PresenterError("no presenter has connected yet; call wait_for_presenter() first")
        msg.session = msg.session or self.session
        try:
            self.sock.send_multipart([self.peer, *encode(msg)], flags=zmq.NOBLOCK, copy=False)
        except (zmq.Again, zmq.ZMQError) as exc:
            if isinstance(exc, zmq.Again) or exc.errno == zmq.EHOSTUNREACH:
                return          # presenter not connected right now: the resend or the liveness check will tell
            raise

    def send_frames(self, frames: list[bytes]) -> None:
        """Send raw frames to the presenter (diagnostics and tests of malformed input)."""
        if self.peer is None:
            raise PresenterError("no presenter has connected yet; call wait_for_presenter() first")
        self.sock.send_multipart([self.peer, *frames])

    def pump(self, timeout_s: float = 0.0) -> None:
        """Receive what has arrived (waiting up to ``timeout_s``), send a heartbeat if due,
        and raise PresenterLost if the presenter has been silent for ``dead_after_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if self.sock.poll(wait_ms, zmq.POLLIN):
                while self.sock.poll(0, zmq.POLLIN):
                    self._receive()
            now = time.monotonic()
            if self.peer is not None and now - self.last_beat >= self.heartbeat_s:
                self.last_beat = now
                self._send(Message(HEARTBEAT, body={"controller": self.controller_id}))
            if self.peer is not None and now - self.last_heard > self.dead_after_s:
                raise PresenterLost(f"presenter {self.peer.decode(errors='replace')} sent nothing for "
                                    f"{now - self.last_heard:.1f} s (dead_after_s = {self.dead_after_s}); "
                                    "is its process alive and the network up?")
            if now >= deadline:
                return

    def _receive(self) -> None:
        raw = self.sock.recv_multipart(copy=False)
        peer, frames = raw[0].bytes, [f.bytes for f in raw[1:]]
        key = ""
        if self.gate is not None and len(raw) > 1:
            key = str(raw[1].get("User-Id") or "")   # the Z85 public key ZAP accepted for this peer
        try:
            msg = decode(frames)
        except ProtocolError:
            return                                   # not from a presenter we understand: ignore
        if peer != self.peer and not self._adopt(peer, key, msg):
            self.ignored[peer] = self.ignored.get(peer, 0) + 1
            return
        problem = reply_problem(msg)
        if problem:          # the bound presenter sent a reply no presenter sends: stop, the day stays resumable
            raise PresenterError(f"presenter {peer.decode(errors='replace')} sent a malformed {msg.type!r} message "
                                 f"({problem}); is it an itloop presenter of this version?")
        self.last_heard = time.monotonic()
        if msg.type in ("announce", HEARTBEAT):
            self.presenter_info.update(msg.body)
            return
        of = msg.body.get("of", -1)
        if of == -1:
            self.errors.append(msg)
        else:
            self.replies.setdefault(of, []).append(msg)

    def _adopt(self, peer: bytes, key: str, msg: Message) -> bool:
        """Whether a message from a new ``peer`` makes it the presenter.

        The presenter is bound for the session: the first peer is adopted; after that a
        new peer is adopted only when it announces itself (a restarted presenter does) or
        the bound one has fallen silent, and, with CURVE, only with the same public key.
        """
        if self.peer is not None:
            quiet_s = time.monotonic() - self.last_heard
            if msg.type != "announce" and quiet_s <= self.dead_after_s:   # the bound presenter is alive: ignore others
                return False
            if msg.type == "announce" and not self.presenter_key and quiet_s <= 2 * self.heartbeat_s:
                # without CURVE nothing proves who announces: a live presenter (heard within two
                # heartbeats) is never replaced; a restarted one is adopted once the old one fell silent
                self._log(f"refused a second announce from {peer.decode(errors='replace')}: the session's presenter "
                          f"{self.peer.decode(errors='replace')} is alive")
                return False
            if self.presenter_key and key != self.presenter_key:
                self._log(f"refused {peer.decode(errors='replace')}: CURVE key {key} is not the session's "
                          f"presenter key {self.presenter_key}")
                return False
        self.peer = peer                             # a (re)started presenter: talk to it from now on
        if key and not self.presenter_key:
            self.presenter_key = key
        self._log(f"presenter {peer.decode(errors='replace')} connected"
                  + (f" with CURVE key {key}" if key else " (no CURVE: loopback)"))
        return True

    def _log(self, text: str) -> None:
        if self.verbose:
            _events.info(text)

    def _take(self, seq: int, types: tuple[str, ...]) -> Message | None:
        for m in self.replies.get(seq, []):
            if m.type in types:
                self.replies[seq].remove(m)
                return m
        return None

    # ------------------------------------------------------------------ commands
    def wait_for_presenter(self, timeout_s: float = 30.0, say_hello: bool = True) -> dict:
        """Wait for a presenter to connect, then say hello; returns its state (``describe``).

        With ``say_hello=False`` returns what its heartbeat/announce said (e.g. ``state``:
        'waiting' when it lost its previous controller).
        """
        deadline = time.monotonic() + timeout_s
        while self.peer is None:
            if time.monotonic() > deadline:
                raise PresenterError(f"no presenter connected to {self.endpoint} within {timeout_s:.0f} s; start "
                                     f"`itloop present --endpoint {self.endpoint}` on the stimulus computer")
            if self.sock.poll(100, zmq.POLLIN):
                self._receive()
        return self.hello() if say_hello else dict(self.presenter_info)

    def hello(self) -> dict:
        """Introduce this controller; returns the presenter's state (what is configured and loaded)."""
        self.presenter_info = self.request("hello", {"controller": self.controller_id})
        if not isinstance(self.presenter_info, dict) or not isinstance(self.presenter_info.get("frames") or {}, dict):
            raise PresenterError("presenter answered hello with a malformed state (frames is not a table)")
        if self.presenter_info.get("frames") and self.presenter_info.get("session") == self.session:
            self.frames = dict(self.presenter_info["frames"])       # resuming: same session, same frames
        return self.presenter_info

    def send_command(self, mtype: str, body: dict | None = None, arrays: dict | None = None,
                     seq: int | None = None) -> int:
        """Send one command without waiting; returns its seq (pass ``seq`` to resend)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        self._send(Message(mtype, seq=seq, body=body or {}, arrays=arrays or {}))
        return seq

    def request(self, mtype: str, body: dict | None = None, arrays: dict | None = None,
                timeout_s: float | None = None) -> dict:
        """Send a command, resend it until acknowledged, and return its result.

        Long commands (run_trial, preload, load_file) also wait for ``done`` up to
        ``timeout_s`` (heartbeats show the presenter is alive meanwhile).
        """
        return self.request_message(mtype, body, arrays, timeout_s).body.get("result", {})

    def request_message(self, mtype: str, body: dict | None = None, arrays: dict | None = None,
                        timeout_s: float | None = None) -> Message:
        seq = self.send_command(mtype, body, arrays)
        ack = self._await(seq, ("ack", "error"), resend=(mtype, body, arrays))
        self._check(ack, mtype)
        if mtype not in LONG_COMMANDS:
            return ack
        return self.await_done(seq, mtype, timeout_s)

    def await_done(self, seq: int, mtype: str = "command", timeout_s: float | None = None, *,
                   abort_after_s: float | None = None, abort_reason: str = "fixation broken") -> Message:
        """Wait for ``done`` of command ``seq``; optionally send ``abort`` after ``abort_after_s``."""
        t0 = time.monotonic()
        deadline = t0 + (timeout_s if timeout_s is not None else 600.0)
        aborted = False
        while True:
            msg = self._take(seq, ("done", "error"))
            if msg is not None:
                self._check(msg, mtype)
                return msg
            if abort_after_s is not None and not aborted and time.monotonic() - t0 >= abort_after_s:
                aborted = True
                self.send_command("abort", {"reason": abort_reason})
            if time.monotonic() > deadline:
                raise PresenterError(f"{mtype} (seq {seq}) did not finish within {timeout_s} s although the "
                                     "presenter is alive; check its log")
            self.pump(0.01)

    def _await(self, seq: int, types: tuple[str, ...], resend) -> Message:
        for _ in range(self.max_resends + 1):
            deadline = time.monotonic() + self.ack_timeout_s
            while time.monotonic() < deadline:
                msg = self._take(seq, types)
                if msg is not None:
                    return msg
                self.pump(0.005)
            mtype, body, arrays = resend
            self.send_command(mtype, body, arrays, seq=seq)          # same seq: executed once
        raise PresenterError(f"{resend[0]} (seq {seq}) was not acknowledged after {self.max_resends} resends")

    @staticmethod
    def _check(msg: Message, mtype: str) -> None:
        if msg.type == "error" or not msg.body.get("ok", False):
            raise PresenterRefused(f"presenter refused {mtype}: {msg.body.get('error', msg.body)}")

    # ------------------------------------------------------------------ the session
    def configure(self, *, stim_on_ms: float, mask_ms: float, fixation_ms: float = FIXATION_ACQUIRE_MS,
                  image_size_deg: float = IMAGE_SIZE_DEG, fixation_window_deg: float = FIXATION_WINDOW_DEG,
                  **extra) -> dict:
        """Frame counts from the presenter's refresh rate (refused if not whole frames).

        ``extra``: optional settings the presenter also takes (``reward_ms``)."""
        self.frames = self.request("configure", {"stim_on_ms": stim_on_ms, "mask_ms": mask_ms,
                                                 "fixation_ms": fixation_ms, "image_size_deg": image_size_deg,
                                                 "fixation_window_deg": fixation_window_deg, **extra})
        return self.frames

    def load_stimuli(self, pixels: np.ndarray, sha1s: list[str], *, preload: bool = True,
                     force: bool = False, timeout_s: float = 3600.0) -> dict:
        """Send uint8 (n, H, W, 3) pixels in chunks with their sha1s, then preload textures.

        Skipped when the presenter already holds exactly this set (a resumed session),
        unless ``force``.
        """
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) != len(sha1s):
            raise ValueError(f"pixels must be uint8 (n, H, W, 3) with one sha1 each; got {pixels.dtype} "
                             f"{pixels.shape} and {len(sha1s)} sha1s")
        digest = set_digest(list(sha1s))
        if not force and self.presenter_info.get("set_digest") == digest:
            return {"n_images": len(sha1s), "seconds": 0.0, "set_digest": digest, "reused": True}
        per = max(1, _CHUNK_BYTES // max(1, pixels[0].nbytes))
        for start in range(0, len(pixels), per):
            self.request("load_images", {"start": start, "n_total": len(pixels), "sha1": list(sha1s[start:start + per])},
                         {"pixels": pixels[start:start + per]})
        return self.preload(timeout_s) if preload else {"n_images": len(pixels)}

    def load_file(self, path: str, sha1s: list[str], dataset: str = "stimuli/pixels", *,
                  timeout_s: float = 3600.0) -> dict:
        """Have the presenter read the pixels from a file it can see (HDF5 dataset or .npy)."""
        self.request("load_file", {"path": str(path), "dataset": dataset, "sha1": list(sha1s)}, timeout_s=timeout_s)
        return self.preload(timeout_s)

    def preload(self, timeout_s: float = 3600.0) -> dict:
        result = self.request("preload", timeout_s=timeout_s)
        self.presenter_info["set_digest"] = result.get("set_digest", "")
        return result

    def start_trial(self, trial_index: int, stim_indices, capture: bool = False) -> int:
        """Send run_trial and wait for its acknowledgement; returns its seq."""
        body = {"trial_index": int(trial_index), "stim_indices": [int(i) for i in stim_indices], "capture": capture}
        seq = self.send_command("run_trial", body)
        self._check(self._await(seq, ("ack", "error"), resend=("run_trial", body, None)), "run_trial")
        return seq

    def trial_timeout_s(self, n_images: int) -> float:
        f = self.frames or {"n_fix": 60, "n_on": 6, "n_mask": 6, "refresh_hz": 60.0}
        acquire = float(self.presenter_info.get("acquire_timeout_s", 0.0) or 0.0)   # a presenter waiting for fixation
        return (f["n_fix"] + n_images * (f["n_on"] + f["n_mask"]) + 2) / f["refresh_hz"] * 3 + 10.0 + acquire

    def finish_trial(self, seq: int, n_images: int, *, abort_after_s: float | None = None,
                     abort_reason: str = "fixation broken") -> TrialResult:
        msg = self.await_done(seq, "run_trial", self.trial_timeout_s(n_images), abort_after_s=abort_after_s,
                              abort_reason=abort_reason)
        return _trial_result(msg)

    def run_trial(self, trial_index: int, stim_indices, *, capture: bool = False,
                  abort_after_s: float | None = None) -> TrialResult:
        """Show one trial and return the flip-stamped result; ``abort_after_s`` breaks fixation."""
        seq = self.start_trial(trial_index, stim_indices, capture)
        return self.finish_trial(seq, len(stim_indices), abort_after_s=abort_after_s)

    def abort(self, reason: str = "fixation broken") -> dict:
        return self.request("abort", {"reason": reason})

    def status(self) -> dict:
        return self.request("status")

    def capture(self) -> np.ndarray:
        """What the presenter's screen shows now, uint8 (H, W, 3)."""
        return np.array(self.request_message("capture").arrays["screen"])

    def shutdown(self) -> None:
        """Ask the presenter process to exit."""
        self.request("shutdown")


REPLY_TYPES = ("ack", "done", "error", "announce", HEARTBEAT)
_TRIAL_ARRAYS = ("onset_s", "mask_s", "frames_on", "frames_mask", "dropped", "frame_time_s", "frame_kind",
                 "frame_pres", "event_time_s")
_TRIAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "completed": int, "aborted": bool, "events": list, "n_on": int, "n_mask": int, "refresh_hz": (int, float)}


def reply_problem(msg: Message) -> str:
    """What is wrong with a presenter's message ("" if nothing): the schema replies follow,
    checked like requests are on the presenter's side."""
    if msg.type not in REPLY_TYPES:
        return f"type {msg.type!r} is not one of {', '.join(REPLY_TYPES)}"
    body = msg.body
    if not isinstance(body, dict):
        return "its body is not a table"
    if msg.type in ("announce", HEARTBEAT):
        return ""
    of = body.get("of", -1)
    if isinstance(of, bool) or not isinstance(of, int) or of < -1:
        return f"'of' = {of!r} is not a command number"
    for key, kind in (("ok", bool), ("result", dict), ("error", str)):
        if key in body and not isinstance(body[key], kind):
            return f"{key!r} = {body[key]!r} is not a {kind.__name__}"
    return ""


def _trial_result(msg: Message) -> TrialResult:
    r, a = msg.body.get("result"), msg.arrays
    if not isinstance(r, dict):
        raise PresenterError("presenter's run_trial result is not a table")
    bad = [k for k, kind in _TRIAL_FIELDS.items() if isinstance(r.get(k), bool) != (kind is bool)
           or not isinstance(r.get(k), kind)] + [k for k in _TRIAL_ARRAYS if k not in a]
    if bad:
        raise PresenterError(f"presenter's run_trial result lacks or mistypes {', '.join(bad)}; is it an itloop "
                             "presenter of this version?")
    return TrialResult(trial_index=r.get("trial_index"), completed=int(r["completed"]), aborted=bool(r["aborted"]),
                       reason=r.get("reason", ""), onset_s=np.array(a["onset_s"]), mask_s=np.array(a["mask_s"]),
                       frames_on=np.array(a["frames_on"]), frames_mask=np.array(a["frames_mask"]),
                       dropped=np.array(a["dropped"]), frame_time_s=np.array(a["frame_time_s"]),
                       frame_kind=np.array(a["frame_kind"]), frame_pres=np.array(a["frame_pres"]),
                       events=[tuple(e) for e in r["events"]], event_time_s=np.array(a["event_time_s"]),
                       n_on=int(r["n_on"]), n_mask=int(r["n_mask"]), refresh_hz=float(r["refresh_hz"]),
                       captures=np.array(a["captures"]) if "captures" in a else None, raw=r,
                       arrays={k: np.array(v) for k, v in a.items()})
