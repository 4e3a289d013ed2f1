"""Client authentication for the controller's CURVE server: a ZAP handler with an allow-list.

CURVE alone proves the *controller's* identity to the presenter; without ZAP any client
key pair is accepted. :class:`KeyGate` runs pyzmq's ZAP authenticator
(``zmq.auth.thread.ThreadAuthenticator``, RFC 27) on the controller's own context and
accepts only the presenter public keys of the allow-list (``presenter.curve_authorized_keys``:
a folder of ``.key`` files written by ``itloop keys``, one such file, or Z85 keys separated
by commas). Each accepted message then carries the client's key as its ZMQ ``User-Id``.
"""
from __future__ import annotations

import threading
from pathlib import Path

import zmq


def load_allowed_keys(value: str) -> set[bytes]:
    """Z85 public keys from a folder of ``.key`` files, one key file, or comma-separated keys."""
    import zmq.auth

    value = value.strip()
    if not value:
        return set()
    path = Path(value)
    if path.is_dir():
        keys = set()
        for f in sorted(path.glob("*.key")):
            public, _ = zmq.auth.load_certificate(str(f))
            keys.add(public)
        if not keys:
            raise ValueError(f"presenter.curve_authorized_keys = {value!r}: the folder holds no .key files; copy each "
                             "presenter's public .key file there (`itloop keys --authorize DIR` does it)")
        return keys
    if path.is_file():
        public, _ = zmq.auth.load_certificate(str(path))
        return {public}
    keys = {k.strip().encode("ascii") for k in value.split(",") if k.strip()}
    bad = [k for k in keys if len(k) != 40]
    if bad:
        raise ValueError(f"presenter.curve_authorized_keys = {value!r} is neither a folder, a key file nor "
                         "40-character Z85 public keys separated by commas")
    return keys


class KeyGate:
    """ZAP handler on ``ctx``: CURVE clients must present a public key of ``allowed``.

    ``refused`` lists the Z85 keys turned away (each once), for the log.
    """

    def __init__(self, ctx: zmq.Context, allowed: set[bytes]):
        from zmq.auth.thread import ThreadAuthenticator

        self.allowed = {bytes(k) for k in allowed}
        self.refused: list[bytes] = []
        self._lock = threading.Lock()
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread for each CURVE handshake (``key``: Z85 bytes)."""
        ok = bytes(key) in self.allowed
        if not ok:
            with self._lock:
                if key not in self.refused:
                    self.refused.append(bytes(key))
        return ok

    def stop(self) -> None:
        if self.auth.is_alive():
            self.auth.stop()
