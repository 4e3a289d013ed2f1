"""Saved outputs of the perturbation engine, to prove a refactor changes no bit.

    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/perturb_golden.py      # rewrite tests/data/perturb_golden.npz

Runs the engine on fixed configurations (the "tiny" modelfit backbone with a z-scored
readout = the split fast path; a small conv net and a linear map through the generic
path; epsilons where the pixel box binds; prune_rounds 0 (no pruning), 1 and 3; both
directions; several restart counts and batch sizes; early stopping on and off; random
controls) with fixed seeds and ``torch.set_num_threads(1)``, and records every output:
``solve``'s float deltas, objectives and passes, and ``generate_perturbations``'
StimulusSet (uint8 pixels, predictions, epsilon shown, budget, bookkeeping).

Float results are only reproducible bit for bit with the same torch build, the same CPU
kernels (ISA) and the same thread count, so the file also stores :func:`machine_key`;
``tests/test_perturb_engine.py::test_engine_reproduces_the_saved_outputs`` compares bit
for bit where the key matches and within a tolerance elsewhere.
"""
from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __name__ == "__main__":  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stimuli.objective import SiteObjective
from stimuli.perturb import PerturbParams, generate_perturbations, solve

GOLDEN = Path(__file__).resolve().parent / "data" / "perturb_golden.npz"
STIM_COLUMNS = ("kind", "parent", "site", "epsilon_requested", "epsilon_shown", "direction", "predicted_change",
                "budget_passes")


# ----------------------------------------------------------------------------- machine
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_key() -> str:
    """What exact float reproduction depends on: torch build, its CPU kernel level, the
    CPU model and flags, and the intra-op thread count (pinned to 1 here)."""
    cap = torch.backends.cpu.get_cpu_capability()
    flags = hashlib.sha256(_cpu_flags().encode()).hexdigest()[:16]
    return (f"torch={torch.__version__} numpy={np.__version__} capability={cap} cpu={_cpu_model()} "
            f"flags={flags} threads={torch.get_num_threads()} machine={platform.machine()}")


# ----------------------------------------------------------------------------- models
class SmallConv(nn.Module):
    """A random conv net (generic gather path); BatchNorm in eval mode."""

    def __init__(self, n_sites: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(),
                                 nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Softplus(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_sites))

    def forward(self, x):
        return 20 * self.net(x)


