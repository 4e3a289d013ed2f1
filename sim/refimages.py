"""Reference images for calibrating the simulated monkey: seeded naturalistic textures.

The simulated sites' drives are normalised to zero mean and unit variance over a fixed
reference set, so the ground truth depends only on the seed and the image size, never on
which stimuli happen to be shown first. ``sim`` generates these itself (it may not import
``stimuli``): coloured 1/f^alpha noise with random spectral slope, colour mixing, contrast
and an oriented grating, with a few shaded object-like ellipses in front -- roughly the
statistics of natural images.
"""
from __future__ import annotations

import numpy as np


def _pink_noise(rng: np.random.Generator, size: int, alphas: np.ndarray) -> np.ndarray:
    """(size, size, len(alphas)) fields with 1/f^alpha amplitude spectra, zero mean, unit std each."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f[None] ** (-np.asarray(alphas, dtype=np.float64)[:, None, None])
    amp[:, 0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=(size, size), axes=(-2, -1))
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return np.moveaxis(field, 0, -1)


def reference_images(n: int, size_px: int, seed: int = 0) -> np.ndarray:
    """``n`` deterministic textures, uint8 ``(n, size_px, size_px, 3)``, same for the same seed."""
    if n < 1 or size_px < 8:
        raise ValueError(f"reference_images needs n >= 1 and size_px >= 8; got n={n}, size_px={size_px}")
    rng = np.random.default_rng([int(seed), 0x5EED, int(size_px)])
    out = np.empty((n, size_px, size_px, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    for k in range(n):
        fields = _pink_noise(rng, size_px, rng.uniform(1.0, 2.2, size=3))
        mix = np.eye(3) * rng.uniform(0.2, 0.6) + rng.uniform(0.2, 0.6)  # correlated colour channels
        img = fields @ mix.T
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, size_px / 8)
        grating = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
        img += rng.uniform(0.0, 1.0) * grating[..., None] * rng.uniform(0.3, 1.0, size=3)
        img = img / (img.std() + 1e-12) * rng.uniform(0.08, 0.22) + rng.uniform(0.3, 0.7, size=3)
        for _ in range(rng.integers(0, 5)):  # a few soft-edged, object-like ellipses in front
            cx, cy = rng.uniform(0.1, 0.9, size=2)
            a, b = rng.uniform(0.05, 0.3, size=2)
            th = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
            v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
            mask = (1.0 / (1.0 + np.exp(np.minimum((u * u + v * v - 1.0) * 10.0, 50.0))))[..., None]
            shade = 1.0 + rng.uniform(-0.3, 0.3) * np.clip(u, -1, 1)[..., None]
            img = img * (1 - mask) + rng.uniform(0.05, 0.95, size=3) * shade * mask
        out[k] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return out
