"""A model with known answers for the perturbation tests: ``f_s(x) = w_s . x + b_s`` on raw pixels,
split as the engine's fast path expects (backbone = flatten, a readout weight and bias)."""
from __future__ import annotations

import torch
from torch import nn


class LinearOnPixels(nn.Module):
    """``w``: (n_sites, 3 * H * W) readout on the flattened (B, 3, H, W) image; bias 0."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.backbone = nn.Flatten()
        self.readout_weight = w
        self.readout_bias = torch.zeros(w.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) @ self.readout_weight.T + self.readout_bias
