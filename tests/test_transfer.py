"""Transfer-oriented design (stimuli.transfer) on analytic objectives with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stimuli.objective import SiteObjective
from stimuli.params import PerturbParams
from stimuli.perturb import generate_perturbations
from stimuli.transfer import (
    TransferObjective,
    dct_matrix,
    gaussian_smooth,
    lowpass_dct,
    shift_scale,
    wrap_objective,
)

H = W = 32


class Linear(nn.Module):
    """f(x) = <w_s, x> per site s: its input gradient is w_s everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.reshape(len(w), -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1) @ self.w.T


def checkerboard() -> torch.Tensor:
    i = torch.arange(H)[:, None] + torch.arange(W)[None, :]
    return ((-1.0) ** i).expand(3, H, W).clone()


def grad_of(model: nn.Module, params: PerturbParams, x: torch.Tensor | None = None) -> torch.Tensor:
    obj = wrap_objective(SiteObjective(model), params, seed=0)
    x = torch.full((1, 3, H, W), 0.5) if x is None else x
    _, g = obj.value_and_grad(x, torch.zeros(1, dtype=torch.long), torch.ones(1))
    return g[0]


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_gaussian_smoothing_cosine_matches_the_closed_form():
    # truth: mean luminance (gradient constant 1); model: the truth plus a Nyquist checkerboard
    # artefact h. Reflect padding keeps h a checkerboard, which a normalised Gaussian g scales by
    # a = sum_k g_k (-1)^k while the constant passes, so cos goes from c/sqrt(c^2+1) to c/sqrt(c^2+a^2)
    c, sigma = 0.3, 1.5
    g_model = c * torch.ones(3, H, W) + checkerboard()
    model = Linear(g_model[None])
    raw = grad_of(model, PerturbParams())
    smooth = grad_of(model, PerturbParams(grad_smoothing_px=sigma))
    rad = math.ceil(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-rad, rad + 1.0) / sigma) ** 2)
    a = float(((k / k.sum()) * (-1.0) ** torch.arange(-rad, rad + 1.0)).sum())
    truth = torch.ones(3, H, W)
    assert cos(raw, truth) == pytest.approx(c / math.sqrt(c * c + 1), rel=1e-5)
    assert cos(smooth, truth) == pytest.approx(c / math.sqrt(c * c + a * a), rel=1e-4)
    assert cos(smooth, truth) > 0.99
    assert cos(raw, truth) < 0.3


def test_gaussian_smoothing_of_a_linear_truth_behind_a_known_blur():
    # truth t(x) = <v, B x> with B the same Gaussian blur: its gradient is B v (B symmetric up to the
    # borders); smoothing the model's gradient v + noise by B lands on B v + B noise
    gen = torch.Generator().manual_seed(0)
    v = gaussian_smooth(torch.randn(1, 3, H, W, generator=gen), 3.0)
    noise = torch.randn(1, 3, H, W, generator=gen) * float(v.norm()) / math.sqrt(3 * H * W) * 4
    true_grad = gaussian_smooth(v, 2.0)
    model = Linear(v + noise)
    raw = grad_of(model, PerturbParams())
    smooth = grad_of(model, PerturbParams(grad_smoothing_px=2.0))
    expected = gaussian_smooth(v + noise, 2.0)[0]
    assert torch.allclose(smooth, expected, atol=1e-6)
    assert cos(smooth, true_grad) > cos(raw, true_grad) + 0.3


def test_dct_lowpass_is_the_orthogonal_projection_onto_the_low_basis():
    c = dct_matrix(H)
    assert torch.allclose(c @ c.T, torch.eye(H), atol=1e-5)
    low = torch.outer(c[1], c[2]).expand(1, 3, H, W)           # basis image (1, 2): kept at fraction 1/4 (k = 8)
    high = torch.outer(c[20], c[25]).expand(1, 3, H, W)        # basis image (20, 25): removed
    p = lowpass_dct(low + high, 0.25)
    assert torch.allclose(p, low, atol=1e-5)
    assert torch.allclose(lowpass_dct(p, 0.25), p, atol=1e-5)  # idempotent
    model = Linear((low + high)[0][None])
    g = grad_of(model, PerturbParams(lowpass_fraction=0.25))
    assert cos(g, low[0]) == pytest.approx(1.0, abs=1e-5)
    assert cos(grad_of(model, PerturbParams()), low[0]) == pytest.approx(1 / math.sqrt(2), abs=1e-5)


