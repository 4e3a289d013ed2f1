"""Backend construction from the config: ``make_backend("sim", cfg)``."""
from __future__ import annotations

import dataclasses
import logging

from rig.backends.presenter import PresenterBackend, SimSpikeSource
from rig.config import Config
from rig.errors import UserError
from rig.link.client import PresenterClient
from rig.link.protocol import curve_keys

log = logging.getLogger(__name__)

# The simulated monkey (sim.monkey, modelfit.backbone) is imported where it is built: it pulls in
# torch and torchvision (seconds per process start), which the live rig's controller never uses.


def build_sim_monkey(cfg: Config):
    """The simulated monkey of ``cfg.sim``. Only when ``sim.model_alignment > 0`` does a share
    of its linear drive use the configured model backbone (``cfg.model``); by default the
    designing model is not built here at all, so nothing the sites do depends on it."""
    from modelfit.backbone import build_backbone
    from sim.monkey import SimParams, SimulatedMonkey

    backbone = None
    if cfg.sim.model_alignment > 0:
        backbone = build_backbone(cfg.model.backbone, cfg.model.layer, cfg.model.weights or None,
                                  pool=cfg.model.pool)
    return SimulatedMonkey(SimParams(**dataclasses.asdict(cfg.sim)), model_features=backbone)


def _calibration(cfg: Config) -> dict | None:
    """The eye's raw -> degrees map for the presenter (``eye.calibration_file``), if the tracker sends raw units."""
    if not (cfg.eye.calibration_file and cfg.eye.units == "raw"):
        return None
    from rig.sources.calibration import CalibrationMap

    try:
        return CalibrationMap.load(cfg.eye.calibration_file).to_dict()
    except ValueError as exc:
        raise UserError(f"eye.calibration_file: {exc}") from None


