"""The simulated monkey's eye: gaze samples published over Lab Streaming Layer.

The eye rests on a look point (the fixation point at the screen centre unless told
otherwise) with fixational jitter (Gaussian, ``jitter_deg`` per sample), a slow drift (an
Ornstein-Uhlenbeck walk, ``drift_deg`` stationary SD, ``drift_tau_s``), and saccades away
(Poisson, ``saccade_rate_hz``) to a point ``away_deg`` off for ``away_ms`` before coming
back. Breaks can also be injected at known times (``break_at_s``, LSL clock). Published
values are degrees, or raw tracker units ``raw = M @ deg + c`` (``raw_affine``), so the
calibration can be tested against a known map.

As a separate process (``itloop sim-gaze --name itloop-sim-gaze --seconds 60``) it
publishes an LSL stream (type "Gaze", channels x, y, pupil; float32) with per-sample
timestamps on the LSL clock; ``look X Y`` lines on stdin move the look point (degrees),
``break_at T`` lines inject a break at LSL time T.
It stops by itself after ``--seconds``. Imports only numpy and pylsl (DESIGN section 3).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GazeParams:
    rate_hz: float = 500.0             # samples per second
    jitter_deg: float = 0.05           # fixational jitter SD per sample, deg
    drift_deg: float = 0.1             # stationary SD of the slow drift, deg
    drift_tau_s: float = 2.0           # drift time constant, s
    saccade_rate_hz: float = 0.0       # spontaneous saccades away per second
    away_deg: float = 8.0              # how far a saccade away goes, deg
    away_ms: float = 300.0             # how long the eye stays away, ms
    pupil: float = 1000.0              # pupil area, tracker units
    break_at_s: list[float] = field(default_factory=list)   # injected breaks, sample clock (LSL), s
    raw_affine: list[float] = field(default_factory=list)   # [m00, m01, m10, m11, c0, c1]: raw = M @ deg + c
    seed: int = 0


class GazeModel:
    """Gaze samples at times given by the caller (the sample clock, s)."""

    def __init__(self, params: GazeParams):
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self.look = np.zeros(2)
        self.drift = np.zeros(2)
        self.away_until = -np.inf
        self.away_to = np.zeros(2)
        self.breaks = sorted(float(b) for b in params.break_at_s)
        self.t_last: float | None = None
        if params.raw_affine:
            a = np.asarray(params.raw_affine, float)
            if a.shape != (6,):
                raise ValueError(f"raw_affine needs 6 numbers (m00 m01 m10 m11 c0 c1); got {len(a)}")
            self.M, self.c = a[:4].reshape(2, 2), a[4:]
        else:
            self.M, self.c = np.eye(2), np.zeros(2)

    def add_break(self, t_s: float) -> None:
        """Saccade away at sample time ``t_s`` (an injected fixation break)."""
        self.breaks = sorted(self.breaks + [float(t_s)])

    def look_at(self, x_deg: float, y_deg: float) -> None:
        self.look = np.array([x_deg, y_deg], float)

    def _start_away(self, t: float) -> None:
        ang = self.rng.uniform(0, 2 * np.pi)
        self.away_to = self.p.away_deg * np.array([np.cos(ang), np.sin(ang)])
        self.away_until = t + self.p.away_ms / 1000.0

    def sample(self, times_s: np.ndarray) -> np.ndarray:
        """(n, 3) columns x, y (degrees or raw units), pupil, for increasing ``times_s``."""
        p = self.p
        out = np.empty((len(times_s), 3))
        for i, t in enumerate(times_s):
            dt = 0.0 if self.t_last is None else max(0.0, t - self.t_last)
            self.t_last = t
            a = np.exp(-dt / p.drift_tau_s) if p.drift_tau_s > 0 else 0.0
            self.drift = a * self.drift + np.sqrt(max(0.0, 1 - a * a)) * p.drift_deg * self.rng.standard_normal(2)
            while self.breaks and self.breaks[0] <= t:
                self.breaks.pop(0)
                self._start_away(t)
            if p.saccade_rate_hz > 0 and t >= self.away_until and self.rng.random() < p.saccade_rate_hz * dt:
                self._start_away(t)
            pos = self.look + self.drift + p.jitter_deg * self.rng.standard_normal(2)
            if t < self.away_until:
                pos = self.look + self.away_to + p.jitter_deg * self.rng.standard_normal(2)
            out[i, :2] = self.M @ pos + self.c
            out[i, 2] = p.pupil * (1 + 0.01 * self.rng.standard_normal())
        return out


def _follow_targets(stream: str, model: GazeModel, lock, seconds: float, latency_s: float = 0.2) -> None:
    """Look at each target announced on the LSL marker stream ``stream`` ("x y" degrees), after a
    saccade latency: the simulated monkey watching the calibration targets."""
    import pylsl

    found = pylsl.resolve_byprop("name", stream, 1, seconds)
    if not found:
        return
    inlet = pylsl.StreamInlet(found[0])
    while True:
        sample, _ = inlet.pull_sample(timeout=1.0)
        if sample:
            x, y = (float(v) for v in sample[0].split())
            time.sleep(latency_s)
            with lock:
                model.look_at(x, y)


def publish(params: GazeParams, name: str, seconds: float, stdin=None, follow: str = "") -> int:
    """Publish gaze over LSL for ``seconds``; ``look X Y`` lines on ``stdin`` move the look point;
    ``follow``: an LSL marker stream of calibration targets to look at."""
    import pylsl

    model = GazeModel(params)
    info = pylsl.StreamInfo(name, "Gaze", 3, params.rate_hz, pylsl.cf_float32, f"{name}-sim")
    ch = info.desc().append_child("channels")
    for label, unit in (("x", "deg" if not params.raw_affine else "raw"), ("y", "deg" if not params.raw_affine else "raw"),
                        ("pupil", "area")):
        c = ch.append_child("channel")
        c.append_child_value("label", label)
        c.append_child_value("unit", unit)
    outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=60)
    lock = threading.Lock()

    def read_commands():
        for line in stdin:
            bits = line.split()
            try:
                if len(bits) == 3 and bits[0] == "look":
                    with lock:
                        model.look_at(float(bits[1]), float(bits[2]))
                elif len(bits) == 2 and bits[0] == "break_at":
                    with lock:
                        model.add_break(float(bits[1]))
            except ValueError:
                print(f"sim.gaze: ignored {line.strip()!r}", file=sys.stderr, flush=True)

    if stdin is not None:
        threading.Thread(target=read_commands, daemon=True).start()
    if follow:
        threading.Thread(target=_follow_targets, args=(follow, model, lock, seconds), daemon=True).start()
    period = 1.0 / params.rate_hz
    t0 = pylsl.local_clock()
    next_t = t0
    print(f"sim.gaze: publishing LSL stream {name!r} at {params.rate_hz:g} Hz for {seconds:g} s", file=sys.stderr,
          flush=True)
    while True:
        now = pylsl.local_clock()
        if now - t0 > seconds:
            break
        n = int((now - next_t) / period) + 1 if now >= next_t else 0
        if n:
            times = next_t + period * np.arange(n)
            with lock:
                data = model.sample(times)
            for row, ts in zip(data, times):
                outlet.push_sample(row.astype(np.float32).tolist(), float(ts))
            next_t = times[-1] + period
        time.sleep(min(0.002, max(0.0, next_t - pylsl.local_clock())))
    return 0
