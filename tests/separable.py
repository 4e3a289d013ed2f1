"""A nonlinear model whose every output row depends only on its own input row, exactly.

Features are elementwise (``tanh(a * x + b)`` per pixel) and the readout is a per-row
product and sum, so no floating-point operation mixes rows: the engine's result for a
problem cannot depend on which other problems share its batches. That makes "sharded ==
single run, bit for bit" a statement about the sharding, not about a BLAS kernel's
blocking. :class:`SeparableSource` builds it in any process from its parameters (the
shippable model source the Dask path expects: ``sha256`` + ``build(device)``).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn


class Elementwise(nn.Module):
    def __init__(self, n_pixels: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("a", 4 * torch.rand(n_pixels, generator=g) + 1)
        self.register_buffer("b", 2 * torch.rand(n_pixels, generator=g) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a * x.flatten(1) + self.b)


class SeparableModel(nn.Module):
    """Images (B, 3, H, W) in [0,1] -> (B, S): ``tanh(a*x + b) . w_s + c_s`` (split readout)."""

    def __init__(self, n_sites: int, n_pixels: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + 1)
        self.backbone = Elementwise(n_pixels, seed)
        self.readout_weight = torch.randn(n_sites, n_pixels, generator=g)
        self.readout_bias = torch.randn(n_sites, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.backbone(x)[:, None, :] * self.readout_weight[None]).sum(2) + self.readout_bias


class SeparableSource:
    """Ships as a few integers; every process builds the identical model."""

    def __init__(self, n_sites: int, n_pixels: int, seed: int = 0) -> None:
        self.n_sites, self.n_pixels, self.seed = n_sites, n_pixels, seed
        self.sha256 = hashlib.sha256(f"separable:{n_sites}:{n_pixels}:{seed}".encode()).hexdigest()

    def build(self, device: str = "cpu") -> SeparableModel:
        return SeparableModel(self.n_sites, self.n_pixels, self.seed).to(device)
