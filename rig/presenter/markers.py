"""Marker outputs fired on the flip that changes the screen (parallel port, serial, none).

Every output has ``fire(code)`` (called from ``win.callOnFlip``, so it runs right after the
buffer swap) and ``clear()`` (called on the next flip, so a parallel-port pulse lasts one
frame). Codes: see ``CODES``.
"""
from __future__ import annotations

from typing import Protocol

CODES = {"fix_on": 8, "stim_on": 1, "mask_on": 2, "blank": 4, "abort_blank": 16}


class MarkerOutput(Protocol):
    def fire(self, code: int) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


class NoMarker:
    """No hardware: markers are only the flip-stamped events."""

    def fire(self, code: int) -> None:
        pass

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


class ParallelMarker:
    """Sets the parallel port data pins to ``code`` for one frame (``address``: e.g. 0x0378)."""

    def __init__(self, address: str):
        from psychopy import parallel

        try:
            addr = int(address, 0) if address else 0x0378
        except ValueError:
            raise ValueError(f"presenter.marker_address = {address!r}: expected a port address such as 0x0378") from None
        self._port = parallel.ParallelPort(address=addr)
        self._port.setData(0)

    def fire(self, code: int) -> None:
        self._port.setData(code)

    def clear(self) -> None:
        self._port.setData(0)

    def close(self) -> None:
        self._port.setData(0)


class SerialMarker:
    """Writes one byte ``code`` per event to a serial port (``address``: '/dev/ttyUSB0' or 'COM3@115200')."""

    def __init__(self, address: str):
        try:
            import serial  # pyserial
        except ImportError:
            raise ValueError("presenter.marker = 'serial' needs pyserial: pip install pyserial") from None
        if not address:
            raise ValueError("presenter.marker = 'serial' needs presenter.marker_address, e.g. '/dev/ttyUSB0@115200'")
        port, _, baud = address.partition("@")
        self._port = serial.Serial(port, int(baud or 115200), timeout=0)

    def fire(self, code: int) -> None:
        self._port.write(bytes([code & 0xFF]))

    def clear(self) -> None:
        pass

    def close(self) -> None:
        self._port.close()


class ZmqMarker:
    """Publishes one JSON message per screen change on a loopback ZeroMQ PUB socket.

    For the simulated acquisition system (``itloop sim-rig``), which plays the part of a
    photodiode and the animal: each message carries the flip time (presenter clock, s),
    what was shown and the presenter's id (a restarted presenter is a new clock). Fields:
    ``presenter, kind, code, t, pres, image``. ``address``: e.g. ``tcp://127.0.0.1:5558``.
    """

    def __init__(self, address: str):
        import zmq

        if not address:
            raise ValueError("presenter.marker = 'zmq' needs presenter.marker_address, e.g. 'tcp://127.0.0.1:5558'")
        host = address.split("://", 1)[-1].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise ValueError(f"presenter.marker_address = {address!r}: the zmq marker is for loopback only (tcp://127.0.0.1:PORT)")
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise ValueError(f"presenter.marker_address = {address!r}: cannot bind ({exc})") from None
        self.presenter_id = ""

    def bind_presenter(self, presenter_id: str) -> None:
        self.presenter_id = presenter_id

    def fire(self, code: int) -> None:
        pass                                            # published with the flip time by publish()

    def publish(self, event: dict, image: int) -> None:
        """Called on the flip after ``win.timeOnFlip`` stamped ``event['t']``."""
        import json

        msg = {"presenter": self.presenter_id, "kind": event["kind"], "code": CODES[event["kind"]],
               "t": float(event["t"]), "pres": int(event["pres"]), "image": int(image)}
        self._sock.send(json.dumps(msg).encode())

    def clear(self) -> None:
        pass

    def close(self) -> None:
        self._sock.close()


def make_marker(kind: str, address: str = "") -> MarkerOutput:
    """The marker output named by ``presenter.marker``."""
    if kind == "none":
        return NoMarker()
    if kind == "parallel":
        return ParallelMarker(address)
    if kind == "serial":
        return SerialMarker(address)
    if kind == "zmq":
        return ZmqMarker(address)
    raise ValueError(f"presenter.marker = {kind!r}: expected 'none', 'parallel', 'serial' or 'zmq'")
