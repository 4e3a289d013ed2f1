"""Export itloop day files to NWB (pynwb) that passes nwbinspector's DANDI checks.

Where each part of a day file goes. Every time is in seconds on the *acquisition clock*,
exactly as in the day file; ``session_start_time`` (= ``timestamps_reference_time``) is
the wall time at which that clock read 0 s (the day file's ``acq_clock_zero_utc``,
recorded when the day started)::

    session_description, data_collection  what the data are: live system and version,
                                          replay of which file, or the simulated monkey
    identifier                            the day file's UUID (root attr ``identifier``)
    /general/notes                        the full config TOML
    /general/subject                      [subject]; experimenter, lab, institution,
                                          keywords, protocol from [session]
    /general/devices, extracellular_ephys [array]: Device, one ElectrodeGroup, one
                                          electrode per recording channel
    /units                                one unit per channel (multi-unit threshold
                                          crossings), linked to its electrode; resolution =
                                          1 / the acquisition's sampling rate
    /intervals/trials                     one row per trial attempt
    /intervals/presentations              one row per presentation SHOWN: start = onset,
                                          stop = onset + rsvp.stim_on_ms; ``attempt`` = row of
                                          the day file's /presentations
    /stimulus/templates/stimuli           Images: one RGBImage per stimulus (uint8, H x W x 3)
    /stimulus/presentation/stimulus_shown IndexSeries into those images; timestamps = onsets
    /processing/ecephys/spike_counts      counts per shown presentation x unit in the window
    /processing/misc/stimulus_provenance  kind, parent_index, site, epsilon_*, direction, ...
    /processing/misc/presentations_not_shown  presentations of trials that ended (fixation
                                          broke) before they were shown: no onset, so no
                                          interval; ``trial`` points at the trial row
    /processing/misc/sync_pulses          presenter-clock time of each sync pulse, stamped
                                          with its acquisition-clock time
    /processing/behavior/...              eye position and rewards, when the day file has them

``itloop day export FILE --nwb OUT`` writes one file; ``itloop day export DIR --nwb-dir OUT``
writes every day of an experiment folder under DANDI's names
(``sub-<id>/sub-<id>_ses-day<DDD>_ecephys.nwb``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from rig.store.dayfile import METADATA_SECTIONS, PRESENTATION_COLUMNS, STIMULUS_COLUMNS, TRIAL_COLUMNS
from rig.store.reader import DayData, read_day
from rig.config import RsvpConfig

# config keys a LIVE recording must fill in before it can be exported ("a or b": either)
REQUIRED_FOR_LIVE = ("subject.id", "subject.sex", "subject.age or subject.date_of_birth", "session.experimenter",
                     "session.institution", "array.device", "array.location")

def _with_unit(unit: str, description: str) -> str:
    """A day-file column's description in NWB's words: '... (unit: s)' or '... (bool)'."""
    return f"{description} ({'bool' if unit == 'bool' else f'unit: {unit}'})"


# NWB column descriptions come from the day file's own column tables (rig.store.dayfile);
# only the few that name NWB objects are worded here.
UNIT_DESCRIPTIONS = {c: _with_unit(u, d) for c, (u, d) in STIMULUS_COLUMNS.items()}
UNIT_DESCRIPTIONS.update({
    "kind": STIMULUS_COLUMNS["kind"][1],
    "parent": "row of the clean parent image in stimuli; -1 for clean images (unit: 1)",
    "site": "channel (unit row) the perturbation targets; -1 for none (unit: 1)",
    "sha1": "sha1 (hex) of the image's uint8 bytes, as in the day file",
})
_PRESENTATION = {name: _with_unit(u, d) for name, _, u, d in PRESENTATION_COLUMNS}
PRESENTATION_DESCRIPTIONS = {k: _PRESENTATION[k] for k in (
    "stim_index", "planned_index", "trial_index", "position", "onset_presenter_s", "frames_on", "frames_mask",
    "dropped_frame", "fixation_ok", "fixation", "valid", "invalid_reason")}
PRESENTATION_DESCRIPTIONS["stim_index"] = "row of stimulus_provenance / image in stimulus templates shown (unit: 1)"
NOT_SHOWN_COLUMNS = ("planned_index", "stim_index", "trial_index", "position", "invalid_reason")
_TRIAL = {name: _with_unit(u, d) for name, _, u, d in TRIAL_COLUMNS}
TRIAL_DESCRIPTIONS = {k: _TRIAL[k] for k in ("trial_index", "n_planned", "completed", "fixation_ok", "acquisition_ok",
                                             "end_presenter_s")}


class ExportRefused(ValueError):
    """The day cannot be exported as asked; the message names the keys or the fix."""


# --------------------------------------------------------------------------- data origin
@dataclass(frozen=True)
class DataOrigin:
    """Where a day's spikes came from (see :func:`data_origin`)."""

    simulated: bool               # the spikes (and gaze) come from the simulated monkey
    live: bool                    # recorded from a real acquisition system (not simulated)
    replayed_from: str            # the day file this one re-ran offline ("" if none)
    system: str                   # acquisition system, e.g. "Open Ephys GUI", "itloop simulated monkey"
    version: str                  # its version ("" if unknown)
    backend: str                  # the backend that wrote the day (sim, presenter, replay, ...)
    sample_rate_hz: float | None  # acquisition sampling rate if the day file records it
    text: str                     # one paragraph for session_description / data_collection


