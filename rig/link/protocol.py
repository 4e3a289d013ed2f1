"""The controller <-> presenter wire protocol (DESIGN section 5): framing, nothing else.

A message is a list of ZeroMQ frames: frame 0 is a UTF-8 JSON header, frames 1.. are raw
numpy buffers. Never pickle. The header always carries::

    {"type": str, "seq": int, "session": str, "sent_at": float (s, sender's time.time()),
     "version": PROTOCOL_VERSION, "body": {...},
     "arrays": [{"name": str, "dtype": "<u1", "shape": [n, h, w, 3]}, ...]}

and ``arrays[k]`` describes binary frame ``k + 1``. Only plain numeric/bool dtypes travel
(no object arrays), so a frame can never execute code when decoded.

Semantics (enforced by ``rig.presenter.server`` and ``rig.link.client``):

- every command (``COMMANDS``) gets one ``ack`` (``body.of`` = the command's seq, ``ok``,
  ``result`` or ``error``); an unacknowledged command is resent with the same seq, and a
  duplicate seq is executed once (the stored reply is sent again);
- long commands (``LONG_COMMANDS``: ``run_trial``, ``preload``, ``load_file``) are
  acknowledged on receipt and answered by ``done`` (``body.of``, ``ok``, ``result``) when
  they end;
- ``heartbeat`` flows both ways and is never acknowledged;
- anything that cannot be decoded or is not allowed now gets an ``error`` reply.
"""
from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1

# controller -> presenter, each acknowledged
COMMANDS = ("hello", "configure", "load_images", "load_file", "preload", "run_trial", "abort",
            "status", "capture", "shutdown", "calibrate")
# presenter -> controller
REPLIES = ("announce", "ack", "done", "error")
LONG_COMMANDS = ("run_trial", "preload", "load_file", "calibrate")
# both ways, never acknowledged
HEARTBEAT = "heartbeat"
# the frame-log event kinds a presenter reports for each flip (``frame_kind`` codes in a ``done`` reply)
FRAME_KINDS = ("fix_on", "stim_on", "mask_on", "blank", "abort_blank")
KIND_CODE = {k: i for i, k in enumerate(FRAME_KINDS)}
ALL_TYPES = COMMANDS + REPLIES + (HEARTBEAT,)

# dtypes that may travel as binary frames ("kind" letters: bool, signed, unsigned, float)
_ALLOWED_KINDS = "biuf"
_MAX_HEADER_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A message that cannot be decoded; the text says what is wrong with it."""


@dataclass
class Message:
    """One protocol message: a typed header, a JSON body and named numpy arrays."""

    type: str
    seq: int = 0
    session: str = ""
    body: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    sent_at: float = 0.0
    version: int = PROTOCOL_VERSION


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> ZeroMQ frames (JSON header, then one raw buffer per array)."""
    if msg.type not in ALL_TYPES:
        raise ValueError(f"message type {msg.type!r} is not part of protocol v{PROTOCOL_VERSION}; use one of {ALL_TYPES}")
    descs, buffers = [], []
    for name, arr in msg.arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"array {name!r} has dtype {a.dtype}; only bool/int/uint/float arrays can be sent")
        descs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(memoryview(a).cast("B") if a.size else b"")
    header = {"type": msg.type, "seq": int(msg.seq), "session": msg.session,
              "sent_at": msg.sent_at or time.time(), "version": msg.version,
              "body": msg.body, "arrays": descs}
    return [json.dumps(header, allow_nan=True).encode("utf-8"), *buffers]


