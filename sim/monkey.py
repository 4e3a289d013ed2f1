"""The simulated monkey: synthetic IT sites with a hidden, saturating ground truth.

Site ``i``'s drive for image ``x`` (pixels in [0,1]) is

    drive_i(x) = sqrt(lf) * lin_i(x) + sqrt(1 - lf) * hid_i(x)
    lin_i(x)   = sqrt(ma) * a_i . z_model(x) + sqrt(1 - ma) * c_i . z_hidden(x)   (renormalised)
    hid_i(x)   = MLP_i(z_hidden(x))

with ``lf = linear_fraction`` and ``ma = model_alignment``. ``z_hidden`` are the
standardised features of a hidden, ImageNet-TRAINED network the controller does not use
(EfficientNet-Lite1 truncated at stage 5, weights shipped offline; sim.hidden.TrainedTrunk)
seen through the "eye": the image resampled to ``input_px`` pixels (so the sites respond to
a perturbation's per-pixel RMS, not its raw L2 norm, at any stimulus size) and blurred by
``smoothing_px`` pixels at that resolution (the sensitivity knob). ``z_model`` are the
standardised features of ``model_features`` -- the controller's own backbone, which only
matters when ``model_alignment > 0``; with the default ``model_alignment = 0`` no part of
the sites is a function of the designing model (today's "aligned" construction is
``model_alignment = 1``, for controlled studies). ``a_i``, ``c_i`` and the MLP are random
from ``seed``. Each part is normalised to zero mean and unit variance over a seeded
reference set of textures (sim.refimages) at the input's size. The rate saturates:

    rate_i(x) = baseline_i + (peak_hz - baseline_i) * sigmoid(drive_gain * drive_i(x) + bias_i)

so it always lies in [baseline_i, peak_hz] (Hz). Per-site baseline (Hz), latency (s) and
bias are drawn from ``seed``. ``true_rates``/``true_rate_module`` are for evaluation only.
The calibration in the paper's units (224 px) is printed by ``itloop calibrate``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from modelfit.features import images_to_tensor
from modelfit.progressbars import bar
from sim import spikes as _spikes
from sim.clocks import ClockMap
from sim.hidden import GaussianBlur, RandomConvNet, RandomMLP, TrainedTrunk, resample
from sim.params import COUNT_WINDOW_S, SimParams
from sim.refimages import reference_images

__all__ = ["SimParams", "SimulatedMonkey", "TrueRateModule"]


FEATURE_SHRINK = 0.5  # feature scales are sqrt(var + 0.5 * mean var) so near-constant features stay small


def _seed_for(seed: int, tag: int) -> int:
    """An independent 32-bit seed for component ``tag`` of the monkey with ``seed``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag]).generate_state(1)[0])


