"""Backend construction from the config: ``make_backend("sim", cfg)``."""
from __future__ import annotations

import dataclasses

from rig.config import Config
from rig.errors import UserError


def build_sim_monkey(cfg: Config):
    """The simulated monkey of ``cfg.sim``; its linearly predictable part uses the
    configured model backbone (``cfg.model``), as the controller's model would see it."""
    from modelfit.backbone import build_backbone
    from sim.monkey import SimParams, SimulatedMonkey

    backbone = build_backbone(cfg.model.backbone, cfg.model.layer, cfg.model.weights or None)
    return SimulatedMonkey(SimParams(**dataclasses.asdict(cfg.sim)), model_features=backbone)


def make_backend(name: str, cfg: Config, start_s: float = 10.0):
    """Return ``(backend, channel_names, attrs for the day file)``.

    ``start_s``: presenter-clock time of the first trial for simulated backends (a
    resumed day passes a time after its last trial so clocks keep increasing).
    """
    if name == "sim":
        from sim.backend import SimBackend

        backend = SimBackend(build_sim_monkey(cfg), refresh_hz=cfg.monitor.refresh_hz, start_s=start_s)
        info = backend.info()
        attrs = {"sim_" + k: v for k, v in info.extra.items() if isinstance(v, (int, float, str, bool))}
        return backend, info.channel_names, attrs
    if name == "presenter":
        try:
            from rig.backends.presenter_backend import make_presenter_backend
        except ImportError as exc:
            raise UserError(f"the presenter backend is not available ({exc})") from None
        return make_presenter_backend(cfg, start_s=start_s)
    raise UserError(f"unknown backend '{name}'; choose 'sim' or 'presenter'")