def decode(frames: list[bytes]) -> Message:
    """ZeroMQ frames -> Message; raises ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("empty message: expected a JSON header frame")
    raw = bytes(frames[0])
    if len(raw) > _MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(raw)} bytes; the limit is {_MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    missing = [k for k in ("type", "seq", "session", "sent_at", "version") if k not in header]
    if missing:
        raise ProtocolError(f"header lacks {', '.join(missing)}")
    if header["version"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header['version']!r} is not supported; this side speaks "
                            f"version {PROTOCOL_VERSION}: run the same itloop version on both computers")
    mtype, seq = header["type"], header["seq"]
    if not isinstance(mtype, str) or mtype not in ALL_TYPES:
        raise ProtocolError(f"unknown message type {mtype!r}; known types: {', '.join(ALL_TYPES)}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError(f"seq {seq!r} must be an integer >= 0")
    sent_at = header["sent_at"]
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
        raise ProtocolError(f"sent_at {sent_at!r} must be a number (seconds since the epoch)")
    body = header.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError("header.body must be a JSON object")
    descs = header.get("arrays", [])
    if not isinstance(descs, list) or len(descs) != len(frames) - 1:
        raise ProtocolError(f"header describes {len(descs) if isinstance(descs, list) else '?'} arrays "
                            f"but {len(frames) - 1} binary frames follow")
    arrays = {}
    for k, (desc, buf) in enumerate(zip(descs, frames[1:])):
        arrays_name, arr = _decode_array(k, desc, buf)
        arrays[arrays_name] = arr
    return Message(type=mtype, seq=seq, session=str(header["session"]), body=body, arrays=arrays,
                   sent_at=float(sent_at), version=header["version"])


def _decode_array(k: int, desc: Any, buf: bytes) -> tuple[str, np.ndarray]:
    try:
        name, dtype, shape = str(desc["name"]), np.dtype(desc["dtype"]), tuple(int(s) for s in desc["shape"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ProtocolError(f"array {k}: descriptor {desc!r} is not {{name, dtype, shape}} ({exc})") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
        raise ProtocolError(f"array {name!r}: dtype {dtype} is not allowed (bool/int/uint/float only)")
    if any(s < 0 for s in shape):
        raise ProtocolError(f"array {name!r}: negative shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise ProtocolError(f"array {name!r}: {len(buf)} bytes for dtype {dtype} shape {shape} (expected {expected})")
    return name, np.frombuffer(buf, dtype=dtype).reshape(shape)


def error_reply(of_seq: int, problem: str, session: str = "", seq: int = 0) -> Message:
    """The reply to a message that cannot be executed: says which seq and why."""
    return Message("error", seq=seq, session=session, body={"of": of_seq, "ok": False, "error": problem})


def set_digest(sha1s: list[str]) -> str:
    """One sha1 naming a whole ordered stimulus set (from its per-image sha1s)."""
    import hashlib

    return hashlib.sha1("\n".join(sha1s).encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- endpoints
_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+|\*)", endpoint)
    if not m:
        raise ValueError(f"endpoint {endpoint!r} is not tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    host = m.group(1)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or interface name: treat as network-facing


@dataclass(frozen=True)
class CurveKeys:
    """Z85 CURVE keys for one side: its own pair and (presenter only) the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes = b""


def _key_text(value: str, what: str, secret: bool) -> bytes:
    """A Z85 key given inline (40 characters) or as a path to a zmq certificate file."""
    value = value.strip()
    if len(value) == 40 and not Path(value).exists():
        return value.encode("ascii")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what} = {value!r} is neither a 40-character Z85 key nor an existing key file; "
                         "run `itloop keys` and point the config at the files it writes")
    import zmq.auth

    public, secret_key = zmq.auth.load_certificate(str(path))
    key = secret_key if secret else public
    if key is None:
        raise ValueError(f"{what}: {path} holds no {'secret' if secret else 'public'} key; use the "
                         f"{'.key_secret' if secret else '.key'} file written by `itloop keys`")
    return key


def curve_keys(public: str, secret: str, server_public: str = "") -> CurveKeys | None:
    """CurveKeys from config strings (inline Z85 or key-file paths); None if none are set."""
    if not (public or secret or server_public):
        return None
    if not (public and secret):
        raise ValueError("presenter.curve_public_key and presenter.curve_secret_key must both be set "
                         "(run `itloop keys` to make a pair)")
    return CurveKeys(_key_text(public, "presenter.curve_public_key", False),
                     _key_text(secret, "presenter.curve_secret_key", True),
                     _key_text(server_public, "presenter.curve_server_key", False) if server_public else b"")


def require_security(endpoint: str, keys: CurveKeys | None, role: str) -> None:
    """Refuse a non-loopback endpoint without CURVE keys (``role``: 'controller'/'presenter')."""
    if is_loopback(endpoint):
        return
    if keys is None:
        raise ValueError(f"endpoint {endpoint} is not loopback, so the {role} needs CURVE keys: run "
                         "`itloop keys --out DIR` on each computer and set presenter.curve_public_key, "
                         "presenter.curve_secret_key (and, on the presenter, presenter.curve_server_key)")
    if role == "presenter" and not keys.server_public:
        raise ValueError(f"endpoint {endpoint} is not loopback: set presenter.curve_server_key to the "
                         "controller's public key so the presenter can authenticate it")
