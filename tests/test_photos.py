"""Builtin natural images (stimuli.photos) and the readout's spatial pooling (model.pool)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfit.names import pool_grid
from stimuli.images import clean_images
from stimuli.photos import PHOTOS, photo_crops, photo_of


def spectral_slope(images: np.ndarray) -> float:
    """Slope of log power against log spatial frequency (radial average, mean over images)."""
    g = images.astype(np.float64).mean(-1)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    n = g.shape[1]
    win = np.outer(np.hanning(n), np.hanning(n))
    p = (np.abs(np.fft.fft2(g * win)) ** 2).mean(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f = np.hypot(fx, fy)
    bins = np.linspace(2.0 / n, 0.4, 12)
    idx = np.digitize(f, bins)
    fm = np.array([f[idx == k].mean() for k in range(1, len(bins))])
    pm = np.array([p[idx == k].mean() for k in range(1, len(bins))])
    return float(np.polyfit(np.log(fm), np.log(pm), 1)[0])


def test_builtin_images_are_natural_photographs_with_a_1_over_f2_spectrum():
    px, names = clean_images("builtin", 64, 36, seed=0)
    assert px.shape == (36, 64, 64, 3) and px.dtype == np.uint8
    slope = spectral_slope(px)
    assert -3.0 < slope < -1.5, slope              # natural images: power ~ 1/f^2
    white = np.random.default_rng(0).integers(0, 256, size=px.shape).astype(np.uint8)
    assert abs(spectral_slope(white)) < 0.3        # a flat spectrum for comparison
    assert len({photo_of(n) for n in names}) == len(PHOTOS)   # 36 crops cycle through all 18 photographs


def test_builtin_images_are_deterministic_at_any_size():
    a, na = photo_crops(10, 48, seed=3)
    b, nb = photo_crops(10, 48, seed=3)
    c, _ = photo_crops(10, 48, seed=4)
    assert np.array_equal(a, b) and na == nb
    assert not np.array_equal(a, c)
    big, _ = photo_crops(2, 224, seed=3)
    assert big.shape == (2, 224, 224, 3)
    assert photo_of(na[0]) in {f"{p}:{r.rsplit('/', 1)[-1]}" for p, r, _ in PHOTOS}
    assert photo_of("image_0001.png") == "image_0001.png"   # folder images: one source each


def test_pink_noise_stays_available_by_name():
    px, names = clean_images("pink-noise", 32, 4, seed=0)
    assert px.shape == (4, 32, 32, 3) and names[0].startswith("pink-noise-0-")


def test_pool_names_and_grid_features():
    from modelfit.backbone import build_backbone

    assert pool_grid("avg") == 1 and pool_grid("grid2") == 2
    with pytest.raises(ValueError, match="model.pool"):
        pool_grid("max")
    avg = build_backbone("tiny", "layer3")
    grid = build_backbone("tiny", "layer3", pool="grid2")
    assert grid.feature_dim == 4 * avg.feature_dim
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        g = grid(x).reshape(2, -1, 2, 2)
        assert torch.allclose(g.mean((2, 3)), avg(x), atol=1e-5)   # the grid's mean is the global average


def test_fitted_model_remembers_its_pool(tmp_path):
    from modelfit.backbone import build_backbone
    from modelfit.readout import Readout
    from modelfit.store import load_fitted, save_fitted

    bb = build_backbone("tiny", "layer3", pool="grid2")
    x = torch.rand(12, 3, 32, 32)
    with torch.no_grad():
        feats = bb(x).numpy()
    y = feats[:, :2] * 2.0 + 1.0
    path = save_fitted(tmp_path / "m.h5", Readout().fit(feats, y), bb, site_channels=[0, 1])
    fm = load_fitted(path)
    assert fm.pool == "grid2"
    with torch.no_grad():
        assert torch.allclose(fm.module()(x), torch.as_tensor(fm.predict_features(feats), dtype=torch.float32), atol=1e-4)
