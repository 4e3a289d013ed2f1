"""The cost of a perturbation run, told before it starts, and refused if it cannot end in time.

:func:`estimate` combines the run's size (:func:`stimuli.cost.run_passes`: passes with no
early stopping, an upper bound) with a measured pass rate (:class:`stimuli.cost.PassRate`,
a few timed batches on the chosen device, in this process or on a Dask worker) and the
number of workers; :func:`check_deadline` raises :class:`rig.errors.UserError` naming the
numbers and the config keys to change when the expected end is past ``compute.max_hours``
or ``compute.deadline``.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from rig.config import ComputeConfig
from rig.errors import UserError
from stimuli.cost import PassRate, RunSize

GIB = 1024 ** 3


@dataclass
class Estimate:
    size: RunSize
    rate: PassRate
    workers: int
    peak_bytes: int          # per worker: probe peak + engine state

    @property
    def seconds(self) -> float:
        """Expected wall time, s (pass-equivalents / (passes/s per worker x workers))."""
        return self.size.pass_equivalents / (self.rate.passes_per_s * self.workers)

    def lines(self) -> list[str]:
        s = self.size
        return [f"cost: {s.problems} problems, {s.passes:,} forward+backward passes at most "
                f"(+{s.forward_rows:,} forward-only rows), {s.stimuli:,} stimuli",
                f"cost: measured {self.rate.passes_per_s:.1f} passes/s on {self.rate.device} "
                f"({self.rate.describe()}; {self.rate.seconds:.1f} s of timed batches) x {self.workers} worker(s)",
                f"cost: expected time {_hms(self.seconds)}, peak memory about {self.peak_bytes / GIB:.2f} GiB per worker"]


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seconds_left(cc: ComputeConfig, now: dt.datetime | None = None) -> tuple[float, str] | None:
    """Seconds available and the key that sets them (the tighter of max_hours and deadline); None = no limit."""
    now = now or dt.datetime.now()
    limits = []
    if cc.max_hours > 0:
        limits.append((cc.max_hours * 3600.0, f"compute.max_hours = {cc.max_hours:g}"))
    if cc.deadline:
        if re.fullmatch(r"\d{1,2}:\d{2}", cc.deadline):
            hh, mm = (int(v) for v in cc.deadline.split(":"))
            end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if end <= now:
                end += dt.timedelta(days=1)
        else:
            end = dt.datetime.fromisoformat(cc.deadline)
            if end.tzinfo is not None and now.tzinfo is None:
                now = now.astimezone()
        limits.append(((end - now).total_seconds(), f"compute.deadline = {cc.deadline!r} ({end:%Y-%m-%d %H:%M})"))
    return min(limits) if limits else None


def check_deadline(est: Estimate, cc: ComputeConfig, now: dt.datetime | None = None) -> None:
    """Raise UserError (one line: the numbers, the keys to change) if ``est`` cannot end in time."""
    left = seconds_left(cc, now)
    if left is None or est.seconds <= left[0]:
        return
    avail, key = left
    raise UserError(
        f"refusing to generate: {est.size.passes:,} passes at {est.rate.passes_per_s:.1f} passes/s on "
        f"{est.rate.device} x {est.workers} worker(s) need about {_hms(est.seconds)}, but {key} leaves "
        f"{_hms(max(avail, 0))}; lower perturb.restarts, perturb.steps, experiment.images_per_site, "
        f"experiment.sites_per_day or the number of experiment.epsilons, use a faster model.device or more workers "
        f"(compute.scheduler, compute.slurm_jobs), or move compute.deadline / compute.max_hours")
