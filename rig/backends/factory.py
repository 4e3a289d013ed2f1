"""Backend construction from the config: ``make_backend("sim", cfg)``."""
from __future__ import annotations

import dataclasses

from rig.config import Config
from rig.errors import UserError


def build_sim_monkey(cfg: Config):
    """The simulated monkey of ``cfg.sim``. Only when ``sim.model_alignment > 0`` does a share
    of its linear drive use the configured model backbone (``cfg.model``); by default the
    designing model is not built here at all, so nothing the sites do depends on it."""
    from sim.monkey import SimParams, SimulatedMonkey

    backbone = None
    if cfg.sim.model_alignment > 0:
        from modelfit.backbone import build_backbone

        backbone = build_backbone(cfg.model.backbone, cfg.model.layer, cfg.model.weights or None)
    return SimulatedMonkey(SimParams(**dataclasses.asdict(cfg.sim)), model_features=backbone)


def _presenter_backend(cfg: Config):
    """The real PsychoPy presenter (a separate ``itloop present`` process connecting to
    ``presenter.endpoint``) with spikes, sync and fixation from the simulated monkey:
    no live acquisition bridge exists yet (Open Ephys / Blackrock are on the roadmap)."""
    from rig.backends.presenter import PresenterBackend, SimSpikeSource
    from rig.link.client import PresenterClient
    from rig.link.protocol import curve_keys

    p = cfg.presenter
    try:
        keys = curve_keys(p.curve_public_key, p.curve_secret_key, p.curve_server_key)
        client = PresenterClient(p.endpoint, heartbeat_s=p.heartbeat_s, dead_after_s=p.dead_after_s,
                                 ack_timeout_s=p.ack_timeout_s, keys=keys)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"waiting for the presenter at {p.endpoint}: start `itloop present --endpoint {p.endpoint}` on the stimulus computer "
          "(spikes come from the simulated monkey: no acquisition bridge yet)", flush=True)
    monkey = build_sim_monkey(cfg)
    backend = PresenterBackend(client, SimSpikeSource(monkey), frame_tolerance=cfg.monitor.frame_tolerance,
                               fixation_window_deg=cfg.rsvp.fixation_window_deg)
    names = [f"sim{c:03d}" for c in range(monkey.n_channels)]
    return backend, names, {"spike_source": "simulated monkey", "presenter_endpoint": p.endpoint}


def make_backend(name: str, cfg: Config, start_s: float = 10.0):
    """Return ``(backend, channel_names, attrs for the day file)``.

    ``"sim"``: the in-process simulated monkey. ``"presenter"``: the real PsychoPy
    presenter process with spikes from the simulated monkey.

    ``start_s``: presenter-clock time of the first trial for simulated backends (a
    resumed day passes a time after its last trial so clocks keep increasing).
    """
    if name == "presenter":
        return _presenter_backend(cfg)
    if name == "sim":
        from sim.backend import SimBackend

        backend = SimBackend(build_sim_monkey(cfg), refresh_hz=cfg.monitor.refresh_hz, start_s=start_s)
        info = backend.info()
        attrs = {"sim_" + k: v for k, v in info.extra.items() if isinstance(v, (int, float, str, bool))}
        return backend, info.channel_names, attrs
    raise UserError(f"unknown backend '{name}'; choose 'sim' or 'presenter'")