_SAMPLE_RATE_KEYS = ("sample_rate_hz", "sampling_rate_hz", "sample_rate", "acq_sample_rate_hz",
                     "spike_source_sample_rate_hz")


def _as_dict(value) -> dict:
    """A JSON-object attr as a dict ({} if it is not one)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            out = json.loads(value)
            return out if isinstance(out, dict) else {}
        except ValueError:
            return {}
    return {}


def _find_rate(*sources: dict) -> float | None:
    for src in sources:
        for k in _SAMPLE_RATE_KEYS:
            v = src.get(k)
            if isinstance(v, (int, float, np.number)) and np.isfinite(v) and v > 0:
                return float(v)
        for stream in src.get("streams", []) if isinstance(src.get("streams"), list) else []:
            r = _find_rate(stream) if isinstance(stream, dict) else None
            if r:
                return r
    return None


def data_origin(day: DayData) -> DataOrigin:
    """Read what the day file says about the origin of its data.

    Looked at, in order (extend here when the day file learns more): a JSON description of
    the spike source (attrs ``acquisition`` or ``spike_source``: system, version, streams,
    sample rate), plain attrs ``spike_source`` / ``acquisition_system`` /
    ``acquisition_version``, the ``sim_*`` attrs the simulated monkey writes, the
    ``backend`` attr, and ``replayed_from`` / ``replayed_from_backend`` of a replay.
    """
    a = day.attrs
    backend = str(a.get("backend", "unknown"))
    replayed = str(a.get("replayed_from", "") or "")
    recorded_by = str(a.get("replayed_from_backend", "") or backend) if replayed else backend
    acq = _as_dict(a.get("acquisition")) or _as_dict(a.get("spike_source_json")) or _as_dict(a.get("spike_source"))
    source = a.get("spike_source", "")
    source = "" if acq or not isinstance(source, (str, bytes)) else (source.decode() if isinstance(source, bytes) else source)
    sim_attrs = {k[4:]: v for k, v in a.items() if k.startswith("sim_")}
    said = " ".join(str(x) for x in (source, acq.get("system", ""), acq.get("name", ""), acq.get("kind", ""),
                                     acq.get("streams", ""), a.get("spike_source", ""))).lower()
    simulated = recorded_by == "sim" or bool(sim_attrs) or "simulat" in said
    system = str(acq.get("system") or acq.get("name") or a.get("acquisition_system") or source or "")
    version = str(acq.get("version") or a.get("acquisition_version") or "")
    if simulated:
        system = system or "itloop simulated monkey"
    rate = _find_rate(acq, a)
    if simulated:
        seed = sim_attrs.get("seed")
        how = (f"SIMULATED data: spikes, fixation and the acquisition clock come from itloop's simulated monkey"
               f"{f' (seed {seed})' if seed is not None else ''}; no animal was recorded")
        if recorded_by == "presenter":
            how += "; the stimuli were shown by the real PsychoPy presenter process"
        how += "."
    elif recorded_by in ("unknown", "none"):
        how = "Spike source not recorded in the day file."
    else:
        streams = acq.get("streams")
        how = (f"Live recording: spikes from {system or 'an acquisition system'}"
               f"{f' {version}' if version else ''} through itloop's '{recorded_by}' backend"
               f"{f', streams {json.dumps(streams)}' if streams else ''}.")
    if replayed:
        ident = a.get("replayed_from_identifier", "")
        how = (f"Offline replay of day file {Path(replayed).name}{f' (identifier {ident})' if ident else ''} through "
               f"itloop's replay backend: the recorded trials served back in order, spike counts recomputed from the "
               f"raw spikes, clock fit redone. The original: {how}")
    return DataOrigin(simulated=simulated, live=not simulated and recorded_by not in ("unknown", "none"),
                      replayed_from=replayed, system=system, version=version, backend=backend,
                      sample_rate_hz=rate, text=how)


# --------------------------------------------------------------------------- metadata
def stored_metadata(path: str | Path, config_text: str | None = None) -> dict[str, dict]:
    """The [subject] / [session] / [array] stored in a day file: its ``/metadata`` group,
    else the sections of its stored config, else the defaults. Raises ConfigError if bad."""
    from rig.config import config_from_dict

    with h5py.File(path, "r") as h5:
        g = h5.get("metadata")
        stored = {k: json.loads(g.attrs[k]) for k in METADATA_SECTIONS if g is not None and k in g.attrs}
        if config_text is None:
            raw = h5["config_toml"][()]
            config_text = raw.decode() if isinstance(raw, bytes) else raw
    if len(stored) < len(METADATA_SECTIONS):
        try:
            parsed = tomllib.loads(config_text or "")
        except tomllib.TOMLDecodeError:
            parsed = {}
        for k in METADATA_SECTIONS:
            stored.setdefault(k, parsed.get(k, {}) if isinstance(parsed.get(k, {}), dict) else {})
    cfg = config_from_dict(stored)  # validates; unknown keys are errors naming the key
    return {k: dataclasses.asdict(getattr(cfg, k)) for k in METADATA_SECTIONS}


def merge_metadata(stored: dict[str, dict], overrides: dict | None) -> dict[str, dict]:
    """``stored`` with the keys of ``overrides`` ({section: {key: value}}) replaced, validated
    like any config (errors name the key, e.g. ``subject.age``)."""
    from rig.config import ConfigError, config_from_dict

    overrides = overrides or {}
    for name in overrides:
        if name not in METADATA_SECTIONS:
            raise ConfigError(f"config section '{name}' cannot be given at export; only {', '.join(METADATA_SECTIONS)}")
    merged = {k: {**stored[k], **overrides.get(k, {})} for k in METADATA_SECTIONS}
    cfg = config_from_dict(merged)
    return {k: dataclasses.asdict(getattr(cfg, k)) for k in METADATA_SECTIONS}


def missing_for_live(meta: dict[str, dict]) -> list[str]:
    """The keys of :data:`REQUIRED_FOR_LIVE` still at their empty defaults."""
    s, e, a = meta["subject"], meta["session"], meta["array"]
    checks = {"subject.id": s["id"], "subject.sex": s["sex"],
              "subject.age or subject.date_of_birth": s["age"] or s["date_of_birth"],
              "session.experimenter": e["experimenter"], "session.institution": e["institution"],
              "array.device": a["device"], "array.location": a["location"]}
    return [k for k in REQUIRED_FOR_LIVE if not checks[k]]


def _simulated_placeholders(meta: dict[str, dict], origin: DataOrigin) -> dict[str, dict]:
    """Fill what a simulated day left empty with placeholders that say so."""
    m = {k: dict(v) for k, v in meta.items()}
    s, a = m["subject"], m["array"]
    given = s["description"]
    s["id"] = s["id"] or "sim-monkey"
    s["sex"] = s["sex"] or "U"
    if not (s["age"] or s["date_of_birth"]):
        s["age"] = "P0D/"  # ISO 8601 open range ("0 days or older"): true of any subject, claims nothing
    s["description"] = ("SIMULATED subject: itloop's simulated monkey, no animal was recorded; sex 'U' and age "
                        "'P0D/' are placeholders unless given" + (f". Configured description: {given}" if given else ""))
    a["device"] = a["device"] or "simulated recording array (itloop sim)"
    a["location"] = a["location"] or "none: simulated sites (itloop's simulated monkey)"
    a["description"] = a["description"] or "simulated channels, one simulated IT site each; no hardware"
    return m


def _spike_resolution_s(origin: DataOrigin, meta: dict[str, dict], spike_times: np.ndarray) -> tuple[float, str]:
    """(resolution s, how it was found): 1 / the acquisition's sampling rate."""
    rate = origin.sample_rate_hz or (meta["array"]["sampling_rate_hz"] or None)
    if rate:
        src = "the day file" if origin.sample_rate_hz else "config array.sampling_rate_hz"
        return 1.0 / rate, f"1 / the acquisition sampling rate ({rate:g} Hz, from {src})"
    if origin.simulated:
        top = float(np.max(np.abs(spike_times))) if len(spike_times) else 1.0
        return float(np.spacing(max(top, 1.0))), ("simulated spike times are drawn in continuous time; resolution = "
                                                  "the float64 spacing at the latest spike time")
    raise ExportRefused("the acquisition's sampling rate is not recorded in the day file: set array.sampling_rate_hz "
                        "(Hz; e.g. 30000) in a --metadata file to give the spike times' resolution")


