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
import math
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
_MAX_NESTING = 64               # JSON nesting levels in a header (deeper: a RecursionError waiting to happen)
_MAX_DIMS = 8                   # dimensions of one array (images are 4)
_MAX_ARRAYS = 64                # binary frames per message
_MAX_ARRAY_BYTES = 1 << 34      # one array's byte size (16 GiB): a shape beyond it is refused before any product
_MAX_SEQ = (1 << 63) - 1
_MAX_TIME_S = 1e11              # |sent_at| in seconds since the epoch (year ~5000)


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
        buffers.append(a.data.cast("B") if a.size else b"")
    header = {"type": msg.type, "seq": int(msg.seq), "session": msg.session,
              "sent_at": msg.sent_at or time.time(), "version": msg.version,
              "body": msg.body, "arrays": descs}
    return [json.dumps(header, allow_nan=True).encode("utf-8"), *buffers]


def decode(frames: list[bytes]) -> Message:
    """ZeroMQ frames -> Message; raises ProtocolError naming what is wrong.

    No input can raise anything else: deep nesting (RecursionError), integers of
    thousands of digits, numbers that overflow a float, shapes whose element count
    overflows int64, too many dimensions, bad dtypes all become a ProtocolError.
    """
    try:
        return _decode(frames)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("header is nested too deeply") from None
    except MemoryError:
        raise ProtocolError("message too large to decode") from None
    except Exception as exc:  # every other failure is a malformed message too
        raise ProtocolError(f"malformed message ({type(exc).__name__}: {str(exc)[:200]})") from None


def _decode(frames: list[bytes]) -> Message:
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("empty message: expected a JSON header frame")
    if len(frames) - 1 > _MAX_ARRAYS:
        raise ProtocolError(f"{len(frames) - 1} binary frames; at most {_MAX_ARRAYS} arrays per message")
    raw = bytes(frames[0])
    if len(raw) > _MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(raw)} bytes; the limit is {_MAX_HEADER_BYTES}")
    depth = _nesting_depth(raw) if raw.count(b"[") + raw.count(b"{") > _MAX_NESTING else 0
    if depth > _MAX_NESTING:
        raise ProtocolError(f"header nests {depth} levels deep; at most {_MAX_NESTING}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON ({exc})") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise ProtocolError(f"header holds an unreadable number ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    missing = [k for k in ("type", "seq", "session", "sent_at", "version") if k not in header]
    if missing:
        raise ProtocolError(f"header lacks {', '.join(missing)}")
    if isinstance(header["version"], bool) or header["version"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {_short(header['version'])} is not supported; this side speaks "
                            f"version {PROTOCOL_VERSION}: run the same itloop version on both computers")
    mtype, seq = header["type"], header["seq"]
    if not isinstance(mtype, str) or mtype not in ALL_TYPES:
        raise ProtocolError(f"unknown message type {_short(mtype)}; known types: {', '.join(ALL_TYPES)}")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _MAX_SEQ:
        raise ProtocolError(f"seq {_short(seq)} must be an integer in [0, 2**63)")
    sent_at = header["sent_at"]
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not abs(sent_at) <= _MAX_TIME_S:
        raise ProtocolError(f"sent_at {_short(sent_at)} must be a number (finite seconds since the epoch)")
    session = header["session"]
    if not isinstance(session, str) or len(session) > 1000:
        raise ProtocolError(f"session {_short(session)} must be a string of at most 1000 characters")
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
        if arrays_name in arrays:
            raise ProtocolError(f"array name {arrays_name!r} appears twice")
        arrays[arrays_name] = arr
    return Message(type=mtype, seq=seq, session=session, body=body, arrays=arrays,
                   sent_at=float(sent_at), version=PROTOCOL_VERSION)


def _nesting_depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counting outside strings (no recursion)."""
    depth = deepest = 0
    in_str = esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:       # backslash
                esc = True
            elif b == 0x22:       # closing quote
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):   # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > _MAX_NESTING:
                    return deepest
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _short(value: Any, limit: int = 60) -> str:
    """repr of a header value, cut to ``limit`` characters (a 5000-digit seq is not echoed back)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_array(k: int, desc: Any, buf: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(desc, dict) or not {"name", "dtype", "shape"} <= desc.keys():
        raise ProtocolError(f"array {k}: descriptor {_short(desc)} is not {{name, dtype, shape}}")
    name, dtype_text, shape = desc["name"], desc["dtype"], desc["shape"]
    if not isinstance(name, str) or len(name) > 200:
        raise ProtocolError(f"array {k}: name {_short(name)} must be a string of at most 200 characters")
    if not isinstance(dtype_text, str) or len(dtype_text) > 8:
        raise ProtocolError(f"array {name!r}: dtype {_short(dtype_text)} must be a numpy type string like '<f8'")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ProtocolError(f"array {name!r}: shape must be a list of at most {_MAX_DIMS} dimensions")
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= _MAX_ARRAY_BYTES for s in shape):
        raise ProtocolError(f"array {name!r}: shape {_short(shape)} must hold integers in [0, {_MAX_ARRAY_BYTES}]")
    try:
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"array {name!r}: dtype {dtype_text!r} is not a numpy dtype ({exc})") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array {name!r}: dtype {dtype} is not allowed (bool/int/uint/float only)")
    expected = math.prod(shape) * dtype.itemsize           # Python ints: no int64 wrap-around
    if expected > _MAX_ARRAY_BYTES or len(buf) != expected:
        raise ProtocolError(f"array {name!r}: {len(buf)} bytes for dtype {dtype} shape {tuple(shape)} (expected {expected})")
    return name, np.frombuffer(buf, dtype=dtype).reshape(tuple(shape))


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