def test_eot_over_shifts_averages_the_shifted_gradients():
    # f(x) = <w, roll(x, d)> has gradient roll(w, -d): the EOT gradient is the mean over the samples'
    # shifts (the first sample is the image itself)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(1, 3, H, W, generator=gen)
    params = PerturbParams(eot_samples=5, eot_shift_px=3)
    obj = TransferObjective(SiteObjective(Linear(w)), params, seed=4)
    shifts = [(dy, dx) for dy, dx, _, _ in TransferObjective(None, params, seed=4)._transforms()]
    _, g = obj.value_and_grad(torch.full((1, 3, H, W), 0.5), torch.zeros(1, dtype=torch.long), torch.ones(1))
    expected = torch.stack([torch.roll(w[0], (-dy, -dx), (-2, -1)) for dy, dx in shifts]).mean(0)
    assert shifts[0] == (0, 0) and len(set(shifts)) > 1
    assert torch.allclose(g[0], expected, atol=1e-5)


def test_eot_noise_leaves_a_linear_gradient_and_the_value_unchanged():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(1, 3, H, W, generator=gen)
    x = torch.rand(2, 3, H, W, generator=gen)
    plain = SiteObjective(Linear(w))
    site, sign = torch.zeros(2, dtype=torch.long), torch.tensor([1.0, -1.0])
    v0, g0 = plain.value_and_grad(x, site, sign)
    v1, g1 = wrap_objective(plain, PerturbParams(eot_samples=4, eot_noise=0.2), seed=0).value_and_grad(x, site, sign)
    assert torch.equal(v0, v1)
    assert torch.allclose(g0, g1, atol=1e-5)


def test_shift_scale_identity_and_scale_about_the_centre():
    x = torch.rand(1, 3, H, W)
    assert torch.equal(shift_scale(x, 0, 0, 1.0), x)
    y = shift_scale(x, 0, 0, 1.2)
    assert y.shape == x.shape and not torch.equal(y, x)


def test_options_off_return_the_objective_itself_and_on_keep_the_constraints():
    obj = SiteObjective(Linear(torch.ones(2, 3, H, W)))
    assert wrap_objective(obj, PerturbParams()) is obj
    gen = torch.Generator().manual_seed(3)
    model = Linear(torch.randn(2, 3, 16, 16, generator=gen))
    clean = np.random.default_rng(0).integers(30, 220, size=(2, 16, 16, 3), dtype=np.uint8)
    eps = [0.5, 1.0]
    for opts in ({"grad_smoothing_px": 1.0}, {"lowpass_fraction": 0.25}, {"eot_samples": 3, "eot_shift_px": 2}):
        params = PerturbParams(restarts=2, steps=6, random_controls_per_image=0, **opts)
        ss = generate_perturbations(model, clean, [(0, 0), (1, 1)], eps, params)
        t = np.flatnonzero(ss.kind == "targeted")
        d = ss.pixels[t].astype(float) / 255 - ss.pixels[ss.parent[t]].astype(float) / 255
        norms = np.sqrt((d.reshape(len(t), -1) ** 2).sum(1))
        assert np.all(norms <= ss.epsilon_requested[t] + 1e-9)
        # every design moves its site in its direction (a linear model: the step direction has a
        # positive inner product with the gradient for all three options)
        assert np.all(ss.predicted_change[t] * ss.direction[t] > 0)


def test_impossible_transfer_settings_are_named():
    for bad in ({"grad_smoothing_px": -1.0}, {"lowpass_fraction": 1.5}, {"eot_samples": 0}, {"eot_scale": 0.7},
                {"eot_noise": -0.1}, {"eot_shift_px": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PerturbParams(**bad).validated()