def _check_positions(xs: list, n_channels: int) -> None:
    if xs and len(xs) != n_channels:
        raise ExportRefused(f"array.electrode_x_um has {len(xs)} positions but the day recorded {n_channels} channels; "
                            "give one position per channel (or none)")


# --------------------------------------------------------------------------- building
def _stim_on_s(config_text: str) -> float:
    """rsvp.stim_on_ms of the day's config, in seconds (the config default if absent)."""
    try:
        ms = tomllib.loads(config_text).get("rsvp", {}).get("stim_on_ms", RsvpConfig.stim_on_ms)
    except tomllib.TOMLDecodeError:
        ms = RsvpConfig.stim_on_ms
    return float(ms) / 1000.0


def _utc(text: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(str(text))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def time_base(attrs: dict) -> tuple[_dt.datetime, str]:
    """(session_start_time, how it was found): the acquisition clock's zero in wall time."""
    if attrs.get("acq_clock_zero_utc"):
        how = attrs.get("acq_clock_zero_source", "recorded when the day started")
        return _utc(attrs["acq_clock_zero_utc"]), f"session_start_time = the acquisition clock's zero ({how})"
    return _utc(attrs["created_utc"]), ("session_start_time = the day file's creation time: this day file predates "
                                        "acq_clock_zero_utc, so the acquisition clock's zero in wall time is unknown")


def nwb_identifier(attrs: dict) -> str:
    """The day file's UUID; for day files written before it existed, a UUID derived from
    the session id, creation time, day and backend (the same on every export)."""
    if attrs.get("identifier"):
        return str(uuid.UUID(str(attrs["identifier"])))
    key = f"itloop:{attrs.get('session_id', '')}:{attrs.get('created_utc', '')}:{attrs.get('day', '')}:{attrs.get('backend', '')}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def build_nwbfile(d: DayData, meta: dict[str, dict], origin: DataOrigin, *, clock_fit: dict | None = None,
                  behavior: dict | None = None):
    """The in-memory :class:`pynwb.NWBFile` for day ``d`` with metadata ``meta`` (sections
    subject/session/array, placeholders already filled) and origin ``origin``."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb import NWBFile, TimeSeries
    from pynwb.base import ImageReferences, Images
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import IndexSeries, RGBImage
    from pynwb.misc import Units

    a = d.attrs
    version = a.get("software_version", "unknown")
    session_id = str(a.get("session_id", "unknown"))
    win = (float(a.get("window_start_ms", np.nan)), float(a.get("window_end_ms", np.nan)))
    window = f"[onset + {win[0]:g} ms, onset + {win[1]:g} ms)"
    start, start_how = time_base(a)
    s, e, arr = meta["subject"], meta["session"], meta["array"]
    stim_on = _stim_on_s(d.config_text)
    kind = "simulated data" if origin.simulated else ("live data" if origin.live else "data of unrecorded origin")
    fit = "" if not clock_fit else ("; presenter -> acquisition clock fit acq = offset + (1 + drift) * presenter: " +
                                    ", ".join(f"{k}={v:g}" for k, v in clock_fit.items()))
    nwb = NWBFile(
        session_description=(f"itloop closed-loop IT recording, day {d.day} ({kind}; status "
                             f"{a.get('status', '?')}): RSVP of clean and model-designed perturbed images, multi-unit "
                             f"spikes per channel. {origin.text}"),
        identifier=nwb_identifier(a),
        session_start_time=start,
        timestamps_reference_time=start,
        session_id=session_id,
        experiment_description=("Sensitivity of IT sites to small targeted image perturbations (Guo et al. 2022 method): "
                                "each day a readout of the recorded sites is refitted, perturbations are designed with it, "
                                "shown by RSVP and the responses recorded"),
        experimenter=list(e["experimenter"]) or None,
        lab=e["lab"] or None,
        institution=e["institution"] or None,
        keywords=list(e["keywords"]) or None,
        protocol=e["protocol"] or None,
        data_collection=(f"{origin.text} Recorded with itloop {version} (backend '{a.get('backend', '?')}'). All times "
                         f"are seconds on the acquisition clock; {start_how}{fit}. Spike counts per presentation in "
                         f"{window}."),
        notes="itloop configuration (TOML) used for this day:\n" + d.config_text,
        source_script=f"itloop {version} (rig.store.nwb.export_nwb)",
        source_script_file_name="rig/store/nwb.py",
        stimulus_notes=f"{len(d.stimuli)} uint8 RGB images shown by RSVP; stim_on = {stim_on * 1000:g} ms",
    )
    nwb.subject = Subject(subject_id=s["id"], species=s["species"] or None, sex=s["sex"], age=s["age"] or None,
                          date_of_birth=_utc(s["date_of_birth"]) if s["date_of_birth"] else None,
                          description=s["description"] or None)

    # -- array: device, electrode group, electrodes --------------------------------------
    model = (nwb.create_device_model(name=arr["device"], manufacturer=arr["manufacturer"],
                                     description=f"{arr['device']} by {arr['manufacturer']}")
             if arr["manufacturer"] else None)
    device = nwb.create_device(name=arr["device"], model=model, description=arr["description"] or (
        f"recording array '{arr['device']}', {d.n_channels} channels"))
    group = nwb.create_electrode_group(name="array", device=device, location=arr["location"],
                                       description=(f"the recording array, {d.n_channels} channels; rel_x/rel_y = "
                                                    "electrode position on the array in micrometres"))
    xs, ys = arr["electrode_x_um"], arr["electrode_y_um"]
    _check_positions(xs, d.n_channels)
    nwb.add_electrode_column(name="channel_name", description="recording channel name in the day file")
    for c, cname in enumerate(d.channel_names):
        kw = {"rel_x": float(xs[c]), "rel_y": float(ys[c]), "rel_z": 0.0} if xs else {}
        nwb.add_electrode(group=group, location=arr["location"], reference=arr["reference"] or "not recorded",
                          channel_name=cname, **kw)

    # -- trials ----------------------------------------------------------------------
    tr = d.trials
    tcols = [k for k in TRIAL_DESCRIPTIONS if not (tr[k].dtype.kind == "f" and np.isnan(tr[k]).all())]
    left_out = [k for k in TRIAL_DESCRIPTIONS if k not in tcols]
    nwb.trials = TimeIntervals(name="trials", description=(
        "one row per trial attempt (fixation acquired, K RSVP presentations or a fixation break); start/stop on the "
        "acquisition clock, s" + (f"; columns NaN for every trial are left out: {', '.join(left_out)}" if left_out else "")))
    for name in tcols:
        nwb.add_trial_column(name=name, description=TRIAL_DESCRIPTIONS[name])
    for i in range(len(tr["trial_index"])):
        nwb.add_trial(start_time=float(tr["start_acq_s"][i]), stop_time=float(tr["end_acq_s"][i]),
                      **{k: tr[k][i].item() for k in tcols})

    # -- presentations shown ------------------------------------------------------------
    p = d.presentations
    onset = np.asarray(p["onset_acq_s"], float)
    shown = np.isfinite(onset) & np.asarray(p["shown"], bool)
    rows = np.flatnonzero(shown)
    if not len(rows):
        from rig.store.repair import _reason_counts

        why = ", ".join(f"{k} x{n}" for k, n in list(_reason_counts(p).items())[:3]) or "no presentation recorded"
        raise ExportRefused(f"{d.path}: no presentation has an onset on the acquisition clock ({why}), so there is "
                            "nothing to share; `itloop day check` says why")
    pres = TimeIntervals(name="presentations",
                         description=(f"one row per presentation shown; start_time = stimulus onset, stop_time = onset + "
                                      f"rsvp.stim_on_ms ({stim_on * 1000:g} ms); acquisition clock, s. Presentations of "
                                      "trials that ended before them are in processing/misc/presentations_not_shown"))
    pres.add_column(name="attempt", description="row of the day file's /presentations (every attempt, shown or not) (unit: 1)")
    for name, desc in PRESENTATION_DESCRIPTIONS.items():
        pres.add_column(name=name, description=desc)
    for i in rows:
        pres.add_interval(start_time=float(onset[i]), stop_time=float(onset[i] + stim_on), attempt=int(i),
                          **{k: p[k][i].item() for k in PRESENTATION_DESCRIPTIONS})
    nwb.add_time_intervals(pres)

    # -- raw spikes as units, linked to electrodes -------------------------------------------
    times, chans = np.asarray(d.spike_times_s, float), np.asarray(d.spike_channels)
    resolution, res_how = _spike_resolution_s(origin, meta, times)
    nwb.units = Units(name="units", resolution=resolution, electrode_table=nwb.electrodes,
                      description=("one unit per recording channel (multi-unit threshold crossings); spike_times in s, "
                                   f"acquisition clock; resolution: {res_how}"))
    nwb.add_unit_column(name="channel_name", description="recording channel this unit's spikes came from")
    nwb.add_unit_column(name="channel_index", description="channel index in the day file (unit: 1)")
    for c, cname in enumerate(d.channel_names):
        nwb.add_unit(spike_times=np.sort(times[chans == c]), electrodes=[c], electrode_group=group,
                     channel_name=cname, channel_index=c)

    # -- stimuli -----------------------------------------------------------------------
    ss = d.stimuli
    imgs = [RGBImage(name=f"stim_{i:06d}", data=ss.pixels[i],
                     description=f"stimulus row {i}, uint8 RGB as displayed (height, width, 3); sha1 {d.stim_ids[i]}")
            for i in range(len(ss))]
    images = Images(name="stimuli", images=imgs, order_of_images=ImageReferences(name="order_of_images", data=imgs),
                    description="every stimulus of the day, uint8 RGB (height, width, 3) exactly as displayed; "
                                "model input = pixels / 255; row i = stim_index i")
    nwb.add_stimulus_template(images)
    nwb.add_stimulus(IndexSeries(
        name="stimulus_shown", data=np.asarray(p["stim_index"][rows], np.uint32), indexed_images=images, unit="N/A",
        timestamps=onset[rows],
        description="index into stimulus templates 'stimuli' of each image shown; timestamps = onset (acquisition clock, s)"))

    # -- counts (ecephys) ---------------------------------------------------------------
    ecephys = nwb.create_processing_module(name="ecephys", description=f"itloop {version}: spike counts per presentation")
    counts = np.asarray(d.counts, np.float32).reshape(len(onset), d.n_channels)[rows]
    ecephys.add(DynamicTable(
        name="spike_counts",
        description=(f"spikes per shown presentation x unit in the window {window}; unit: spikes; row i = row i of "
                     f"intervals/presentations; columns of 'counts' = rows of units (channels)"),
        columns=[
            DynamicTableRegion(name="presentation", data=np.arange(len(rows)), table=pres,
                               description="row of intervals/presentations counted"),
            VectorData(name="counts", data=counts,
                       description=f"spike count (unit: spikes) in {window}, shape (presentations, units); units in "
                                   f"order {', '.join(d.channel_names)}"),
        ]))

    # -- misc: provenance, presentations not shown, sync ------------------------------------------
    misc = nwb.create_processing_module(name="misc", description=f"itloop {version}: stimulus provenance, "
                                                                 "presentations not shown, clock sync pulses")
    cols, dropped = [], []
    for c in type(ss).COLUMNS:  # 'parent' would shadow an hdmf attribute: the column is 'parent_index'
        data = [str(x) for x in ss.kind] if c == "kind" else np.asarray(getattr(ss, c))
        if c != "kind" and data.dtype.kind == "f" and len(data) and np.isnan(data).all():
            dropped.append(c)
            continue
        desc = UNIT_DESCRIPTIONS[c]
        if c == "epsilon_index":  # the planned grid it points into (the day file's /stimuli attribute 'epsilons')
            desc += f"; planned grid epsilons (L2 norm, pixels in [0,1]) = {[float(e) for e in ss.epsilons]}"
        cols.append(VectorData(name="parent_index" if c == "parent" else c, description=desc, data=data))
    cols.append(VectorData(name="sha1", description=UNIT_DESCRIPTIONS["sha1"], data=list(d.stim_ids)))
    misc.add(DynamicTable(name="stimulus_provenance", columns=cols,
                          description="provenance of each stimulus; row i describes image stim_{i:06d}" +
                          (f"; columns NaN for every stimulus are left out: {', '.join(dropped)}" if dropped else "")))
    not_shown = np.flatnonzero(~shown)
    if len(not_shown):
        trial_row = {int(t): i for i, t in enumerate(tr["trial_index"])}
        misc.add(DynamicTable(
            name="presentations_not_shown",
            description=("presentations without an onset on the acquisition clock: planned in a trial that ended (fixation "
                         "broke) before they were shown, or shown before the presenter and acquisition clocks were "
                         "aligned (invalid_reason says which); 'trial' gives the trial's interval; their planned slots "
                         "went back into the queue"),
            columns=[VectorData(name="attempt", data=not_shown.astype(np.int64),
                                description="row of the day file's /presentations (unit: 1)"),
                     *[VectorData(name=k, data=np.asarray(p[k][not_shown]), description=PRESENTATION_DESCRIPTIONS[k])
                       for k in NOT_SHOWN_COLUMNS],
                     DynamicTableRegion(name="trial", table=nwb.trials, description="row of intervals/trials",
                                        data=np.array([trial_row[int(t)] for t in p["trial_index"][not_shown]]))]))
    misc.add(TimeSeries(
        name="sync_pulses", data=np.asarray(d.sync_presenter_s, float), unit="s",
        **_time_kwargs(np.asarray(d.sync_acq_s, float)),
        description=("sync pulses (stimulus onsets): data = pulse time stamped by the presenter (presenter clock, s); "
                     "timestamps = the same pulse on the acquisition clock (s)" + fit)))

    if behavior:
        _add_behavior(nwb, behavior)
    return nwb


def _time_kwargs(t: np.ndarray) -> dict:
    """TimeSeries time arguments: ``starting_time`` + ``rate`` when the times are regular
    (to 1 ns, nwbinspector 0.7.2's check_regular_timestamps criterion), else ``timestamps``."""
    t = np.asarray(t, float)
    if len(t) > 2:
        step = np.unique(np.diff(t).round(9))
        if len(step) == 1 and step[0] > 0:
            return {"starting_time": float(t[0]), "rate": float((len(t) - 1) / (t[-1] - t[0]))}
    return {"timestamps": t}


# --------------------------------------------------------------------------- behavior
_TIME_NAMES = ("t_acq_s", "times_acq_s", "acq_s", "times_s", "t_s", "time_s")


def _read_group(h5: h5py.File, names: tuple[str, ...]) -> tuple[str, dict[str, tuple[np.ndarray, dict]]] | None:
    for n in names:
        if n in h5 and isinstance(h5[n], h5py.Group):
            g = h5[n]
            return n, {k: (g[k][:], dict(g[k].attrs)) for k in g if isinstance(g[k], h5py.Dataset) and g[k].ndim >= 1}
    return None


def read_behavior(h5: h5py.File) -> dict:
    """Eye position and rewards, if the day file has them (groups ``eye``/``gaze`` and
    ``rewards``/``reward``, each with a time dataset in seconds and columns with ``unit``
    and ``description`` attrs); {} if it has neither."""
    out = {}
    for key, names in (("eye", ("eye", "gaze")), ("rewards", ("rewards", "reward"))):
        found = _read_group(h5, names)
        if not found:
            continue
        name, ds = found
        tname = next((t for t in _TIME_NAMES if t in ds), None)
        if tname is None or not len(ds[tname][0]):
            continue
        out[key] = {"group": name, "time": tname, "datasets": ds}
    return out


def _desc(attrs: dict, fallback: str) -> str:
    v = attrs.get("description", fallback)
    return v.decode() if isinstance(v, bytes) else str(v)


def _add_behavior(nwb, behavior: dict) -> None:
    """Eye position (SpatialSeries in EyeTracking, pupil in PupilTracking) and rewards
    (TimeSeries) under processing/behavior."""
    from pynwb import TimeSeries
    from pynwb.behavior import EyeTracking, PupilTracking, SpatialSeries

    mod = nwb.create_processing_module(name="behavior", description="eye position and rewards recorded by itloop")
    def finite(b: dict) -> tuple[dict, np.ndarray]:
        """The group's columns at the samples whose time is known (NaN: the clock could not be aligned then)."""
        t = b["datasets"][b["time"]][0].astype(float)
        ok = np.isfinite(t)
        return {k: (v[ok] if len(v) == len(t) else v, a) for k, (v, a) in b["datasets"].items()}, t[ok]

    if "eye" in behavior:
        b = behavior["eye"]
        ds, t = finite(b)
        clock = _desc(ds[b["time"]][1], "seconds")
        if "x_deg" in ds and "y_deg" in ds:
            xy = np.column_stack([ds["x_deg"][0], ds["y_deg"][0]]).astype(float)
            mod.add(EyeTracking(spatial_series=SpatialSeries(
                name="eye_position", data=xy, unit="degrees", **_time_kwargs(t),
                reference_frame="screen centre = (0, 0); x right, y up; degrees of visual angle",
                description=f"gaze position (x, y), degrees of visual angle; timestamps: {clock}")))
        if "pupil" in ds and np.isfinite(ds["pupil"][0]).any():
            mod.add(PupilTracking(time_series=TimeSeries(
                name="pupil", data=ds["pupil"][0].astype(float), **_time_kwargs(t),
                unit=str(ds["pupil"][1].get("unit", "n.a.")),
                description=_desc(ds["pupil"][1], "pupil size in the tracker's units"))))
    if "rewards" in behavior:
        b = behavior["rewards"]
        ds, t = finite(b)
        col = next((k for k in ("duration_ms", "amount_ml", "volume_ul", "amount") if k in ds), None)
        data, attrs = (ds[col][0].astype(float), ds[col][1]) if col else (np.ones(len(t)), {"unit": "reward"})
        unit = attrs.get("unit", "n.a.")
        mod.add(TimeSeries(name="rewards", data=data, **_time_kwargs(t), unit=unit.decode() if isinstance(unit, bytes) else str(unit),
                           description=(f"rewards given: {col or 'one per reward'}; "
                                        f"{_desc(attrs, '')}; timestamps: {_desc(ds[b['time']][1], 'seconds')}")))


# --------------------------------------------------------------------------- export
@dataclass
class ExportJob:
    """One day's export, checked and ready to write."""

    day_path: Path
    out_path: Path
    day: DayData
    meta: dict
    origin: DataOrigin
    clock_fit: dict
    behavior: dict


def dandi_relpath(subject_id: str, day: int, replay: bool = False) -> Path:
    """DANDI's name for a day: ``sub-<id>/sub-<id>_ses-day<DDD>_ecephys.nwb``."""
    ses = f"day{day:03d}" + ("-replay" if replay else "")
    return Path(f"sub-{subject_id}") / f"sub-{subject_id}_ses-{ses}_ecephys.nwb"


def prepare_export(day_path: str | Path, out_path: str | Path | None = None, *, overrides: dict | None = None,
                   out_dir: str | Path | None = None) -> ExportJob:
    """Read and check one day for export (nothing is written).

    ``overrides``: {section: {key: value}} replacing the stored [subject]/[session]/[array]
    keys. ``out_dir``: write under DANDI's name there instead of ``out_path``.
    Raises :class:`ExportRefused` (a live recording missing required metadata, names the
    keys), ConfigError (a bad metadata value, names the key) or DayFileError.
    """
    day_path = Path(day_path)
    d = read_day(day_path)
    if not len(d.trials["trial_index"]):
        raise ExportRefused(f"day file {day_path} has no recorded trials; there is nothing to export (is it a plan file?)")
    meta = merge_metadata(stored_metadata(day_path, d.config_text), overrides)
    origin = data_origin(d)
    if not origin.simulated:
        missing = missing_for_live(meta)
        if missing:
            raise ExportRefused(
                f"{day_path.name} is a live recording and its NWB needs metadata that is still unset: "
                f"{', '.join(missing)}; set them in the experiment's config for future days, and give them for this "
                "day with --metadata FILE.toml ([subject]/[session]/[array] tables)")
    else:
        meta = _simulated_placeholders(meta, origin)
    _check_positions(meta["array"]["electrode_x_um"], d.n_channels)
    _spike_resolution_s(origin, meta, d.spike_times_s)  # refuses now, before anything is written
    with h5py.File(day_path, "r") as h5:  # read-only; DayData does not carry the clock fit or behavior
        clock_fit = {k: float(v) for k, v in h5["sync"].attrs.items()
                     if k.startswith("fit_") and np.ndim(v) == 0 and isinstance(v, (int, float, np.number))}
        behavior = read_behavior(h5)
    if out_dir is not None:
        out = Path(out_dir) / dandi_relpath(meta["subject"]["id"], d.day, replay=bool(origin.replayed_from))
    elif out_path is not None:
        out = Path(out_path)
    else:
        raise ValueError("give out_path or out_dir")
    if out.exists() and out.resolve() == day_path.resolve():
        raise ExportRefused(f"the NWB output {out} is the day file itself; choose another output path")
    return ExportJob(day_path, out, d, meta, origin, clock_fit, behavior)


def write_export(job: ExportJob, overwrite: bool = False) -> Path:
    """Write a prepared export; ``<out stem>.partial.nwb`` first, then renamed, so the
    output is never half-written. Refuses an existing output unless ``overwrite``."""
    from pynwb import NWBHDF5IO

    out = job.out_path
    if out.exists() and not overwrite:
        raise ExportRefused(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it, or choose another output path")
    nwb = build_nwbfile(job.day, job.meta, job.origin, clock_fit=job.clock_fit, behavior=job.behavior)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.nwb")  # pynwb wants the .nwb suffix
    if tmp.exists():
        tmp.unlink()  # a previous export that never finished
    try:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        if overwrite:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # fails rather than replace a file that appeared meanwhile
            tmp.unlink()
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise ExportRefused(f"{out} appeared while exporting; pass overwrite=True (CLI: --overwrite) to replace it") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def export_nwb(day_path: str | Path, out_path: str | Path, *, overrides: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write the day file ``day_path`` (opened read-only) as NWB to ``out_path``; see
    :func:`prepare_export` for ``overrides`` and the errors."""
    return write_export(prepare_export(day_path, out_path, overrides=overrides), overwrite=overwrite)


_DAY_FILE = re.compile(r"day_(\d{3,})\.h5")


def experiment_days(folder: str | Path) -> list[Path]:
    """The recorded day files of an experiment folder (``day_DDD.h5``; plans excluded), by day."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if _DAY_FILE.fullmatch(p.name)), key=lambda p: int(_DAY_FILE.fullmatch(p.name)[1]))


def export_experiment(folder: str | Path, out_dir: str | Path, *, overrides: dict | None = None,
                      overwrite: bool = False) -> list[Path]:
    """Export every recorded day of ``folder`` under DANDI's names in ``out_dir``.

    Every day is checked first (metadata, existing outputs); if one cannot be exported,
    nothing is written and the error names each day and why."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportRefused(f"{folder} is not an experiment folder")
    days = experiment_days(folder)
    if not days:
        raise ExportRefused(f"{folder} holds no day files (day_DDD.h5); record a day first")
    jobs, problems = [], []
    for path in days:
        try:
            job = prepare_export(path, overrides=overrides, out_dir=out_dir)
        except ExportRefused as exc:
            if "no recorded trials" in str(exc):
                continue  # a day that was started but recorded nothing: nothing to share
            problems.append(str(exc))
            continue
        if job.out_path.exists() and not overwrite:
            problems.append(f"{job.out_path} already exists (pass --overwrite to replace it)")
        jobs.append(job)
    if problems:
        raise ExportRefused("nothing was written: " + " | ".join(problems))
    if len({p.out_path for p in jobs}) != len(jobs):
        raise ExportRefused("nothing was written: two days map to the same DANDI file name; check the day files")
    return [write_export(p, overwrite=overwrite) for p in jobs]


def metadata_overrides(path: str | Path | None, subject_id: str | None = None, species: str | None = None) -> dict:
    """{section: {key: value}} from a TOML file of [subject]/[session]/[array] tables and
    the ``--subject`` / ``--species`` shortcuts."""
    from rig.config import parse_toml

    out: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ExportRefused(f"--metadata {p} does not exist; give a TOML file with [subject]/[session]/[array] tables")
        out = parse_toml(p.read_text(encoding="utf-8"), str(p))
    if subject_id is not None:
        out.setdefault("subject", {})["id"] = subject_id
    if species is not None:
        out.setdefault("subject", {})["species"] = species
    return out


# --- issue 11: spike provenance (kept separate from the export above) -------------------
def spike_provenance(attrs) -> str:
    """Where a day's spikes came from, as stored by the backend (``spike_source`` attr)."""
    src = attrs.get("spike_source")
    return str(src) if src else "unknown (written before spike provenance was stored)"
