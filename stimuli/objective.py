"""Per-row site objectives of a model: ``s_k * f_{site_k}(x_k)`` and its input gradient.

The model ``f`` maps images ``(B, 3, H, W)`` float in [0,1] to every site's prediction
``(B, S)`` (spikes). Two ways of evaluating it, chosen by :func:`SiteObjective`:

- **split** (fast path): a module exposing ``backbone`` (images -> features ``(B, D)``),
  ``readout_weight`` ``(S, D)`` and ``readout_bias`` ``(S,)``, with
  ``f(x) = backbone(x) @ readout_weight.T + readout_bias`` (or modelfit's ``SiteModel``:
  ``weight``/``bias`` on features z-scored by ``feat_mean``/``feat_scale``, folded into
  one raw-feature readout here). The backward pass starts at
  the features with ``grad_outputs = s_k * readout_weight[site_k]``: one backward per
  batch, every row its own site and sign, and no ``(B, S)`` readout in the graph.
- **generic**: any differentiable module; the row's column is picked with ``gather``
  and the backward starts there with ``grad_outputs = s_k``.

Parameters never get gradients (they are switched off while the objective is in use and
restored afterwards); the model is put in eval mode (BatchNorm uses running stats) and
its mode restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from stimuli.modes import EngineMode, Network, engine_network, precision_context

SPLIT_ATTRIBUTES = ("backbone", "readout_weight", "readout_bias")


ZSCORED_ATTRIBUTES = ("backbone", "weight", "bias", "feat_mean", "feat_scale")


def has_split_readout(model) -> bool:
    """True when ``model`` exposes a backbone plus a linear readout on its features: either
    ``readout_weight (S, D)`` / ``readout_bias (S,)`` on raw features, or (``modelfit``'s
    ``SiteModel``) ``weight``/``bias`` on features z-scored with ``feat_mean``/``feat_scale``."""
    return all(hasattr(model, a) for a in SPLIT_ATTRIBUTES) or all(hasattr(model, a) for a in ZSCORED_ATTRIBUTES)


def effective_readout(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (S, D), b (S,))`` with ``f(x) = backbone(x) @ W.T + b`` on raw features."""
    if all(hasattr(model, a) for a in SPLIT_ATTRIBUTES):
        w = torch.as_tensor(model.readout_weight).detach().float()
        return w, torch.as_tensor(model.readout_bias).detach().float().reshape(-1)
    w = torch.as_tensor(model.weight).detach().float() / torch.as_tensor(model.feat_scale).detach().float()
    b = torch.as_tensor(model.bias).detach().float() - w @ torch.as_tensor(model.feat_mean).detach().float()
    return w, b.reshape(-1)


