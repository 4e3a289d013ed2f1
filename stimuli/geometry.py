"""Directions in image space and stimuli along them: the subspace of a site's designed
perturbations, and points on a line or a plane through a clean image.

Everything is in the displayed pixel space (pixels in [0,1], L2 norms). A *designed
direction* of a (site, image) is the unit vector of its designed perturbation (shown minus
clean, times the design's direction ``s``, so every direction points "up" for the site).

- :func:`principal_directions`: singular values and right singular vectors of the matrix
  whose rows are a site's designed directions (the subspace they span);
- :func:`subspace_fractions`: leave-one-out, the share of each image's designed direction
  (squared norm) that lies in the top-k subspace of the *other* images' directions;
- :func:`orthogonal_direction`: a seeded random unit vector orthogonal to a given one;
- :func:`plane_stimuli`: ``clip(x + a u + b v)`` quantised to uint8, with the coordinates
  ``(a, b)`` actually shown (the shown perturbation projected on ``u`` and ``v``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stimuli.quantize import quantize_perturbation


def designed_directions(shown: np.ndarray, parents: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Unit rows ``s * (shown - parent) / ||shown - parent||`` (n, H*W*3), float64.

    ``shown``/``parents``: uint8 (n, H, W, 3); ``direction``: (n,) +1/-1. A row whose shown
    image equals its parent stays 0.
    """
    d = (shown.astype(np.float64) - parents.astype(np.float64)).reshape(len(shown), -1) / 255.0
    d *= np.asarray(direction, np.float64)[:, None]
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, n, out=np.zeros_like(d), where=n > 0)


def principal_directions(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(singular values (r,), right singular vectors (r, D))`` of ``rows`` (n, D), uncentred
    (a shared direction is the mean, not removed). The first vector's sign is chosen so the
    rows' mean projection on it is >= 0 (it points the way the designs push the site)."""
    _, s, vt = np.linalg.svd(np.asarray(rows, np.float64), full_matrices=False)
    for k in range(len(s)):
        if float(np.mean(rows @ vt[k])) < 0:
            vt[k] = -vt[k]
    return s, vt


def subspace_fractions(rows: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(n, len(ks)): for each row (a held-out image), the fraction of its squared norm in the
    span of the top-k right singular vectors of the OTHER rows (leave-one-out), per k.
    k is capped at the other rows' rank; a zero row gives NaN."""
    rows = np.asarray(rows, np.float64)
    out = np.full((len(rows), len(ks)), np.nan)
    for i in range(len(rows)):
        nrm2 = float(rows[i] @ rows[i])
        others = np.delete(rows, i, axis=0)
        if nrm2 == 0 or len(others) == 0:
            continue
        _, s, vt = np.linalg.svd(others, full_matrices=False)
        vt = vt[s > s.max() * 1e-10] if s.size and s.max() > 0 else vt[:0]
        proj = vt @ rows[i]
        for j, k in enumerate(ks):
            out[i, j] = float(np.sum(proj[:k] ** 2)) / nrm2
    return out


def random_subspace_fraction(dim: int, k: int) -> float:
    """Expected fraction of a random direction's squared norm in a fixed k-dim subspace: k / dim."""
    return min(k, dim) / dim


def orthogonal_direction(u: np.ndarray, seed: int) -> np.ndarray:
    """A seeded Gaussian unit vector shaped like ``u`` with ``<v, u> = 0`` (Gram-Schmidt)."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 29]))
    u = np.asarray(u, np.float64)
    un = u / np.linalg.norm(u)
    v = g.standard_normal(u.shape)
    v -= float(np.sum(v * un)) * un
    return v / np.linalg.norm(v)


def line_coordinates(t_max: float, steps_per_side: int) -> np.ndarray:
    """Signed steps ``t`` (L2 norms, pixels in [0,1]) from ``-t_max`` to ``t_max``, 0 left out
    (the clean image is t = 0): ``steps_per_side`` evenly spaced on each side."""
    if steps_per_side < 1 or not t_max > 0:
        raise ValueError(f"a line needs t_max > 0 and steps_per_side >= 1; got {t_max}, {steps_per_side}")
    pos = t_max * np.arange(1, steps_per_side + 1) / steps_per_side
    return np.concatenate([-pos[::-1], pos])


def plane_coordinates(t_max: float, steps_per_side: int, skip: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) grid points ``(a, b)`` in ``[-t_max, t_max]^2`` with ``2 steps_per_side + 1``
    levels per axis, without the centre (the clean image) and without any point of ``skip``
    ((k, 2), e.g. the lines' points already planned; matched to 1e-9)."""
    lv = np.concatenate([-line_coordinates(t_max, steps_per_side)[steps_per_side:][::-1], [0.0],
                         line_coordinates(t_max, steps_per_side)[steps_per_side:]])
    a, b = np.meshgrid(lv, lv, indexing="ij")
    pts = np.stack([a.ravel(), b.ravel()], 1)
    keep = (pts[:, 0] != 0) | (pts[:, 1] != 0)
    if skip is not None and len(skip):
        keep &= ~np.any(np.all(np.abs(pts[:, None, :] - np.asarray(skip)[None]) < 1e-9, axis=2), axis=1)
    return pts[keep]


def plane_stimuli(clean: np.ndarray, u: np.ndarray, v: np.ndarray,
                  coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stimuli ``clip(x + a u + b v)`` for each ``(a, b)`` in ``coords`` (m, 2), quantised to uint8.

    ``clean``: one uint8 image (H, W, 3); ``u``, ``v``: orthonormal directions shaped like it.
    Returns shown pixels (m, H, W, 3) uint8, the shown coordinates (m, 2) (the shown
    perturbation's projections on ``u`` and ``v``; they differ from ``coords`` where the pixel
    box clips) and each shown epsilon (m,) (L2 norm, <= sqrt(a^2 + b^2)).
    """
    x = clean.astype(np.float64) / 255.0
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    shown = np.empty((len(coords),) + clean.shape, np.uint8)
    got = np.zeros_like(coords)
    eps = np.zeros(len(coords))
    for k, (a, b) in enumerate(coords):
        d = np.clip(x + a * u + b * v, 0.0, 1.0) - x
        shown[k], eps[k] = quantize_perturbation(clean, d, float(np.hypot(a, b)))
        ds = (shown[k].astype(np.float64) - clean.astype(np.float64)) / 255.0
        got[k] = (float(np.sum(ds * u)), float(np.sum(ds * v)))
    return shown, got, eps