class Linear(nn.Module):
    """``f(x) = W flatten(x) + b`` through the generic path (a concave objective)."""

    def __init__(self, n_sites: int, n_pixels: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n_sites, n_pixels, generator=g)
        self.b = torch.randn(n_sites, generator=g)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def tiny_site_model(n_sites: int = 4, size: int = 16, seed: int = 0) -> nn.Module:
    """modelfit's "tiny" backbone (random init) with a random readout on z-scored features
    (the split fast path of :mod:`stimuli.objective`)."""
    from modelfit.backbone import build_backbone
    from modelfit.readout import SiteModel

    bb = build_backbone("tiny", "layer4", None)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(0, 1, (8, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        f = bb(x).numpy()
    d = f.shape[1]
    return SiteModel(bb, f.mean(0), f.std(0) + 1e-6, rng.normal(0, 3 / np.sqrt(d), (n_sites, d)), np.zeros(n_sites))


def clean_images(n: int, size: int, seed: int) -> np.ndarray:
    """Random uint8 images; the last one pushed to the box edges (the box binds early)."""
    c = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    c[-1] = np.where(c[-1] > 128, 252, 3).astype(np.uint8)
    return c


def model_for(name: str):
    if name == "tiny":
        return tiny_site_model(4, 16), 16
    if name == "conv":
        return SmallConv(3), 8
    if name == "linear":
        return Linear(3, 3 * 6 * 6, seed=2), 6
    raise KeyError(name)


# ----------------------------------------------------------------------------- cases
# (name, model, problems, epsilons, params, seed); prune_rounds 0 = prune=False
CASES = [
    ("tiny_r1_es", "tiny", [(0, 0), (1, 3), (2, 1)], [0.0, 0.3, 2.5],
     dict(restarts=4, steps=8, prune=True, prune_rounds=1, prune_keep_fraction=0.5, prune_after_fraction=0.25,
          early_stop=True, early_stop_patience=2, early_stop_tolerance=2e-2, max_batch_rows=5,
          random_controls_per_image=1), 3),
    ("tiny_r3_b3", "tiny", [(1, 2), (2, 0)], [0.5, 4.0],
     dict(restarts=6, steps=10, prune=True, prune_rounds=3, prune_keep_fraction=0.5, prune_after_fraction=0.1,
          early_stop=False, max_batch_rows=3, random_controls_per_image=0, step_growth=1.25), 4),
    ("conv_r0_growth", "conv", [(0, 0), (1, 2), (2, 1)], [0.2, 1.0, 4.0],
     dict(restarts=3, steps=10, prune=False, early_stop=False, max_batch_rows=64, step_growth=1.25,
          random_controls_per_image=2), 5),
    ("conv_r3_es_onephase", "conv", [(0, 1), (2, 2)], [0.7, 3.0],
     dict(restarts=8, steps=12, prune=True, prune_rounds=3, prune_keep_fraction=0.5, prune_after_fraction=0.1,
          early_stop=True, early_stop_patience=2, early_stop_tolerance=1e-3, first_phase_radius_factor=1.0,
          max_batch_rows=7, random_controls_per_image=1), 6),
    ("conv_r1_es_b2", "conv", [(1, 0), (2, 2)], [0.05, 1.5],
     dict(restarts=5, steps=9, prune=True, prune_rounds=1, prune_keep_fraction=0.25, prune_after_fraction=0.3,
          early_stop=True, early_stop_patience=2, early_stop_tolerance=2e-2, max_batch_rows=2,
          random_controls_per_image=1), 7),
    ("linear_r1_box", "linear", [(0, 0), (2, 1), (2, 2)], [0.3, 2.0, 6.0],
     dict(restarts=3, steps=20, prune=True, prune_rounds=1, prune_keep_fraction=0.5, prune_after_fraction=0.25,
          early_stop=False, max_batch_rows=16, random_controls_per_image=1), 8),
]


def _as_float(clean: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clean).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def run_case(case) -> dict[str, np.ndarray]:
    """Every output array of one case, keyed ``<case>/<field>``."""
    name, kind, problems, eps, pdict, seed = case
    model, size = model_for(kind)
    clean = clean_images(3, size, seed=seed + 100)
    params = PerturbParams(**pdict)
    out: dict[str, np.ndarray] = {}
    # solve: all problems x epsilons x directions, the float answer before quantisation
    img, site, e, s = [], [], [], []
    for i, j in problems:
        for ee in eps:
            for sg in (1, -1):
                img.append(i); site.append(j); e.append(ee); s.append(sg)
    obj = SiteObjective(model)
    with obj.session():
        sols = solve(obj, _as_float(clean), img, site, e, s, params, seed=seed)
    out["delta"] = np.stack([so.delta.numpy() for so in sols]).astype(np.float32)
    out["objective"] = np.array([so.objective for so in sols], dtype=np.float64)
    out["passes"] = np.array([so.passes for so in sols], dtype=np.int64)
    # generate_perturbations: the shown stimuli and their bookkeeping
    ss = generate_perturbations(model, clean, problems, eps, params, seed=seed)
    out["pixels"] = ss.pixels
    for c in STIM_COLUMNS:
        v = getattr(ss, c)
        out[c] = np.asarray(v, dtype=str) if c == "kind" else np.asarray(v)
    return {f"{name}/{k}": v for k, v in out.items()}


def run_all() -> dict[str, np.ndarray]:
    """All cases with one intra-op thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        arrays: dict[str, np.ndarray] = {}
        for case in CASES:
            arrays.update(run_case(case))
        arrays["machine_key"] = np.array(machine_key())
        return arrays
    finally:
        torch.set_num_threads(before)


def main() -> None:
    arrays = run_all()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KB, {len(arrays)} arrays) on {arrays['machine_key']}")


if __name__ == "__main__":
    main()