class SiteObjective:
    """Evaluate a model row by row: values, input gradients and plain predictions.

    ``model``: ``nn.Module`` (or callable) images ``(B,3,H,W)`` in [0,1] -> ``(B, S)``.
    ``mode`` (:class:`stimuli.modes.EngineMode`, default fp32 / contiguous / not compiled):
    how the gradient passes run; the network is prepared once for it
    (:func:`stimuli.modes.engine_network`). Predictions (:meth:`predict_all`, :meth:`predict`)
    always run the model as given, in float32. ``batch_rows``: with ``mode.compile``, every
    gradient batch is padded to this many rows (one compiled shape).
    """

    def __init__(self, model, device: str | torch.device = "cpu", mode: EngineMode | None = None,
                 use_split: bool | None = None, batch_rows: int = 0) -> None:
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module mapping images (B,3,H,W) in [0,1] to (B, S) site predictions; got {type(model).__name__}")
        self.model = model
        self.device = torch.device(device)
        self.mode = mode or EngineMode()
        self.batch_rows = int(batch_rows)
        self.split = has_split_readout(model) if use_split is None else use_split
        if self.split:
            w, b = effective_readout(model)
            self.weight, self.bias = w.to(self.device), b.to(self.device)
            if self.weight.dim() != 2 or self.bias.shape[0] != self.weight.shape[0]:
                raise ValueError(f"model.readout_weight must be (S, D) and model.readout_bias (S,); got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}")
        self._n_sites: int | None = int(self.weight.shape[0]) if self.split else None
        self._net: Network | None = None

    def plain(self) -> SiteObjective:
        """The same model in the plain mode (fp32, contiguous, not compiled)."""
        return self if self.mode.plain else SiteObjective(self.model, self.device, None, self.split)

    @property
    def network(self):
        """What the gradient passes run: the backbone (split) or the whole model, in :attr:`mode`."""
        if self._net is None:
            self._net = engine_network(self.model.backbone if self.split else self.model, self.mode, self.device)
        return self._net

    # ------------------------------------------------------------------ state
    @contextlib.contextmanager
    def session(self) -> Iterator["SiteObjective"]:
        """Eval mode and no parameter gradients for the duration; both restored after."""
        mods = [m for m in (self.model, getattr(self.model, "backbone", None)) if isinstance(m, nn.Module)]
        modes = [m.training for m in mods]
        params = []
        for m in mods:
            params += [p for p in m.parameters() if p.requires_grad]
        try:
            for m in mods:
                m.eval()
            for p in params:
                p.requires_grad_(False)
            yield self
        finally:
            for p in params:
                p.requires_grad_(True)
            for m, mode in zip(mods, modes):
                m.train(mode)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 on the device, in NCHW (the model as given)."""
        return x.to(self.device, torch.float32).contiguous()

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded with zero images to :attr:`batch_rows` rows when compiled (one static
        shape), else as is."""
        short = self.batch_rows - len(x) if self.mode.compile else 0
        if short > 0:
            x = torch.cat([x, torch.zeros((short,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
                           .contiguous(memory_format=self.mode.torch_format)])
        return x

    # ------------------------------------------------------------------ verbs
    @torch.no_grad()
    def predict_all(self, x: torch.Tensor) -> torch.Tensor:
        """All sites' predictions ``(B, S)`` float32 (spikes), no gradient, no autocast."""
        xin = self._input(x)
        if self.split:
            out = self.model.backbone(xin).float() @ self.weight.T + self.bias
        else:
            out = self.model(xin).float()
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"model must return (B, S) site predictions for B images; got shape {tuple(out.shape)} for B={x.shape[0]}")
        return out

    def predict_all_batched(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """:meth:`predict_all` over ``x`` in chunks of ``rows`` images, concatenated ``(N, S)``."""
        return torch.cat([self.predict_all(x[i:i + rows]) for i in range(0, len(x), rows)])

    @torch.no_grad()
    def predict(self, x: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        """``f_{site_k}(x_k)`` per row, ``(B,)`` float32 (spikes)."""
        xin = self._input(x)
        site = site.to(self.device)
        if self.split:
            feats = self.model.backbone(xin).float()
            return (feats * self.weight[site]).sum(1) + self.bias[site]
        return self.model(xin).float().gather(1, site[:, None]).squeeze(1)

    def n_sites(self, probe: torch.Tensor) -> int:
        """Number of sites S the model predicts (one forward on ``probe`` if not known)."""
        if self._n_sites is None:
            self._n_sites = int(self.predict_all(probe[:1]).shape[1])
        return self._n_sites

    def value_and_grad(self, x: torch.Tensor, site: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_k * f_{site_k}(x_k), d/dx of it)``: values ``(B,)`` float32 and float32 gradients
        shaped like ``x``, in the mode's memory format (``x`` is expected in it already)."""
        n = x.shape[0]
        xin = x.to(self.device, torch.float32).contiguous(memory_format=self.mode.torch_format)
        xin = xin.detach().requires_grad_(True)
        site = site.to(self.device)
        sign = sign.to(self.device, torch.float32)
        with torch.enable_grad(), precision_context(self.mode, self.device):
            if self.split:
                feats = self.network(self._padded(xin))[:n]
                w = self.weight[site]
                value = sign * ((feats.detach().float() * w).sum(1) + self.bias[site])
                out, gout = feats, (sign[:, None] * w).to(feats.dtype)
            else:
                pred = self.network(self._padded(xin))
                if pred.dim() != 2 or pred.shape[0] < n:
                    raise ValueError(f"model must return (B, S) site predictions for B images; got shape {tuple(pred.shape)} for B={n}")
                col = pred[:n].gather(1, site[:, None]).squeeze(1)
                value = sign * col.detach().float()
                out, gout = col, sign.to(col.dtype)
        if not out.requires_grad:
            raise ValueError("the model's output does not depend differentiably on the input image "
                             "(no gradient: torch.no_grad, .detach() or non-torch code inside the model?); "
                             "pass a model whose predictions are differentiable with respect to the pixels")
        with precision_context(self.mode, self.device, forward=False):
            (grad,) = torch.autograd.grad(out, xin, grad_outputs=gout, allow_unused=True)
        if grad is None:
            raise ValueError("the model's output does not depend on the input image (its gradient is None); "
                             "pass a model whose predictions are computed from the pixels")
        return value, grad.float().contiguous(memory_format=self.mode.torch_format)
