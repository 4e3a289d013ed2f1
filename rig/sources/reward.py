"""Reward drivers (``rig.backend.Reward``): a serial-port TTL / pump driver and "none".

``SerialReward`` (pyserial) has two modes:

- ``"command"``: writes one ASCII line ``R <ms>\\n`` per reward to a pump controller or a
  microcontroller that opens the solenoid for that many milliseconds (it keeps the time).
- ``"ttl"``: raises the port's DTR line for the duration (a USB-serial adapter's DTR pin
  driving the solenoid's TTL input); a timer thread lowers it, so ``give`` never blocks.

Every reward is logged by the caller (``RewardLog``) with its time on the caller's clock.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rig.errors import UserError

KINDS = ("trial", "manual", "calibration")


class NoReward:
    """No reward hardware: nothing is driven and (``give_and_log``) nothing is logged."""

    name = "none"

    def give(self, duration_ms: float) -> None:
        if not duration_ms >= 0:
            raise ValueError(f"reward duration {duration_ms} ms: expected >= 0")

    def close(self) -> None:
        pass


class SerialReward:
    """A reward on a serial port (``port`` e.g. /dev/ttyUSB0), mode ``"command"`` or ``"ttl"``."""

    def __init__(self, port: str, *, mode: str = "command", baud: int = 9600):
        if mode not in ("command", "ttl"):
            raise UserError(f"reward.mode = {mode!r}: expected 'command' or 'ttl'")
        if not port:
            raise UserError("reward.driver = 'serial' needs reward.port (e.g. /dev/ttyUSB0)")
        import serial

        self.name = f"serial:{port}:{mode}"
        self.mode = mode
        try:
            self._port = serial.Serial(port, baud, timeout=0, write_timeout=0.5)
        except (serial.SerialException, OSError) as exc:
            raise UserError(f"cannot open the reward port {port} ({exc}); check reward.port and its permissions") from None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if mode == "ttl":
            try:
                self._port.dtr = False
            except OSError as exc:
                self._port.close()
                raise UserError(f"reward port {port} has no DTR line ({exc}); use reward.mode = 'command' "
                                "for a pump controller, or a USB-serial adapter for TTL") from None

    def give(self, duration_ms: float) -> None:
        if not duration_ms >= 0:
            raise ValueError(f"reward duration {duration_ms} ms: expected >= 0")
        with self._lock:
            if self.mode == "command":
                self._port.write(f"R {int(round(duration_ms))}\n".encode("ascii"))
                self._port.flush()
                return
            if self._timer is not None:
                self._timer.cancel()
            self._port.dtr = True
            self._timer = threading.Timer(duration_ms / 1000.0, self._ttl_low)
            self._timer.daemon = True
            self._timer.start()

    def _ttl_low(self) -> None:
        with self._lock:
            if self._port.is_open:
                self._port.dtr = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._port.is_open:
            if self.mode == "ttl":
                self._ttl_low()
            self._port.close()


@dataclass
class RewardLog:
    """Every reward given: time (caller's clock, s), duration (ms), kind ("trial", "manual", "calibration")."""

    t_s: list[float] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)

    def add(self, t_s: float, duration_ms: float, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"reward kind {kind!r}: expected one of {KINDS}")
        self.t_s.append(float(t_s))
        self.duration_ms.append(float(duration_ms))
        self.kind.append(kind)

    def take(self) -> "RewardLog":
        """Everything logged so far; the log starts empty again."""
        out = RewardLog(self.t_s, self.duration_ms, self.kind)
        self.t_s, self.duration_ms, self.kind = [], [], []
        return out

    def __len__(self) -> int:
        return len(self.t_s)


def give_and_log(reward, log: RewardLog, duration_ms: float, kind: str, now=time.monotonic) -> None:
    """Give a reward and log it with the time ``now()`` just before the driver was told.
    Without a reward device (``NoReward``) nothing is given, so nothing is logged."""
    if getattr(reward, "name", "") == "none":
        return
    t = now()
    reward.give(duration_ms)
    log.add(t, duration_ms, kind)


def make_reward(driver: str, *, port: str = "", mode: str = "command", baud: int = 9600):
    """The configured driver: "none", "serial" or "sim" (the simulated monkey's juice line)."""
    if driver == "none":
        return NoReward()
    if driver == "serial":
        return SerialReward(port, mode=mode, baud=baud)
    if driver == "sim":
        from sim.reward import SimReward

        return SimReward()
    raise UserError(f"reward.driver = {driver!r}: expected 'none', 'serial' or 'sim'")