class TrueRateModule(nn.Module):
    """images (B,3,H,W) in [0,1] -> true rates (B, n_channels) in Hz; differentiable.

    Normalisation statistics are computed once per image size (H, W) from the seeded
    reference textures, lazily on the first call at that size.
    """

    baseline_hz: torch.Tensor
    bias: torch.Tensor

    def __init__(self, params: SimParams, model_features: Callable | None, baseline_hz: np.ndarray,
                 bias: np.ndarray, n_reference_images: int = 128) -> None:
        super().__init__()
        self.params = params
        self.n_channels = int(params.n_channels)
        self.n_reference_images = int(n_reference_images)
        self.input_px = int(params.input_px)
        self.blur = GaussianBlur(params.smoothing_px)
        self.w_lin = math.sqrt(params.linear_fraction)
        self.w_hid = math.sqrt(1.0 - params.linear_fraction)
        self.w_model = math.sqrt(params.model_alignment) if self.w_lin > 0 else 0.0
        self.w_hidlin = math.sqrt(1.0 - params.model_alignment) if self.w_lin > 0 else 0.0
        hidden_net = TrainedTrunk() if (self.w_hid > 0 or self.w_hidlin > 0) else None
        self.hidden_net = hidden_net
        self.hidden_mlp = (RandomMLP(hidden_net.feature_dim, max(64, 4 * self.n_channels), self.n_channels,
                                     _seed_for(params.seed, 12)) if hidden_net is not None and self.w_hid > 0 else None)
        self._features_is_module = False
        if self.w_model > 0:
            if model_features is None:
                model_features = RandomConvNet(max(8, params.hidden_width // 2), _seed_for(params.seed, 13))
            if isinstance(model_features, nn.Module):
                self._features_is_module = True
                model_features.eval()  # its parameters are left as they are (it may be shared)
                self.model_features = model_features
            else:
                self._model_features_fn = model_features
        # with model_alignment = 0 the designing model is not even kept: nothing can depend on it
        self.register_buffer("baseline_hz", torch.as_tensor(baseline_hz, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self._stats: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        for own in (self.blur, self.hidden_net, self.hidden_mlp):
            if own is not None:
                own.requires_grad_(False)

    # -- parts -------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        fn = self.model_features if self._features_is_module else self._model_features_fn
        f = fn(x)
        return f.flatten(1) if f.ndim > 2 else f

    def eye(self, x: torch.Tensor) -> torch.Tensor:
        """What the hidden network sees: ``x`` resampled to ``input_px`` and blurred there."""
        return self.blur(resample(x, self.input_px))

    def _raw_parts(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        feats = self._features(x) if self.w_model > 0 else None
        hid = self.hidden_net(self.eye(x)) if self.hidden_net is not None else None
        return feats, hid

    @staticmethod
    def _mean_scale(v: torch.Tensor, shrink: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Column means and scales sqrt(var + shrink * mean var): shrinkage keeps rare features tame."""
        v = v.double()
        var = v.var(dim=0, unbiased=False)
        eps = shrink * float(var.mean()) + 1e-12
        return v.mean(dim=0).float(), torch.sqrt(var + eps).float()

    def _readout(self, tag: int, dim: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_seed_for(self.params.seed, tag) + dim)
        return torch.randn(self.n_channels, dim, generator=gen) / math.sqrt(dim)

    def calibrate(self, size_hw: tuple[int, int], images: torch.Tensor | None = None) -> None:
        """Compute normalisation statistics for inputs of ``size_hw`` (reference textures by default)."""
        h, w = size_hw
        if images is None:
            side = max(h, w)
            ref = reference_images(self.n_reference_images, side, seed=_seed_for(self.params.seed, 14))
            top, left = (side - h) // 2, (side - w) // 2
            images = images_to_tensor(ref[:, top:top + h, left:left + w])
        feats: list[torch.Tensor] = []
        hids: list[torch.Tensor] = []
        with torch.no_grad():
            for chunk in torch.split(images, 32):
                f_part, g_part = self._raw_parts(chunk)
                if f_part is not None:
                    feats.append(f_part)
                if g_part is not None:
                    hids.append(g_part)
        st: dict[str, torch.Tensor] = {}
        lin: torch.Tensor | float = 0.0
        if self.w_model > 0:
            f = torch.cat(feats)
            st["f_mean"], st["f_scale"] = self._mean_scale(f, FEATURE_SHRINK)
            z = (f - st["f_mean"]) / st["f_scale"]
            st["a"] = self._readout(15, z.shape[1])
            st["lm_mean"], st["lm_scale"] = self._mean_scale(z @ st["a"].T)
            lin = lin + self.w_model * (z @ st["a"].T - st["lm_mean"]) / st["lm_scale"]
        if self.hidden_net is not None:
            g = torch.cat(hids)
            st["g_mean"], st["g_scale"] = self._mean_scale(g, FEATURE_SHRINK)
            zg = (g - st["g_mean"]) / st["g_scale"]
            if self.w_hidlin > 0:
                st["c"] = self._readout(16, zg.shape[1])
                st["lh_mean"], st["lh_scale"] = self._mean_scale(zg @ st["c"].T)
                lin = lin + self.w_hidlin * (zg @ st["c"].T - st["lh_mean"]) / st["lh_scale"]
            if self.hidden_mlp is not None:
                st["hid_mean"], st["hid_scale"] = self._mean_scale(self.hidden_mlp(zg))
        if self.w_lin > 0:
            assert isinstance(lin, torch.Tensor)   # w_lin > 0: w_model or w_hidlin is > 0, so a part was added
            st["lin_mean"], st["lin_scale"] = self._mean_scale(lin)
        self._stats[(h, w)] = st

    # -- forward -----------------------------------------------------------------------
    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-variance drive (B, n_channels), before the saturating nonlinearity."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"true rate function expects images (B, 3, H, W) in [0,1]; got shape {tuple(x.shape)}")
        key = (int(x.shape[-2]), int(x.shape[-1]))
        if key not in self._stats:
            self.calibrate(key)
        st = self._stats[key]
        x = x.float()
        f, g = self._raw_parts(x)
        drive = torch.zeros(x.shape[0], self.n_channels, dtype=x.dtype, device=x.device)
        lin = torch.zeros_like(drive)
        if f is not None:
            lin = lin + self.w_model * (((f - st["f_mean"]) / st["f_scale"]) @ st["a"].T - st["lm_mean"]) / st["lm_scale"]
        zg = (g - st["g_mean"]) / st["g_scale"] if g is not None else None
        if zg is not None and self.w_hidlin > 0:
            lin = lin + self.w_hidlin * (zg @ st["c"].T - st["lh_mean"]) / st["lh_scale"]
        if self.w_lin > 0:
            drive = drive + self.w_lin * (lin - st["lin_mean"]) / st["lin_scale"]
        if self.hidden_mlp is not None:
            drive = drive + self.w_hid * (self.hidden_mlp(zg) - st["hid_mean"]) / st["hid_scale"]
        return drive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        sig = torch.sigmoid(p.drive_gain * self.drive(x) + self.bias)
        return self.baseline_hz + (p.peak_hz - self.baseline_hz) * sig


class SimulatedMonkey:
    """Synthetic IT sites: true rates (evaluation only), spikes, fixation breaks, clocks.

    ``model_features``: optional callable / torch module mapping images (B,3,H,W) in [0,1]
    to features (B, D) of the controller's backbone; used only when
    ``params.model_alignment > 0`` (that share of the linear drive is then a readout of it). Attributes (per site, from the
    seed): ``baseline_hz`` (C,) Hz, ``latency_s`` (C,) s, ``bias`` (C,); ``clock`` maps the
    presenter clock to the acquisition clock.
    """

    def __init__(self, params: SimParams, model_features: Callable | None = None,
                 n_reference_images: int = 128) -> None:
        if not isinstance(params, SimParams):
            raise TypeError(f"SimulatedMonkey needs a sim.monkey.SimParams; got {type(params).__name__} "
                            "(build one with SimParams(**dataclasses.asdict(cfg.sim)))")
        params.validate()
        self.params = params
        self.n_channels = int(params.n_channels)
        rng = np.random.default_rng(_seed_for(params.seed, 1))
        lo, hi = params.baseline_hz
        self.baseline_hz = rng.uniform(lo, hi, size=self.n_channels)
        lo_ms, hi_ms = params.latency_ms
        self.latency_s = rng.uniform(lo_ms, hi_ms, size=self.n_channels) / 1000.0
        self.bias = rng.uniform(-2.5, -1.5, size=self.n_channels)
        self.clock = ClockMap(float(params.clock_offset_s), float(params.clock_drift_ppm))
        self._module = TrueRateModule(params, model_features, self.baseline_hz, self.bias, n_reference_images)
        self._cache: dict[str, np.ndarray] = {}
        self._stim_rates: np.ndarray | None = None

    # -- ground truth (evaluation only) ---------------------------------------------------
    def true_rate_module(self) -> TrueRateModule:
        """The differentiable true rate function: images (B,3,H,W) in [0,1] -> (B, C) Hz. Evaluation only."""
        return self._module

    def true_rates(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """True rates (N, n_channels) in Hz of uint8 images (N, H, W, 3); cached by sha1. Evaluation only."""
        import hashlib

        px = np.asarray(pixels)
        if px.dtype != np.uint8 or px.ndim != 4 or px.shape[-1] != 3:
            raise ValueError(f"true_rates expects uint8 pixels of shape (N, H, W, 3); got {px.dtype} {px.shape}")
        keys = [hashlib.sha1(np.ascontiguousarray(p).tobytes() + repr(p.shape).encode()).hexdigest() for p in px]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._cache}.values())
        starts = range(0, len(todo), batch_size)
        for s in bar(starts, desc="sim true rates", unit="batch", disable=True if not todo else None, leave=False):
            idx = todo[s:s + batch_size]
            x = images_to_tensor(px[idx])
            with torch.no_grad():
                r = self._module(x).double().numpy()
            for j, i in enumerate(idx):
                self._cache[keys[i]] = r[j]
        out = np.empty((len(px), self.n_channels))
        for i, k in enumerate(keys):
            out[i] = self._cache[k]
        return out

    def calibrate_on(self, pixels: np.ndarray) -> None:
        """Normalise the drives over ``pixels`` (uint8 (N,H,W,3), N >= 32) instead of the built-in
        reference textures, for inputs of that size. The ground truth then depends on this set:
        pass the same images in every process that must agree (e.g. the day-0 clean set)."""
        px = np.asarray(pixels)
        if px.dtype != np.uint8 or px.ndim != 4 or px.shape[-1] != 3 or len(px) < 32:
            raise ValueError(f"calibrate_on expects >= 32 uint8 images of shape (N, H, W, 3); got {px.dtype} {px.shape}")
        x = images_to_tensor(px)
        self._module.calibrate((px.shape[1], px.shape[2]), x)
        self._cache.clear()
        self._stim_rates = None

    def expected_counts(self, rates: np.ndarray, window_s: tuple[float, float] = COUNT_WINDOW_S,
                        on_s: float = 0.1) -> np.ndarray:
        """Exact expected counts (N, C) in ``[onset + window_s[0], onset + window_s[1])`` for ``rates`` (N, C) Hz."""
        return _spikes.expected_counts(rates, self.baseline_hz, self.latency_s, window_s, on_s)

    # -- spikes for an external presenter -------------------------------------------------
    def set_stimuli(self, pixels: np.ndarray) -> np.ndarray:
        """Register the session's stimuli (uint8 (N,H,W,3)) for :meth:`spikes_for`; returns their rates."""
        self._stim_rates = self.true_rates(pixels)
        return self._stim_rates

    def spikes_for(self, stim_indices, onsets_acq_s, on_s, rng: np.random.Generator,
                   t_start_s: float | None = None, t_stop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Spikes of one trial, acquisition clock: ``(times_s, channels)`` sorted by time.

        ``stim_indices`` (K,) index the set given to :meth:`set_stimuli`; ``onsets_acq_s``
        (K,) are the true onsets (light on screen) on the acquisition clock; ``on_s`` scalar
        or (K,) seconds each image was up. Spikes cover ``[t_start_s, t_stop_s)`` (default:
        first onset - 0.2 s to last onset + on + 0.3 s). One gain per site is drawn per call,
        so call it once per trial.
        """
        if self._stim_rates is None:
            raise ValueError("spikes_for needs the stimuli first: call monkey.set_stimuli(pixels)")
        idx = np.asarray(stim_indices, dtype=np.int64).reshape(-1)
        if np.any((idx < 0) | (idx >= len(self._stim_rates))):
            raise ValueError(f"stim_indices must be in [0, {len(self._stim_rates)}); got {idx.tolist()}")
        onsets = np.asarray(onsets_acq_s, dtype=np.float64).reshape(-1)
        if len(onsets) != len(idx):
            raise ValueError(f"{len(idx)} stim_indices but {len(onsets)} onsets_acq_s")
        on = np.broadcast_to(np.asarray(on_s, dtype=np.float64), idx.shape)
        if t_start_s is None:
            t_start_s = float(onsets[0] - 0.2) if len(onsets) else 0.0
        if t_stop_s is None:
            t_stop_s = float(onsets[-1] + on[-1] + 0.3) if len(onsets) else t_start_s
        gain = _spikes.draw_gains(rng, self.n_channels, self.params.gain_noise_cv)
        return _spikes.generate_spikes(self._stim_rates[idx], self.baseline_hz, self.latency_s, onsets, on,
                                       t_start_s, t_stop_s, rng, gain)

    def fixation_break_time(self, t_start_s: float, t_stop_s: float, rng: np.random.Generator) -> float | None:
        """With probability ``fixation_break_prob``, a break time uniform in [t_start_s, t_stop_s); else None."""
        broke = rng.random() < self.params.fixation_break_prob
        when = rng.uniform(t_start_s, t_stop_s)  # drawn either way: keeps the random stream aligned
        return float(when) if broke else None

    def describe(self) -> dict:
        """Facts about the simulated sites, for the day file (BackendInfo.extra)."""
        return {"baseline_hz": self.baseline_hz.tolist(), "latency_s": self.latency_s.tolist(),
                "bias": self.bias.tolist(), "clock_offset_s": self.clock.offset_s,
                "clock_drift_ppm": self.clock.drift_ppm, "seed": int(self.params.seed),
                "linear_fraction": float(self.params.linear_fraction),
                "model_alignment": float(self.params.model_alignment),
                "input_px": int(self.params.input_px),
                "hidden_network": "efficientnet-lite1 (ImageNet-trained, stage 5)",
                "smoothing_px": float(self.params.smoothing_px)}
