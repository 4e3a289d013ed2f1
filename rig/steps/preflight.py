"""Everything about a config that can be checked before a single file is written.

``itloop day run`` and ``day plan`` call :func:`preflight` first, so a bad value (a
duration that is not whole frames at the monitor's refresh, an unknown backbone, a
missing weights file, an unknown backend) is one message and leaves nothing behind that
would block a corrected retry.
"""
from __future__ import annotations

import os
from pathlib import Path

from modelfit.names import BACKBONES, LAYERS
from rig.config import Config, ConfigError, frames_for
from rig.errors import UserError

BACKENDS = ("sim", "presenter", "rig")


def preflight(cfg: Config, backend_name: str | None = None) -> None:
    """Raise ConfigError/UserError naming the first problem; return None if ``cfg`` can run."""
    if backend_name is not None and backend_name not in BACKENDS:
        raise UserError(f"unknown backend '{backend_name}'; choose one of {', '.join(BACKENDS)}")
    hz, tol = cfg.monitor.refresh_hz, cfg.monitor.frame_tolerance
    for key in ("stim_on_ms", "mask_ms"):
        ms = getattr(cfg.rsvp, key)
        if frames_for(ms, hz, tol) is None:
            n = ms * hz / 1000.0
            raise ConfigError(f"config key 'rsvp.{key}' = {ms!r}: expected a whole number of frames at "
                              f"monitor.refresh_hz = {hz:g} Hz ({n:.2f} frames; one frame is {1000.0 / hz:.3f} ms)")
    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(f"config key 'model.backbone' = {cfg.model.backbone!r}: expected one of {sorted(BACKBONES)}")
    if cfg.model.layer not in LAYERS:
        raise ConfigError(f"config key 'model.layer' = {cfg.model.layer!r}: expected one of {list(LAYERS)}")
    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        raise ConfigError(f"config key 'model.weights' = {cfg.model.weights!r}: the file does not exist; set it to a "
                          "local weights file (or \"\" for random weights)")
    check_memory(cfg)
    check_device(cfg.model.device)


def _memory_bytes() -> int:
    """This computer's physical memory, bytes (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(cfg: Config, memory_bytes: int | None = None) -> None:
    """Refuse image sets that cannot fit in this computer's memory: the clean pool
    (``images.n_clean`` x ``images.size_px``^2 x 3 bytes) and a closed-loop day's stimuli."""
    side = cfg.images.size_px
    per_image = side * side * 3
    e = cfg.experiment
    per_day = e.sites_per_day * e.images_per_site * len(e.epsilons) * (2 + cfg.perturb.random_controls_per_image)
    need = max(cfg.images.n_clean, per_day) * per_image
    have = _memory_bytes() if memory_bytes is None else memory_bytes
    if have and need > have:
        which = ("images.n_clean", cfg.images.n_clean) if cfg.images.n_clean >= per_day else ("a day's stimuli", per_day)
        raise ConfigError(f"config keys 'images.size_px' = {side} and {which[0]} = {which[1]}: {which[1]} images of "
                          f"{side} x {side} px need {need / 1e9:.1f} GB in memory, this computer has "
                          f"{have / 1e9:.1f} GB; lower images.size_px or the number of images")


def check_device(device: str) -> None:
    """Refuse a ``model.device`` that torch cannot use here (e.g. "cuda" without a GPU)."""
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"config key 'model.device' = {device!r}: expected \"cpu\", \"cuda\", \"cuda:N\" "
                          "or \"mps\"") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ConfigError(f"config key 'model.device' = {device!r}: torch sees {n} CUDA GPU(s) here; set "
                              "model.device = \"cpu\" or run where the GPU is")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"config key 'model.device' = {device!r}: no Apple GPU here; set model.device = \"cpu\"")
    elif dev.type != "cpu":
        raise ConfigError(f"config key 'model.device' = {device!r}: expected \"cpu\", \"cuda\", \"cuda:N\" or \"mps\"")
