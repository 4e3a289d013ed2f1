"""The presenter's devices from the config: the eye source and the reward driver."""
from __future__ import annotations

from rig.config import Config
from rig.errors import UserError
from rig.presenter.fixation import FixationParams
from rig.presenter.geometry import px_per_deg


def make_eye(cfg: Config):
    """The configured ``EyeSource`` (not opened yet), or None for ``eye.source = "none"``."""
    e = cfg.eye
    cal = None
    if e.calibration_file:
        from rig.sources.calibration import CalibrationMap

        try:
            cal = CalibrationMap.load(e.calibration_file)
        except ValueError as exc:
            raise UserError(f"eye.calibration_file: {exc}") from None
    if e.source == "none":
        return None
    if e.source == "lsl":
        from rig.sources.gaze_lsl import LslEyeSource

        return LslEyeSource(e.lsl_stream, units=e.units, resolve_timeout_s=e.resolve_timeout_s,
                            calibration=cal if e.units == "raw" else None)
    from rig.sources.eyelink import EyeLinkEyeSource

    m = cfg.monitor
    address = None if e.eyelink_address in ("", "dummy") else e.eyelink_address
    return EyeLinkEyeSource(address, screen_px=(m.width_px, m.height_px),
                            px_per_deg=px_per_deg(m.width_cm, m.width_px, m.distance_cm), calibration=cal)


def fixation_params(cfg: Config) -> FixationParams:
    """Window radius and acquire time from [rsvp], the rest from [fixation]."""
    return FixationParams(window_deg=cfg.rsvp.fixation_window_deg, acquire_ms=cfg.rsvp.fixation_acquire_ms,
                          acquire_timeout_ms=cfg.fixation.acquire_timeout_ms, lost_ms=cfg.fixation.lost_ms,
                          check_lead_ms=cfg.fixation.check_lead_ms)


def make_reward(cfg: Config):
    from rig.sources.reward import make_reward as _make

    r = cfg.reward
    return _make(r.driver, port=r.port, mode=r.mode, baud=r.baud)
