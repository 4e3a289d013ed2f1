"""Transfer-oriented perturbation design: gradients that reach a brain that is not the model.

A standard network's input gradient is dominated by its own high-frequency patterns, which
a brain (or the simulated monkey, which sees a resampled, blurred image) barely responds
to. These options change only the *direction* the engine steps in; the engine still solves
the same constrained problem (``||delta||_2 <= e``, pixels in [0,1], exact projection,
best iterate by the model's own value), so every answer stays feasible and its value is
the designing model's prediction. All are ``[perturb]`` keys, off by default (then the
engine runs exactly as without this module, bit for bit):

- ``grad_smoothing_px`` (sigma, pixels of the stimulus): the gradient convolved with a
  Gaussian before the step (translation-invariant attacks, Dong et al., CVPR 2019).
- ``lowpass_fraction`` (f in (0, 1]): the gradient projected onto the lowest ``ceil(f * side)``
  x ``ceil(f * side)`` orthonormal DCT-II coefficients per channel (a low-frequency
  parametrisation: steps live in a truncated DCT basis).
- ``eot_samples`` (n >= 2, with ``eot_shift_px`` / ``eot_scale`` / ``eot_noise``): the gradient
  averaged over n transformed copies of the input -- the first is the image itself, the
  others circularly shifted by up to ``eot_shift_px`` pixels, rescaled by a factor within
  ``1 +- eot_scale`` about the centre, and with Gaussian pixel noise of std ``eot_noise``
  added (expectation over transformations, Athalye et al. 2018; input diversity, Xie et
  al., CVPR 2019; the noise term is SmoothGrad's average). Each sample costs one pass;
  transforms are seeded per pass, so runs repeat exactly.

:func:`wrap_objective` applies them to a :class:`stimuli.objective.SiteObjective`; the
engine calls it once (``stimuli.perturb.iter_solutions``).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from stimuli.params import TRANSFER_OFF


def transfer_enabled(p) -> bool:
    """True when any transfer option of ``p`` is on."""
    return any(getattr(p, k, TRANSFER_OFF[k]) != TRANSFER_OFF[k] for k in ("grad_smoothing_px", "lowpass_fraction",
                                                                            "eot_samples"))


def describe(p) -> str:
    """A short name of ``p``'s transfer method, e.g. ``"smooth4+eot8(shift2,noise0.05)"``; ``"plain"`` if off."""
    parts = []
    if p.grad_smoothing_px > 0:
        parts.append(f"smooth{p.grad_smoothing_px:g}")
    if p.lowpass_fraction > 0:
        parts.append(f"dct{p.lowpass_fraction:g}")
    if p.eot_samples > 1:
        opts = [f"{k}{v:g}" for k, v in (("shift", p.eot_shift_px), ("scale", p.eot_scale), ("noise", p.eot_noise)) if v]
        parts.append(f"eot{int(p.eot_samples)}" + (f"({','.join(opts)})" if opts else ""))
    return "+".join(parts) or "plain"


# ----------------------------------------------------------------------------- gradient filters
def gaussian_smooth(g: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``g`` (B, C, H, W) convolved with a separable Gaussian of std ``sigma_px`` pixels
    (reflect padding; kernel radius ceil(3 sigma), capped below the image side)."""
    if sigma_px <= 0:
        return g
    h, w = g.shape[-2:]
    rad = max(1, min(math.ceil(3.0 * sigma_px), min(h, w) - 1))
    t = torch.arange(-rad, rad + 1, dtype=g.dtype, device=g.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    b, c = g.shape[:2]
    x = g.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (rad, rad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, rad, rad), mode="reflect"), k.view(1, 1, -1, 1))
    return x.reshape(g.shape)


def dct_matrix(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)``: row k is basis function k (``C @ C.T = I``)."""
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype=dtype, device=device)


