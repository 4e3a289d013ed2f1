"""Benchmark of the simulated monkey: ``python benchmarks/sim_bench.py [--backbone tiny] [--size 64 224]``.

Prints one table row per image size: calibration time (s, once per size), true-rate
throughput (images/s) and in-process backend throughput (trials/s and simulated seconds
per wall second, 5 presentations per trial).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from rig.backend import SessionInfo, Trial
from sim.backend import SimBackend
from sim.monkey import SimParams, SimulatedMonkey
from sim.refimages import reference_images


def bench(size_px: int, backbone: str, n_images: int, n_trials: int, n_channels: int) -> dict:
    from modelfit.backbone import build_backbone

    monkey = SimulatedMonkey(SimParams(n_channels=n_channels), model_features=build_backbone(backbone, "layer4"))
    pixels = reference_images(n_images, size_px, seed=123)
    t = time.perf_counter()
    monkey.true_rate_module().calibrate((size_px, size_px))
    calib_s = time.perf_counter() - t
    t = time.perf_counter()
    monkey.true_rates(pixels)
    rate_ips = n_images / (time.perf_counter() - t)
    backend = SimBackend(monkey)
    backend.open(SessionInfo("bench", 0), pixels)
    trials = [Trial(i, tuple((np.arange(5) + 5 * i) % n_images), tuple(range(5))) for i in range(n_trials)]
    t = time.perf_counter()
    recs = [backend.run_trial(tr) for tr in trials]
    wall = time.perf_counter() - t
    simulated = recs[-1].end_acq_s - recs[0].start_acq_s
    return {"size": size_px, "calib_s": calib_s, "rates_ips": rate_ips, "trials_ps": n_trials / wall,
            "sim_x_realtime": simulated / wall,
            "spikes_per_trial": np.mean([len(r.spike_times_s) for r in recs])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny", help="modelfit registry name (default: tiny)")
    ap.add_argument("--size", type=int, nargs="+", default=[64, 224], help="image sizes, pixels")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--channels", type=int, default=32)
    a = ap.parse_args(argv)
    print(f"backbone={a.backbone} channels={a.channels} images={a.images} trials={a.trials}")
    print(f"{'size px':>8} {'calib s':>8} {'rates img/s':>12} {'trials/s':>9} {'x realtime':>11} {'spikes/trial':>13}")
    for s in a.size:
        r = bench(s, a.backbone, a.images, a.trials, a.channels)
        print(f"{r['size']:>8} {r['calib_s']:>8.2f} {r['rates_ips']:>12.1f} {r['trials_ps']:>9.0f} "
              f"{r['sim_x_realtime']:>11.0f} {r['spikes_per_trial']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
