"""Everything about a config that can be checked before a single file is written.

``itloop day run`` and ``day plan`` call :func:`preflight` first, so a bad value (a
duration that is not whole frames at the monitor's refresh, an unknown backbone, a
missing weights file, an unknown backend) is one message and leaves nothing behind that
would block a corrected retry.
"""
from __future__ import annotations

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