def lowpass_dct(g: torch.Tensor, fraction: float) -> torch.Tensor:
    """Orthogonal projection of ``g`` (B, C, H, W) onto the lowest ``ceil(fraction * H)`` x
    ``ceil(fraction * W)`` DCT-II basis images of each channel (``fraction`` 0 or 1: unchanged)."""
    if fraction <= 0 or fraction >= 1:
        return g
    h, w = g.shape[-2:]
    kh, kw = max(1, math.ceil(fraction * h)), max(1, math.ceil(fraction * w))
    ch = dct_matrix(h, g.dtype, g.device)[:kh]          # (kh, H)
    cw = dct_matrix(w, g.dtype, g.device)[:kw]          # (kw, W)
    return ch.T @ (ch @ g @ cw.T) @ cw


def filter_gradient(g: torch.Tensor, p) -> torch.Tensor:
    """The gradient filters of ``p`` (Gaussian smoothing, then the DCT projection) applied to ``g``."""
    g = gaussian_smooth(g, float(p.grad_smoothing_px))
    return lowpass_dct(g, float(p.lowpass_fraction))


# ----------------------------------------------------------------------------- input transforms
def shift_scale(x: torch.Tensor, dy: int, dx: int, scale: float) -> torch.Tensor:
    """``x`` (B, C, H, W) rescaled by ``scale`` about the centre (bilinear, border pixels
    repeated; 1: unchanged) and circularly shifted by (``dy``, ``dx``) pixels; differentiable."""
    if scale != 1.0:
        theta = torch.tensor([[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if dy or dx:
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


class TransferObjective:
    """A :class:`~stimuli.objective.SiteObjective` whose ``value_and_grad`` returns the
    transfer-oriented direction: the value is the model's own (at the untransformed image),
    the gradient is averaged over ``eot_samples`` transformed inputs and then filtered.
    Every other verb is the wrapped objective's."""

    def __init__(self, objective, params, seed: int = 0) -> None:
        self.inner, self.p, self.seed = objective, params, int(seed)
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def session(self):
        return self.inner.session()

    def _transforms(self) -> list[tuple[int, int, float, int]]:
        """(dy, dx, scale, noise seed) of each sample this pass; the first is the identity."""
        p = self.p
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        out = [(0, 0, 1.0, -1)]
        for _ in range(int(p.eot_samples) - 1):
            s = int(p.eot_shift_px)
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=gen)) if s else (0, 0)
            scale = 1.0 + float(p.eot_scale) * (2.0 * float(torch.rand(1, generator=gen)) - 1.0)
            out.append((dy, dx, scale, int(torch.randint(0, 2**31 - 1, (1,), generator=gen))))
        return out

    def value_and_grad(self, x: torch.Tensor, site: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_k * f_{site_k}(x_k), transfer direction)``; see the class docstring."""
        transforms = self._transforms()
        self.calls += 1
        value, grad = self.inner.value_and_grad(x, site, sign)
        for dy, dx, scale, noise_seed in transforms[1:]:
            xt = x.detach().requires_grad_(True)
            with torch.enable_grad():
                z = shift_scale(xt, dy, dx, scale)
                if self.p.eot_noise > 0:
                    gen = torch.Generator(device=x.device).manual_seed(noise_seed)
                    z = z + float(self.p.eot_noise) * torch.randn(z.shape, generator=gen, device=x.device, dtype=z.dtype)
                _, gz = self.inner.value_and_grad(z.detach(), site, sign)
                (g,) = torch.autograd.grad(z, xt, grad_outputs=gz.to(z.dtype))
            grad = grad + g.float()
        if len(transforms) > 1:
            grad = grad / len(transforms)
        return value, filter_gradient(grad, self.p).contiguous()


def wrap_objective(objective, params, seed: int = 0):
    """``objective`` itself when every transfer option of ``params`` is off (the engine is then
    unchanged, bit for bit); otherwise a :class:`TransferObjective` around it."""
    if not transfer_enabled(params):
        return objective
    return TransferObjective(objective, params, seed)
