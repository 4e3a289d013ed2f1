"""Benchmark of the white-box ground truth's workhorse: ``python benchmarks/truth_bench.py
[--batch 128 256] [--size 64] [--threads 1] [--seconds 6]``.

One forward + input-gradient pass of the simulated sites' drive (what the truth's attack
runs ~35,000 times a demo experiment), per row of a batch, with the fast hidden network
(BatchNorm folded into the convolutions, channels-last, padding inside the convolution,
resampling as two matrix products) against the package's unfolded network with
``F.interpolate`` resampling (the same function: the values agree to ~1e-6). Prints
passes/s of each and their ratio; CPU time per pass is printed too, since on a shared
machine wall time depends on the other processes.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F


def _interpolate(x: torch.Tensor, side_px: int) -> torch.Tensor:
    """The reference resampling: F.interpolate (antialiased bilinear), as sim.hidden.resample defines it."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if side_px <= 0 or max(h, w) == side_px:
        return x
    scale = side_px / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


def passes_per_s(drive, x: torch.Tensor, n_channels: int, seconds: float) -> tuple[float, float]:
    site = torch.arange(len(x)) % n_channels

    def one() -> None:
        xi = x.detach().requires_grad_(True)
        out = drive(xi).gather(1, site[:, None]).squeeze(1)
        torch.autograd.grad(out, xi, grad_outputs=torch.ones_like(out))

    one()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        one()
        n += len(x)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--size", type=int, default=64, help="stimulus size, pixels (the demo's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import sim.monkey as sm
    from sim.monkey import SimParams, SimulatedMonkey

    monkey = SimulatedMonkey(SimParams(n_channels=12), n_reference_images=64)   # config.toml's sim defaults
    mod = monkey.true_rate_module().eval()
    net = mod.hidden_net
    x = torch.rand(max(a.batch), 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mod.drive(x[:2])   # normalisation statistics for this size
    fast_forward, fast_resample = net.forward, sm.resample
    print(f"threads {a.threads}, {a.size} px stimuli, hidden {net.name} at {mod.input_px} px")
    print(f"{'batch':>6} {'fast passes/s':>14} {'reference passes/s':>19} {'ratio':>6}   (per CPU second: fast / reference)")
    for b in a.batch:
        xb = x[:b]
        fast = passes_per_s(mod.drive, xb, mod.n_channels, a.seconds)
        net.forward, sm.resample = net.reference_forward, _interpolate
        try:
            ref = passes_per_s(mod.drive, xb, mod.n_channels, a.seconds)
        finally:
            net.forward, sm.resample = fast_forward, fast_resample
        print(f"{b:>6} {fast[0]:>14.0f} {ref[0]:>19.0f} {fast[0] / ref[0]:>6.2f}   ({fast[1]:.0f} / {ref[1]:.0f} = "
              f"{fast[1] / ref[1]:.2f})")


if __name__ == "__main__":
    main()
