"""Site-universal perturbations and the subspace of a site's designs: estimators and budgets.

A site's change under a shared perturbation ``delta`` on image ``j`` is the signed change
``s * (r(x_j + delta) - r(x_j))`` (spikes, mean over repeats; ``s`` the design's direction),
so a positive mean means the shared ``delta`` moved the site the way it was designed to. The
mean over images gets a BCa bootstrap CI over images (:func:`signed_change`).

Budget (:func:`presentations_for_mean_change`): with per-presentation noise s.d. ``sigma``,
image-to-image s.d. of the true change ``tau`` and ``n`` repeats of both the perturbed
image and its clean parent, the mean over ``m`` images has variance
``(tau^2 + 2 sigma^2 / n) / m``; the repeats needed for a CI half-width ``h`` follow.

Subspace: :func:`participation_ratio` of a singular spectrum, ``(sum s^2)^2 / sum s^4``,
the effective number of dimensions the designed directions occupy (1 for one shared
direction, n for n orthogonal ones).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from analysis.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    Estimate,
    bootstrap_mean,
    check_level,
)


def signed_change(perturbed: np.ndarray, clean: np.ndarray, sign: np.ndarray | float,
                  n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> Estimate:
    """Mean over images of ``sign * (perturbed - clean)`` (spikes) with a bootstrap CI over images.

    ``perturbed``/``clean``: (m,) responses (mean over repeats) per image; ``sign``: (m,) or scalar."""
    p, c = np.asarray(perturbed, np.float64), np.asarray(clean, np.float64)
    if p.shape != c.shape:
        raise ValueError(f"perturbed {p.shape} and clean {c.shape} responses must pair image by image")
    return bootstrap_mean(np.asarray(sign, np.float64) * (p - c), n_boot, level, seed)


def participation_ratio(singular_values: np.ndarray) -> float:
    """``(sum s^2)^2 / sum s^4``: effective dimension of a spectrum (NaN when all zero)."""
    s2 = np.asarray(singular_values, np.float64) ** 2
    return float(s2.sum() ** 2 / np.sum(s2 ** 2)) if np.sum(s2) > 0 else math.nan


def energy_fraction(singular_values: np.ndarray, k: int) -> float:
    """Fraction of the squared singular values in the top ``k``."""
    s2 = np.sort(np.asarray(singular_values, np.float64) ** 2)[::-1]
    return float(s2[:k].sum() / s2.sum()) if s2.sum() > 0 else math.nan


def presentations_for_mean_change(noise_sd: float, image_sd: float, n_images: int, halfwidth: float,
                                  level: float = DEFAULT_LEVEL) -> int | None:
    """Repeats per stimulus (perturbed and clean alike) for a CI half-width ``halfwidth`` on the
    mean signed change over ``n_images`` images; None when no number of repeats is enough
    (the image-to-image spread alone is wider: more images are needed, see
    :func:`images_for_mean_change`)."""
    check_level(level)
    if not halfwidth > 0 or n_images < 1:
        raise ValueError(f"need halfwidth > 0 and n_images >= 1; got {halfwidth}, {n_images}")
    z = stats.norm.ppf(0.5 + level / 2)
    room = n_images * (halfwidth / z) ** 2 - image_sd ** 2
    if room <= 0:
        return None
    return max(1, math.ceil(2 * noise_sd ** 2 / room))


def images_for_mean_change(image_sd: float, halfwidth: float, level: float = DEFAULT_LEVEL) -> int:
    """The fewest images for which the image-to-image spread alone fits the half-width."""
    z = stats.norm.ppf(0.5 + level / 2)
    return max(1, math.ceil((z * image_sd / halfwidth) ** 2))
