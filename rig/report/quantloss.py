"""uint8 quantisation loss per epsilon at the working resolution, on a linear objective.

For a site's linearised model ``f(x + d) ~ f(x) + g . d`` the best perturbation of L2 norm
``e`` is ``d* = e g / |g|`` (clipped to the pixel box). Shown on screen it becomes the
uint8 perturbation ``k / 255`` of :func:`stimuli.quantize.quantize_perturbation` (never
leaving the ball). The loss is ``1 - g . k/255 / g . d*``: the share of the linear
objective that rounding to displayable pixels throws away. It grows as eps shrinks and as
the image grows (the same eps spread over more pixels means fewer grey levels per pixel).
Near 0 at large eps; it can be a hair below 0 where the clipped ``d*`` is not the exact box optimum.
"""
from __future__ import annotations

import numpy as np


def quantisation_loss(model, clean: np.ndarray, sites: list[int], epsilons: list[float]) -> dict[float, float]:
    """{eps: mean loss over (image, site)} for ``model`` (images (B,3,H,W) in [0,1] -> (B, S))."""
    import torch

    from modelfit.features import images_to_tensor
    from stimuli.quantize import quantize_perturbation

    x = images_to_tensor(clean).requires_grad_(True)
    grads = []
    for s in sites:
        (g,) = torch.autograd.grad(model(x)[:, s].sum(), x)
        grads.append(g.permute(0, 2, 3, 1).double().numpy())   # (N, H, W, 3) per site
    base = clean.astype(np.float64) / 255.0
    out = {}
    for e in epsilons:
        losses = []
        for g_site in grads:
            for i in range(len(clean)):
                g = g_site[i]
                n = np.linalg.norm(g)
                if n == 0:
                    continue
                d = np.clip(e * g / n, -base[i], 1.0 - base[i])
                ideal = float((g * d).sum())
                shown, _ = quantize_perturbation(clean[i], d, e)
                got = float((g * (shown.astype(np.float64) - clean[i].astype(np.float64)) / 255.0).sum())
                if ideal > 0:
                    losses.append(1.0 - got / ideal)
        out[float(e)] = float(np.mean(losses)) if losses else float("nan")
    return out
