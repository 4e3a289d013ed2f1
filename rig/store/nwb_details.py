"""What a day's NWB carries beyond the recording, as structured fields (DANDI details).

:func:`add_day_details` adds, under ``/processing/misc``:

- ``display_geometry``: screen size (px, cm), viewing distance, refresh rate,
  pixels per degree at the centre, image size (px and degrees), image scaling;
- ``data_origin``, machine-readable: ``origin`` ("sim" | "presenter+sim" |
  "live"), ``simulated``, ``replayed`` and ``replayed_from``, ``sites_are`` ("channels" |
  "units"), acquisition system and version;
- ``designing_model_readout``: one row per site the designing model read out (its readout
  weights, intercept, feature scaler, backbone and layer), when the day has a model;
- ``eye_calibration``: one row per coefficient row of the calibration map (raw tracker
  coordinates -> degrees) and the targets it was fitted on, when the day has one.

``display_geometry`` and ``data_origin`` are key-value tables (columns ``field``, ``value`` as
JSON, ``meaning``), so a reader finds e.g. the origin as ``json.loads(value)`` of the row
whose ``field`` is ``"origin"``. Both ``itloop day export`` and the NeuroConv interface call
it, so both files say the same.
"""
from __future__ import annotations

import json

import numpy as np

from rig.store.reader import DayData

ORIGINS = ("sim", "presenter+sim", "live")


def origin_label(d: DayData, simulated: bool) -> str:
    """The day's origin: the root attribute ``origin`` if the day file has one, else
    "presenter+sim" / "sim" / "live" from the backend that recorded it."""
    stored = d.attrs.get("origin")
    if isinstance(stored, bytes):
        stored = stored.decode()
    if stored in ORIGINS:
        return str(stored)
    recorded_by = str(d.attrs.get("replayed_from_backend") or d.attrs.get("backend", ""))
    if simulated:
        return "presenter+sim" if recorded_by == "presenter" else "sim"
    return "live"


def _one_row(name: str, description: str, columns: dict[str, tuple[object, str]]):
    """A key-value table: one row per field, ``value`` as JSON text (``json.loads`` gives the number,
    text or bool back), and what it is (with its unit) in ``description``."""
    from hdmf.common import DynamicTable, VectorData

    return DynamicTable(name=name, description=description + "; one row per field, value as JSON", columns=[
        VectorData(name="field", data=list(columns), description="field name"),
        VectorData(name="value", data=[json.dumps(v) for v, _ in columns.values()],
                   description="the field's value as JSON (a number, text or true/false)"),
        VectorData(name="meaning", data=[d for _, d in columns.values()],
                   description="what the field is, with its unit")])


def display_table(d: DayData):
    """``display_geometry``: the [monitor], [rsvp] and [display] settings the day was shown with."""
    from rig.config import ConfigError, config_from_toml_text
    from rig.presenter.geometry import px_per_deg

    try:
        cfg = config_from_toml_text(d.config_text)
    except ConfigError:
        return None
    m, r = cfg.monitor, cfg.rsvp
    ppd = px_per_deg(m.width_cm, m.width_px, m.distance_cm)
    h = int(d.stimuli.pixels.shape[1]) if len(d.stimuli) else 0
    return _one_row("display_geometry", "the display the stimuli were shown on, as configured for this day "
                    "(config [monitor], [rsvp], [display])", {
        "width_px": (int(m.width_px), "screen width (unit: px)"),
        "height_px": (int(m.height_px), "screen height (unit: px)"),
        "width_cm": (float(m.width_cm), "visible screen width (unit: cm)"),
        "distance_cm": (float(m.distance_cm), "eye-to-screen distance (unit: cm)"),
        "refresh_hz": (float(m.refresh_hz), "configured refresh rate (unit: Hz)"),
        "px_per_deg": (float(ppd), "pixels per degree of visual angle at the screen centre (unit: px/deg)"),
        "image_size_deg": (float(r.image_size_deg), "stimulus size on the screen (unit: degrees of visual angle)"),
        "image_size_px": (h, "stimulus size as stored, before scaling to image_size_deg (unit: px)"),
        "image_scaling": (str(d.attrs.get("image_scaling") or cfg.display.image_scaling),
                          "how stored pixels were scaled to the screen: smooth (interpolated) or integer"),
        "stim_on_ms": (float(r.stim_on_ms), "image on time per presentation (unit: ms)"),
        "mask_ms": (float(r.mask_ms), "grey mask time after each image (unit: ms)")})


