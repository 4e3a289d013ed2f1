"""The simulated monkey's ground truth: bounded rates, the two knobs, determinism."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

from sim.monkey import SimParams, SimulatedMonkey


def _images(n: int, seed: int) -> np.ndarray:
    from stimuli.images import builtin_images

    return builtin_images(n, 64, seed=seed)


def _monkey(model_features=None, **kw) -> SimulatedMonkey:
    """A small monkey (hidden_width 16, 128 reference images) to keep the tests fast."""
    kw.setdefault("hidden_width", 16)
    return SimulatedMonkey(SimParams(**kw), model_features=model_features, n_reference_images=128)


def _as_float(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def backbone():
    """The controller's backbone: the 'tiny' registry network, or a small random net of our own."""
    try:
        from modelfit.backbone import build_backbone
    except ImportError:  # pragma: no cover
        from sim.hidden import RandomConvNet
        return RandomConvNet(16, seed=99)
    return build_backbone("tiny", "layer4")


def test_rates_stay_between_baseline_and_peak_even_when_pushed():
    p = SimParams(n_channels=8, peak_hz=150.0, seed=5)
    m = _monkey(**dataclasses.asdict(p))
    px = _images(24, seed=1)
    rates = m.true_rates(px)
    assert np.all(rates >= m.baseline_hz - 1e-4) and np.all(rates <= p.peak_hz + 1e-4)
    assert np.all((m.baseline_hz >= 5) & (m.baseline_hz <= 30))
    assert 20 < np.median(rates) < 120  # clean images drive realistic multi-unit rates
    assert np.all(rates.std(0) > 3)      # every site is selective over images

    # extreme images and a strong gradient ascent on every site cannot exceed the peak
    mod = m.true_rate_module()
    x = torch.cat([torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64),
                   torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), _as_float(px[:4])])
    x = x.clone().requires_grad_(True)
    for _ in range(8):
        r = mod(x)
        assert torch.all(r <= p.peak_hz + 1e-3) and torch.all(r >= mod.baseline_hz - 1e-3)
        (g,) = torch.autograd.grad(r.sum(), x)
        with torch.no_grad():
            x += 20.0 * g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            x.clamp_(0, 1)
    with torch.no_grad():
        pushed = mod(x)
    assert pushed.max() <= p.peak_hz + 1e-3
    assert pushed[-4:].mean() > mod(_as_float(px[:4])).mean() + 10  # the ascent did push  # the ascent did push


def test_true_rates_match_module_and_cache_by_content():
    m = _monkey(n_channels=5, seed=9)
    px = _images(6, seed=2)
    r1 = m.true_rates(px)
    with torch.no_grad():
        direct = m.true_rate_module()(_as_float(px)).double().numpy()
    np.testing.assert_allclose(r1, direct, rtol=1e-5)
    assert len(m._cache) == 6
    r2 = m.true_rates(np.concatenate([px[::-1], px[:1]]))  # same images, other order, duplicate
    np.testing.assert_array_equal(r2, np.concatenate([r1[::-1], r1[:1]]))
    assert len(m._cache) == 6


def test_same_seed_same_monkey_other_seed_other_monkey():
    px = _images(10, seed=4)
    a = _monkey(n_channels=6, seed=21).true_rates(px)
    b = _monkey(n_channels=6, seed=21).true_rates(px)
    c = _monkey(n_channels=6, seed=22).true_rates(px)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 5.0


def test_smoothing_knob_reduces_sensitivity(backbone):
    """Normalised sensitivity (change / std of the site over images) falls with smoothing_px."""
    px = _images(32, seed=6)
    x = _as_float(px[:8])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noise = noise / noise.flatten(1).norm(dim=1)[:, None, None, None] * 1.0  # L2 = 1 in [0,1] space
    out = {}
    for sigma in (0.0, 2.0):
        m = _monkey(backbone, n_channels=4, smoothing_px=sigma, seed=3)
        sd = torch.from_numpy(m.true_rates(px).std(0)).float()
        mod = m.true_rate_module()
        xg = x.clone().requires_grad_(True)
        r = mod(xg)
        grad_norm = torch.stack([torch.autograd.grad(r[:, c].sum(), xg, retain_graph=True)[0].flatten(1).norm(dim=1)
                                 for c in range(4)], 1)
        with torch.no_grad():
            change = (mod((x + noise).clamp(0, 1)) - mod(x)).abs()
        out[sigma] = ((grad_norm / sd).mean().item(), (change / sd).mean().item())
    assert out[2.0][0] < 0.5 * out[0.0][0], out   # gradient norm (worst-case direction)
    assert out[2.0][1] < 0.5 * out[0.0][1], out   # random perturbations of L2 norm 1


def test_linear_fraction_knob_sets_linear_predictability(backbone):
    """A cross-validated ridge readout on the backbone's features explains more of the true
    rates when linear_fraction is higher."""
    px = _images(240, seed=8)
    with torch.no_grad():
        feats = backbone(_as_float(px)).numpy()
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    r2 = {}
    for lf in (0.1, 0.5, 0.9):
        m = _monkey(backbone, n_channels=8, linear_fraction=lf, model_alignment=1.0, smoothing_px=0.5, seed=4)
        y = m.true_rates(px)
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-1, 4, 11)), feats, y, cv=5)
        r2[lf] = float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))
    assert r2[0.1] < r2[0.5] < r2[0.9], r2
    assert r2[0.9] > r2[0.1] + 0.25, r2


def test_params_mirror_config_and_bad_values_are_named():
    try:
        from rig.config import SimConfig
    except ImportError:  # pragma: no cover
        pytest.skip("rig.config not available")
    cfg_fields = {f.name for f in dataclasses.fields(SimConfig)}
    assert cfg_fields <= {f.name for f in dataclasses.fields(SimParams)}
    SimParams(**dataclasses.asdict(SimConfig())).validate()
    with pytest.raises(ValueError, match="sim.linear_fraction = 1.5"):
        SimulatedMonkey(SimParams(linear_fraction=1.5))
    with pytest.raises(ValueError, match="sim.peak_hz"):
        SimulatedMonkey(SimParams(peak_hz=20.0))
    with pytest.raises(TypeError, match="SimParams"):
        SimulatedMonkey({"n_channels": 3})
    with pytest.raises(ValueError, match=r"uint8 pixels of shape \(N, H, W, 3\)"):
        SimulatedMonkey(SimParams(n_channels=2)).true_rates(np.zeros((2, 8, 8, 3)))


def test_calibrate_on_a_user_set_normalises_drives_over_it():
    m = _monkey(n_channels=6, linear_fraction=0.5, seed=2)
    px = _images(64, seed=13)
    before = m.true_rates(px[:4])
    m.calibrate_on(px)
    with torch.no_grad():
        d = m.true_rate_module().drive(_as_float(px)).numpy()
    # each part has zero mean and unit variance over the set, so the sum's mean is 0 and its
    # variance is 1 + 2 sqrt(lf (1 - lf)) corr(lin, hid), within [0, 2]
    np.testing.assert_allclose(d.mean(0), 0.0, atol=1e-4)
    assert np.all((d.var(0) > 0) & (d.var(0) < 2 + 1e-4))
    assert not np.allclose(m.true_rates(px[:4]), before)  # the cache was cleared
    with pytest.raises(ValueError, match=">= 32 uint8 images"):
        m.calibrate_on(px[:5])