def _presenter_backend(cfg: Config):
    """The real PsychoPy presenter (a separate ``itloop present`` process connecting to
    ``presenter.endpoint``) with spikes, sync and fixation from the simulated monkey:
    for real spikes use ``--backend rig`` (the presenter + the ``[acquisition]`` spike source)."""
    p = cfg.presenter
    try:
        from rig.link.zap import load_allowed_keys

        keys = curve_keys(p.curve_public_key, p.curve_secret_key, p.curve_server_key)
        client = PresenterClient(p.endpoint, heartbeat_s=p.heartbeat_s, dead_after_s=p.dead_after_s,
                                 ack_timeout_s=p.ack_timeout_s, keys=keys,
                                 allowed_keys=load_allowed_keys(p.curve_authorized_keys) if keys else None, verbose=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    log.info(f"waiting for the presenter at {p.endpoint}: start `itloop present --endpoint {p.endpoint}` on the "
             "stimulus computer (spikes come from the simulated monkey; --backend rig records real ones from [acquisition])")
    monkey = build_sim_monkey(cfg)
    calibration = _calibration(cfg)
    backend = PresenterBackend(client, SimSpikeSource(monkey), frame_tolerance=cfg.monitor.frame_tolerance,
                               fixation_window_deg=cfg.rsvp.fixation_window_deg, reward_ms=cfg.reward.duration_ms,
                               calibration=calibration)
    names = [f"sim{c:03d}" for c in range(monkey.n_channels)]
    backend.configure_extra["image_scaling"] = cfg.display.image_scaling
    return backend, names, {"presenter_endpoint": p.endpoint, "image_scaling": cfg.display.image_scaling}


def make_spike_source(cfg: Config):
    """The ``[acquisition]`` system as a :class:`rig.backend.SpikeSource`."""
    a = cfg.acquisition
    if a.system == "openephys":
        from rig.sources.openephys import OpenEphysSource

        return OpenEphysSource(a.host, a.event_port, a.http_port, a.http_control, a.n_channels,
                               a.electrode_prefix, a.ttl_line, spike_stream=a.spike_stream, ttl_stream=a.ttl_stream)
    if a.system == "lsl":
        from rig.sources.lsl import LslSource

        return LslSource(a.lsl_spike_stream, a.lsl_ttl_stream, a.n_channels, a.ttl_line, a.lsl_resolve_s,
                         a.electrode_prefix)
    raise UserError(f"config key 'acquisition.system' = {a.system!r}: expected 'openephys' or 'lsl'")


def describe_source(desc: dict) -> str:
    """One line describing a live spike source (day file attr ``spike_source``; the origin
    itself is the attr ``origin``, :mod:`rig.store.origin`)."""
    streams = ", ".join(desc.get("streams") or []) or "-"
    return (f"RECORDED by {desc.get('system')} ({desc.get('interface', '')}) at {desc.get('endpoint', '')}; "
            f"streams {streams}; {desc.get('sampling_rate_hz', float('nan')):g} Hz")


def _rig_backend(cfg: Config):
    """The live rig: the PsychoPy presenter + the ``[acquisition]`` spike source."""
    import json

    from rig.backends.rig import RigBackend
    from rig.link.client import PresenterClient
    from rig.link.protocol import curve_keys

    p, a = cfg.presenter, cfg.acquisition
    try:
        keys = curve_keys(p.curve_public_key, p.curve_secret_key, p.curve_server_key)
        client = PresenterClient(p.endpoint, heartbeat_s=p.heartbeat_s, dead_after_s=p.dead_after_s,
                                 ack_timeout_s=p.ack_timeout_s, keys=keys)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    source = make_spike_source(cfg)
    source.open()                   # before any file is written: an absent acquisition system is one line, nothing left behind
    markers = None
    if a.system == "lsl":
        from rig.sources.lsl import LslMarkerOutlet

        markers = LslMarkerOutlet(a.lsl_marker_outlet)
    log.info(f"waiting for the presenter at {p.endpoint} (start `itloop present --endpoint {p.endpoint}` on the stimulus "
             f"computer); spikes from {a.system} at {a.host}")
    backend = RigBackend(client, source, markers=markers, fixation_window_deg=cfg.rsvp.fixation_window_deg,
                         pulse_tolerance_s=a.pulse_tolerance_ms / 1000.0, wait_s=a.wait_ms / 1000.0,
                         max_drift_ppm=a.max_drift_ppm, min_drift_span_s=a.clock_min_drift_span_s,
                         configure_extra={"reward_ms": cfg.reward.duration_ms, "image_scaling": cfg.display.image_scaling,
                                          **({"calibration": cal} if (cal := _calibration(cfg)) else {})})
    desc = source.describe()
    attrs = {"spike_source": describe_source(desc), "spike_source_json": json.dumps(desc, default=str),
             "presenter_endpoint": p.endpoint, "image_scaling": cfg.display.image_scaling}
    return backend, list(source.channel_names), attrs


def make_backend(name: str, cfg: Config, start_s: float = 10.0):
    """Return ``(backend, channel_names, attrs for the day file)``; the day's origin
    (``rig.store.origin.backend_origin``) follows from ``name``.

    ``"sim"``: the in-process simulated monkey. ``"presenter"``: the real PsychoPy
    presenter process with spikes from the simulated monkey.

    ``start_s``: presenter-clock time of the first trial for simulated backends (a
    resumed day passes a time after its last trial so clocks keep increasing).
    """
    if name == "presenter":
        return _presenter_backend(cfg)
    if name == "rig":
        return _rig_backend(cfg)
    if name == "sim":
        from sim.backend import SimBackend

        backend = SimBackend(build_sim_monkey(cfg), refresh_hz=cfg.monitor.refresh_hz, start_s=start_s)
        info = backend.info()
        attrs = {"sim_" + k: v for k, v in info.extra.items() if isinstance(v, (int, float, str, bool))}
        attrs["image_scaling"] = "none (simulated display)"
        return backend, info.channel_names, attrs
    raise UserError(f"unknown backend '{name}'; choose 'sim', 'presenter' or 'rig'")