def origin_table(d: DayData, origin):
    """``data_origin``: where the data came from, one machine-readable row."""
    a = d.attrs
    replayed = str(a.get("replayed_from", "") or "")
    return _one_row("data_origin", "where this day's data came from (machine-readable); "
                    "origin: sim = itloop's simulated monkey, presenter+sim = real presenter with simulated spikes, "
                    "live = a recorded animal", {
        "origin": (origin_label(d, origin.simulated), "sim | presenter+sim | live"),
        "simulated": (bool(origin.simulated), "True if spikes (and gaze) are simulated: no animal was recorded"),
        "replayed": (bool(replayed), "True if the day was re-run offline from another day file"),
        "replayed_from": (replayed, "the day file replayed ('' if none)"),
        "sites_are": (str(a.get("sites_are", "channels")), "channels (threshold crossings) or units (offline sorting)"),
        "acquisition_system": (origin.system, "acquisition system"),
        "acquisition_version": (origin.version, "its version ('' if unknown)"),
        "backend": (origin.backend, "itloop backend that wrote the day")})


def readout_table(d: DayData):
    """``designing_model_readout``: the readout that designed the day's stimuli, one row per site."""
    m = d.model
    if "coef" not in m or np.ndim(m["coef"]) != 2:
        return None
    from hdmf.common import DynamicTable, VectorData

    coef = np.asarray(m["coef"], float)
    n = coef.shape[0]
    sites = np.asarray(m.get("site_channels", np.arange(n)), np.int64).reshape(-1)
    scalars = ", ".join(f"{k} = {m[k]}" for k in ("backbone", "layer", "weights_sha256", "model_sha256", "model_file")
                        if k in m)
    cols = [VectorData(name="site_channel", data=sites[:n], description="recording channel (site) read out (unit: 1)"),
            VectorData(name="weights", data=coef, description="readout weights on the scaled features (unit: spikes)"),
            VectorData(name="intercept", data=np.asarray(m.get("intercept", np.zeros(n)), float).reshape(-1)[:n],
                       description="readout intercept (unit: spikes)")]
    for k in ("feature_mean", "feature_scale"):
        if k in m:
            cols.append(VectorData(name=k, data=np.tile(np.asarray(m[k], float), (n, 1)),
                                   description=f"feature scaler {k.split('_')[1]} (same on every row), features of "
                                               "the backbone layer"))
    return DynamicTable(name="designing_model_readout", columns=cols, description=(
        "the model that designed this day's perturbations: prediction = intercept + weights . "
        f"(features - feature_mean) / feature_scale; {scalars}"))


def calibration_table(calibration: dict | None):
    """``eye_calibration``: the calibration map (raw tracker -> degrees) the day's gaze was mapped with."""
    if not calibration:
        return None
    from hdmf.common import DynamicTable, VectorData

    coef = np.asarray(calibration.get("coef", []), float).reshape(-1, 2)
    if not len(coef):
        return None
    return DynamicTable(name="eye_calibration", description=(
        f"eye calibration map '{calibration.get('model', '?')}' (raw tracker coordinates -> degrees), made "
        f"{calibration.get('created_utc', '?')}; one row per coefficient (x, y); fit targets and their errors: "
        + json.dumps({"targets_deg": calibration.get("targets_deg", []), "error_deg": calibration.get("error_deg", [])})),
        columns=[VectorData(name="coef_x", data=coef[:, 0], description="coefficient for gaze x (unit: degrees)"),
                 VectorData(name="coef_y", data=coef[:, 1], description="coefficient for gaze y (unit: degrees)")])


def read_calibration(path) -> dict | None:
    """The eye calibration map stored in a day file (``/calibration`` attr ``map_json``), else None."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            g = h5.get("calibration")
            return json.loads(g.attrs["map_json"]) if g is not None and "map_json" in g.attrs else None
    except (OSError, ValueError):
        return None


def add_day_details(nwb, d: DayData, origin, calibration: dict | None = None) -> None:
    """Add the tables above to ``nwb``'s ``misc`` processing module (created if absent);
    ``calibration`` defaults to the one stored in the day file."""
    calibration = calibration if calibration is not None else read_calibration(d.path)
    misc = nwb.processing.get("misc") or nwb.create_processing_module(
        name="misc", description="itloop: stimulus provenance, display, data origin, designing model, eye calibration")
    for table in (display_table(d), origin_table(d, origin), readout_table(d), calibration_table(calibration)):
        if table is not None:
            misc.add(table)
