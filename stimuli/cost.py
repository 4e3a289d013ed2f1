"""What a perturbation run will cost, known before it starts.

- :func:`passes_per_problem`: forward+backward passes of one (image, site, epsilon,
  direction) problem under a schedule (restarts x steps, minus what restart pruning
  removes). Early stopping can only lower it, so it is an upper bound.
- :func:`run_passes`: the whole run's passes and forward-only rows (clean predictions and
  the recomputed predictions of the shown stimuli).
- :func:`measure_pass_rate`: passes per second of this model on this device, from a few
  timed forward+input-backward batches of ``max_batch_rows`` rows (the engine's batch),
  with the peak memory of a batch (bytes).
"""
from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stimuli.perturb import PerturbParams, prepare_engine
from stimuli.transfer import wrap_objective

# forward-only rows cost about half a forward+input-backward pass (DESIGN section 7: fwd+bwd ~ 2x fwd)
FORWARD_PASS_FRACTION = 0.5


def passes_per_problem(params: PerturbParams) -> int:
    """Passes of one problem with epsilon > 0 when no row stops early (an upper bound)."""
    params.validated()
    live, done, total = params.restarts, 0, 0
    for c in params.prune_checkpoints:
        total += live * (c - done)
        live, done = params.kept_of(live), c
    return total + live * (params.steps - done)


@dataclass
class RunSize:
    """Counts of a run: problems (one per image, site, epsilon, direction), passes (upper
    bound), forward-only rows and the number of stimuli it will write."""

    problems: int
    passes: int
    forward_rows: int
    stimuli: int

    @property
    def pass_equivalents(self) -> float:
        return self.passes + FORWARD_PASS_FRACTION * self.forward_rows


def run_passes(n_pairs: int, n_clean: int, epsilons: Sequence[float], params: PerturbParams,
               n_shards: int = 1) -> RunSize:
    """Size of a run over ``n_pairs`` (image, site) pairs, ``n_clean`` clean images, ``epsilons``.

    ``n_shards``: how many times the full clean set is predicted (1 in-process; on Dask once per
    worker that runs a shard, which caches it for its other shards).
    """
    eps = [float(e) for e in epsilons]
    live = sum(1 for e in eps if e > 0)
    problems = n_pairs * len(eps) * 2
    passes = n_pairs * live * 2 * passes_per_problem(params)
    controls = n_pairs * len(eps) * params.random_controls_per_image
    forward = max(n_shards, 1) * n_clean + problems + controls
    return RunSize(problems, passes, forward, n_clean + problems + controls)


@dataclass
class PassRate:
    """Measured speed of forward+input-backward passes (rows/s) and memory (bytes)."""

    device: str
    batch_rows: int
    passes_per_s: float
    peak_bytes: int          # CUDA: peak allocated during the probe; CPU: peak resident set of the process
    seconds: float           # time the timed batches took
    params: PerturbParams | None = None   # the settings measured, resolved for the device (modes, batch)

    def describe(self) -> str:
        """The measured engine mode and batch, for the cost line."""
        p = self.params
        if p is None:
            return f"batch {self.batch_rows}"
        return f"batch {self.batch_rows} rows, {p.precision}, {p.memory_format}, compile {p.compile}"


def _peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def measure_pass_rate(model, clean: np.ndarray, sites: Sequence[int] | np.ndarray, params: PerturbParams, device: str = "cpu",
                      batches: int = 3) -> PassRate:
    """Time ``batches`` forward+input-backward batches of ``params.max_batch_rows`` rows (after one
    untimed warm-up batch, which also compiles where ``compile`` is on) on ``device``, in the
    engine's mode. ``auto`` settings and ``max_batch_rows = 0`` are resolved first
    (:func:`stimuli.perturb.prepare_engine`; compile ``auto`` counts as off here); the result
    carries the resolved params.

    ``clean``: uint8 (N, H, W, 3) images of the run (rows cycle through them);
    ``sites``: the model columns the run targets (rows cycle through them).
    """
    if batches < 1:
        raise ValueError(f"batches = {batches} is impossible; expected an integer >= 1")
    if params.compile == "auto":
        params = dataclasses.replace(params, compile="off")
    dev = torch.device(device)
    x_all = torch.from_numpy(np.ascontiguousarray(clean)).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
    obj, params = prepare_engine(model, x_all.contiguous(), params, device)
    b = params.max_batch_rows
    x = x_all[torch.as_tensor(np.arange(b) % len(clean), device=dev)].contiguous(memory_format=obj.mode.torch_format)
    obj = wrap_objective(obj, params)   # with transfer options a pass costs what the engine's cost (e.g. eot_samples gradients)
    site = torch.as_tensor(np.asarray(sites, dtype=np.int64)[np.arange(b) % len(sites)], device=dev)
    sign = torch.where(torch.arange(b, device=dev) % 2 == 0, 1.0, -1.0)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    with obj.session():
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        obj.value_and_grad(x, site, sign)
        sync()
        t = time.perf_counter()
        for _ in range(batches):
            obj.value_and_grad(x, site, sign)
        sync()
        el = time.perf_counter() - t
    peak = int(torch.cuda.max_memory_allocated(dev)) if cuda else _peak_rss_bytes()
    return PassRate(str(dev), b, b * batches / el if el > 0 else float("inf"), peak, el, params)


def engine_state_bytes(params: PerturbParams, image_shape: tuple[int, ...], n_clean: int, n_stimuli: int) -> int:
    """Memory the engine holds besides the network's activations (bytes): per-row state
    (delta, anchor, gradient, clean image, box bounds: 6 float32 images per row) for a full
    batch plus as many parked rows, the float clean set, and the uint8 output."""
    px = int(np.prod(image_shape))
    return 2 * params.max_batch_rows * 6 * 4 * px + n_clean * 4 * px + n_stimuli * px
