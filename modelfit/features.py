"""Batched feature extraction with an on-disk cache.

``FeatureExtractor(backbone).transform(pixels)`` maps uint8 images ``(N, H, W, 3)`` (as
displayed) to float32 features ``(N, D)``. The cache stores one ``.npy`` per image under

    cache_dir / <backbone name>-<weights tag> / <layer> / <precision> / <sha1[:2]> / <sha1>.npy

keyed by (stimulus sha1, backbone weights sha256 — or ``random-init-seed<k>`` —, layer
(``<layer>-grid<k>`` for features pooled on a k x k grid, ``model.pool``), and precision ``fp32`` / ``bf16``, since bf16 features differ from fp32 ones). Files are
written atomically (temp file + rename), so concurrent processes may share a cache.
A ``backbone.txt`` in each backbone folder records the full identity.

bf16 autocast (``bf16=True``) is ~2x faster on CPUs with AVX-512 bf16 but not exact:
``benchmarks/features_bench.py`` measures its error against fp32: on ResNet50/layer4 at
224 px, 4.6e-3 relative L2 error over a batch, worst single feature off by 3.6% of the
mean |feature|. bf16 features are cached apart from fp32 ones; keep bf16 off where
features feed a fitted readout unless that error is acceptable.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from modelfit.files import atomic_path, write_atomic
from modelfit.imageid import sha1_of
from modelfit.progressbars import bar

from .backbone import RANDOM_INIT, Backbone


def images_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1] (= uint8 / 255)."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)


class FeatureExtractor:
    """Features of displayed images under one backbone, cached by stimulus and network.

    Parameters: ``cache_dir`` (None: no cache), ``batch_size`` (images per forward),
    ``channels_last`` (NHWC memory format; moves the backbone's weights in place),
    ``bf16`` (CPU/GPU autocast to bfloat16), ``device``. Its bar follows :mod:`modelfit.progressbars`.
    Counters ``hits`` / ``misses`` count cached / computed images over this object's life.
    """

    def __init__(self, backbone: Backbone, cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 channels_last: bool = True, bf16: bool = False, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 images; got {batch_size}")
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.bf16 = bool(bf16)
        self.hits = 0
        self.misses = 0

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def _cache_folder(self) -> Path | None:
        if self.cache_dir is None:
            return None
        b = self.backbone
        tag = f"{RANDOM_INIT}-seed{b.seed}" if b.random_init else b.weights_sha256
        pool = getattr(b, "pool", "avg")   # global-average features keep their old folder
        folder = self.cache_dir / f"{b.name}-{tag}" / (b.layer if pool == "avg" else f"{b.layer}-{pool}") / self.precision
        folder.mkdir(parents=True, exist_ok=True)
        ident = folder.parent.parent / "backbone.txt"
        if not ident.exists():
            write_atomic(ident, (f"name = {b.name}\nweights_sha256 = {b.weights_sha256}\n"
                                 f"weights_path = {b.weights_path}\nseed = {b.seed}\n"))
        return folder

    def _compute(self, pixels: np.ndarray) -> np.ndarray:
        out = []
        batches = range(0, len(pixels), self.batch_size)
        batch_bar = bar(batches, desc=f"features {self.backbone.name}/{self.backbone.layer}", unit="batch",
                        disable=True if len(batches) < 2 else None, leave=False)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for start in batch_bar:
                x = images_to_tensor(pixels[start:start + self.batch_size]).to(self.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(self.backbone(x).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.backbone.feature_dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def transform(self, pixels: np.ndarray, ids: list[str] | None = None) -> np.ndarray:
        """Features ``(N, D)`` float32 of uint8 images ``(N, H, W, 3)``; ``ids`` = their sha1 (computed if None)."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"pixels must be uint8 of shape (N, H, W, 3) as displayed; got {pixels.dtype} "
                             f"{pixels.shape}")
        n = len(pixels)
        if ids is None:
            ids = [sha1_of(p) for p in pixels] if self.cache_dir is not None else [""] * n
        elif len(ids) != n:
            raise ValueError(f"ids has {len(ids)} entries for {n} images; pass one sha1 per image or None")
        folder = self._cache_folder()
        feats = np.empty((n, self.backbone.feature_dim), np.float32)
        todo = []
        for i, sid in enumerate(ids):
            cached = _read_cached(folder, sid, self.backbone.feature_dim) if folder is not None else None
            if cached is None:
                todo.append(i)
            else:
                feats[i] = cached
        self.hits += n - len(todo)
        self.misses += len(todo)
        if todo:
            # compute each distinct image once, even when it repeats within the call
            first: dict[str, int] = {}
            unique = [i for i in todo if folder is None or first.setdefault(ids[i], i) == i]
            computed = self._compute(pixels[unique])
            for i, f in zip(unique, computed):
                feats[i] = f
                if folder is not None:
                    _write_cached(folder, ids[i], f)
            if folder is not None:
                for i in todo:
                    feats[i] = feats[first[ids[i]]]
        return feats


def _cache_path(folder: Path, sid: str) -> Path:
    return folder / sid[:2] / f"{sid}.npy"


def _read_cached(folder: Path, sid: str, dim: int) -> np.ndarray | None:
    path = _cache_path(folder, sid)
    try:
        arr = np.load(path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError, EOFError):
        return None  # absent or a torn file: recompute (and overwrite)
    return arr if arr.shape == (dim,) and arr.dtype == np.float32 else None


def _write_cached(folder: Path, sid: str, feature: np.ndarray) -> None:
    with atomic_path(_cache_path(folder, sid)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(feature, np.float32), allow_pickle=False)
