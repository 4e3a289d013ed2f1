"""Eye calibration from the controller: ask the presenter to show the targets, fit the map,
validate it on a second pass, print the error per point, save it (JSON) for reuse.

The presenter shows the targets and collects raw gaze (``calibrate`` command,
``rig.presenter.calibration``); the fit is ``rig.sources.calibration``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from rig.config import Config
from rig.errors import UserError
from rig.sources.calibration import CalibrationMap, calibration_targets, fit_calibration, format_validation, validation_errors

log = logging.getLogger(__name__)


def _pass(client, cfg: Config, targets: np.ndarray, target_stream: str, timeout_s: float) -> tuple[list, list, int]:
    """One pass over the targets: (per-target info, raw samples (n, 2) per target, rewards given)."""
    f = cfg.fixation
    msg = client.request_message("calibrate", {"targets_deg": targets.tolist(), "window_deg": f.calibration_window_deg,
                                               "hold_ms": f.calibration_hold_ms, "timeout_ms": f.calibration_timeout_ms,
                                               "settle_ms": f.calibration_hold_ms, "target_stream": target_stream},
                                 timeout_s=timeout_s)
    info = msg.body["result"]["targets"]
    raws = [np.asarray(msg.arrays.get(f"raw_{i}", np.zeros((0, 2))), float).reshape(-1, 2) for i in range(len(info))]
    n_rewards = int(len(np.asarray(msg.arrays.get("reward_ms", np.zeros(0)))))
    return info, raws, n_rewards


def calibrate(client, cfg: Config, *, validate: bool = True, target_stream: str = "itloop-calibration-target",
              say: Callable[[str], None] = log.info) -> CalibrationMap:
    """Run the calibration (and a validation pass) through a connected presenter; returns the map.

    ``error_deg`` of the map is the validation pass's error per target (or the fit's when
    ``validate`` is False). ``say``: where the progress lines go (default: this module's logger).
    Raises ``UserError`` if too few targets were accepted to fit.
    """
    f = cfg.fixation
    targets = calibration_targets(f.calibration_points, f.calibration_spread_deg)
    timeout_s = len(targets) * (f.calibration_timeout_ms / 1000.0 + 2.0) + 30.0
    info, raws, n_rewards = _pass(client, cfg, targets, target_stream, timeout_s)
    ok = [i for i, t in enumerate(info) if t["accepted"] and len(raws[i])]
    say(f"calibration: {len(ok)} of {len(targets)} targets accepted, {n_rewards} rewards given")
    if len(ok) < 3 or (f.calibration_model == "quadratic" and len(ok) < 6):
        raise UserError(f"calibration: only {len(ok)} targets accepted; too few for a {f.calibration_model} map. "
                        "Check the eye tracker's signal and try again (space accepts a target by hand)")
    raw = np.concatenate([raws[i] for i in ok])
    tgt = np.concatenate([np.tile(targets[i], (len(raws[i]), 1)) for i in ok])
    cmap = fit_calibration(raw, tgt, f.calibration_model)
    say("fit (calibration pass):\n" + format_validation(cmap.targets_deg, cmap.error_deg))
    if validate:
        info, raws, _ = _pass(client, cfg, targets, target_stream, timeout_s)
        ok = [i for i, t in enumerate(info) if t["accepted"] and len(raws[i])]
        if ok:
            raw = np.concatenate([raws[i] for i in ok])
            tgt = np.concatenate([np.tile(targets[i], (len(raws[i]), 1)) for i in ok])
            cmap.targets_deg, cmap.error_deg = validation_errors(cmap, raw, tgt)
            say(f"validation ({len(ok)} of {len(targets)} targets):\n" + format_validation(cmap.targets_deg, cmap.error_deg))
    import datetime as _dt

    cmap.created_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return cmap
