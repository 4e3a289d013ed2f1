"""Rounding a perturbation to displayable uint8 pixels without leaving its epsilon ball.

A perturbation ``delta`` (pixels in [0,1], ``||delta||_2 <= e``) is shown as the uint8
image ``X + k`` with ``X = clean uint8`` and integer steps ``k``; the shown perturbation is
``k / 255``. Plain rounding can push ``||k|| / 255`` above ``e`` (each coordinate's
rounding error adds up to ~``sqrt(n/12)/255``). :func:`quantize_perturbation` instead
starts from ``k0 = trunc(255 delta)`` (toward zero: inside the ball and the box), then
spends the remaining squared-norm budget ``(255 e)^2 - ||k0||^2`` on one extra unit step
per coordinate (toward ``delta``'s side), best value first, where value = ``|delta_j|``
per unit of squared norm added (``2|k0_j| + 1``). ``delta`` is the optimiser's answer, so
``|delta_j|`` is its own estimate of where the objective gains most. The result is
always in the box and has ``||k|| / 255 <= e`` exactly (checked in integers).
"""
from __future__ import annotations

import numpy as np

_SAFETY = 1.0 - 1e-12  # keep (255 e)^2 rounding from ever admitting a norm above e


def quantize_perturbation(clean: np.ndarray, delta: np.ndarray, epsilon: float) -> tuple[np.ndarray, float]:
    """Shown uint8 image and its shown epsilon (L2 norm in [0,1] space, <= ``epsilon``).

    ``clean``: (H, W, 3) uint8; ``delta``: (H, W, 3) float perturbation in [0,1] space.
    """
    x = clean.astype(np.int64)
    d255 = np.asarray(delta, dtype=np.float64) * 255.0
    d255 = np.clip(d255, -x, 255 - x)  # the box, in case float rounding left it by a hair
    k = np.trunc(d255).astype(np.int64)
    budget = (255.0 * float(epsilon)) ** 2 * _SAFETY
    used = float((k * k).sum())
    if used > budget:  # only possible from float noise: shrink to fit
        k = np.trunc(d255 * np.sqrt(budget / max(float((d255 * d255).sum()), 1e-300))).astype(np.int64)
        used = float((k * k).sum())
    rest = d255 - k
    cand = np.flatnonzero(np.abs(rest) > 1e-9)
    if cand.size and used < budget:
        kc = np.abs(k.ravel()[cand])
        cost = 2 * kc + 1
        order = np.argsort(-np.abs(d255.ravel()[cand]) / cost, kind="stable")
        cum = used + np.cumsum(cost[order])
        take = cand[order[cum <= budget]]
        kf = k.ravel()
        kf[take] += np.sign(rest.ravel()[take]).astype(np.int64)
        k = kf.reshape(k.shape)
    shown = (x + k).astype(np.uint8)
    eps_shown = float(np.sqrt(float((k * k).sum()))) / 255.0
    assert eps_shown <= epsilon and np.all((x + k >= 0) & (x + k <= 255))
    return shown, eps_shown


def shown_epsilon(clean: np.ndarray, shown: np.ndarray) -> float:
    """L2 norm, in [0,1] pixel space, of the difference between two uint8 images."""
    k = shown.astype(np.int64) - clean.astype(np.int64)
    return float(np.sqrt(float((k * k).sum()))) / 255.0
