"""Model-free controls: random perturbations on the epsilon-sphere, inside the pixel box.

A control has the same epsilon as the targeted stimuli it accompanies but a direction
that no model chose: a Gaussian direction (uniform on the sphere), exactly projected onto
ball ∩ box from far out along it, so its norm is ``e`` unless the box is too small, then
quantised to uint8 the same way as the targeted stimuli (``epsilon_shown <= e``).
"""
from __future__ import annotations

import numpy as np
import torch

from stimuli.projection import project_ball_box
from stimuli.quantize import quantize_perturbation
from stimuli.stimset import StimulusSet


def random_direction(clean: np.ndarray, epsilon: float, generator: np.random.Generator) -> np.ndarray:
    """A model-free perturbation on the ``epsilon``-sphere, box-respecting, pixels in [0,1] space.

    Gaussian direction; the exact projection of a far point along it onto ball ∩ box
    (the norm is ``epsilon`` unless the box is too small to allow it).
    """
    u = generator.standard_normal(clean.shape)
    x = torch.from_numpy(clean.astype(np.float64) / 255.0)[None]
    v = torch.from_numpy(u)[None]
    v = v * (1e3 * max(epsilon, 1e-12) / float(v.norm()))
    d = project_ball_box(v, -x, 1.0 - x, torch.tensor([float(epsilon)], dtype=torch.float64))
    return d[0].numpy()


def random_stimuli(clean: np.ndarray, parents: np.ndarray, sites: np.ndarray | None, epsilons: list[float],
                   n_per_image: int, seed: int) -> StimulusSet:
    """``n_per_image`` controls per (parent, site) and epsilon, kind "random", no prediction.

    Parents index ``clean`` (not the returned set: join it after the clean images); each draw has its own seed (seed, parent, site, epsilon, j).
    ``epsilon_index`` names each control's row of ``epsilons`` (the returned set's grid).
    """
    rows = []
    for k, p in enumerate(parents):
        s = -1 if sites is None else int(sites[k])
        for ie, e in enumerate(epsilons):
            for j in range(n_per_image):
                rows.append((int(p), s, float(e), j, ie))
    px = np.empty((len(rows),) + clean.shape[1:], dtype=np.uint8)
    shown = np.zeros(len(rows))
    for r, (p, s, e, j, _) in enumerate(rows):
        eps_key = int(np.float64(e).view(np.uint64) % np.uint64(2**62))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7, p, s + 1, eps_key, j]))
        d = random_direction(clean[p], e, rng) if e > 0 else np.zeros(clean.shape[1:])
        px[r], shown[r] = quantize_perturbation(clean[p], d, e)
    n = len(rows)
    out = StimulusSet(px, kind=np.array(["random"] * n, dtype=object), parent=np.full(n, -1),
                      site=[r[1] for r in rows], epsilon_requested=[r[2] for r in rows], epsilon_shown=shown,
                      direction=np.zeros(n), predicted_change=np.full(n, np.nan), budget_passes=np.zeros(n),
                      epsilon_index=[r[4] for r in rows], epsilons=[float(e) for e in epsilons])
    # parents index the caller's clean set, not this set (which may be shorter than the largest parent index)
    out.parent = np.array([r[0] for r in rows], dtype=np.int64)
    return out
