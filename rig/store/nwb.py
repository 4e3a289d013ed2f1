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
writes every day of an experiment folder under the names ``dandi organize`` gives them
(``sub-<id>/sub-<id>_ses-<session_id>_ecephys+image.nwb``, ``+behavior`` with gaze).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from modelfit.files import atomic_path
from rig.store.dayfile import (
    EYE_COLUMNS,
    METADATA_SECTIONS,
    PRESENTATION_COLUMNS,
    REWARD_COLUMNS,
    STIMULUS_COLUMNS,
    TRIAL_COLUMNS,
)
from rig.store.nwb_details import add_day_details
from rig.store.origin import PRESENTER_SIM
from rig.store.reader import DayData, read_day

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


def _as_dict(value) -> dict:
    """The JSON object of the ``spike_source_json`` attr as a dict ({} if it is not one)."""
    if isinstance(value, bytes):
        value = value.decode()
    try:
        out = json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def data_origin(day: DayData) -> DataOrigin:
    """What the day file says about the origin of its data: the ``origin`` it stores
    (:func:`rig.store.origin.read_origin`, via ``day.origin``) and, for a live recording,
    the spike source's own description (attr ``spike_source_json``: system, streams,
    sampling_rate_hz)."""
    a, origin = day.attrs, day.origin
    backend = str(a.get("backend", "unknown"))
    recorded_by = str(a.get("replayed_from_backend", "") or backend) if origin.replayed else backend
    acq = _as_dict(a.get("spike_source_json"))
    system = str(acq.get("system") or ("itloop simulated monkey" if origin.simulated else ""))
    version = str(acq.get("version") or "")
    rate = acq.get("sampling_rate_hz")
    rate = float(rate) if isinstance(rate, (int, float)) and np.isfinite(rate) and rate > 0 else None
    if origin.simulated:
        seed = a.get("sim_seed")
        how = (f"SIMULATED data: spikes, fixation and the acquisition clock come from itloop's simulated monkey"
               f"{f' (seed {seed})' if seed is not None else ''}; no animal was recorded")
        if origin.kind == PRESENTER_SIM:
            how += "; the stimuli were shown by the real PsychoPy presenter process"
        how += "."
    elif not origin.live:
        how = "Spike source not recorded in the day file."
    else:
        streams = acq.get("streams")
        how = (f"Live recording: spikes from {system or 'an acquisition system'}"
               f"{f' {version}' if version else ''} through itloop's '{recorded_by}' backend"
               f"{f', streams {json.dumps(streams)}' if streams else ''}.")
    if origin.replayed:
        name = Path(str(a.get("replayed_from_file", ""))).name
        how = (f"Offline replay of day file {name + ' ' if name else ''}(identifier {origin.replayed_from}) through "
               f"itloop's replay backend: the recorded trials served back in order, spike counts recomputed from the "
               f"raw spikes, clock fit redone. The original: {how}")
    return DataOrigin(simulated=origin.simulated, live=origin.live, replayed_from=origin.replayed_from, system=system,
                      version=version, backend=backend, sample_rate_hz=rate, text=how)


# --------------------------------------------------------------------------- metadata
def stored_metadata(d: DayData) -> dict[str, dict]:
    """The [subject] / [session] / [array] stored in a day file (its ``/metadata``),
    validated. Raises ConfigError naming the key if one is bad."""
    from rig.config import config_from_dict

    cfg = config_from_dict({k: d.metadata.get(k, {}) for k in METADATA_SECTIONS})  # unknown keys: errors naming the key
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
    """The day file's UUID (root attribute ``identifier``; rig.store.upgrade derives one,
    the same on every read, for files written before it existed)."""
    return str(uuid.UUID(str(attrs["identifier"])))


def build_nwbfile(d: DayData, meta: dict[str, dict], origin: DataOrigin, *, nwbfile=None):
    """The in-memory :class:`pynwb.NWBFile` for day ``d`` with metadata ``meta`` (sections
    subject/session/array, placeholders already filled) and origin ``origin``.

    ``nwbfile``: add the day to this NWBFile instead of a new one (NeuroConv's
    :class:`rig.store.neuroconv_interface.ItloopDayInterface`): its subject is kept if set,
    and electrodes already there (a raw recording's) are linked by channel name."""
    nwb = _nwb_file(d, meta, origin, nwbfile)
    links = _recording_electrodes(nwb, d) if nwb.electrodes is not None else _add_electrodes(nwb, d, meta["array"])
    _add_trials(nwb, d)
    pres, rows = _add_presentations(nwb, d)
    _add_units(nwb, d, meta, origin, links)
    _add_stimuli(nwb, d, rows)
    _add_counts(nwb, d, pres, rows)
    _add_misc(nwb, d, rows)
    _add_behavior(nwb, d)
    add_day_details(nwb, d, origin)   # display geometry, data origin, designing model, eye calibration
    return nwb


def _window_text(d: DayData) -> str:
    return f"[onset + {d.window_ms[0]:g} ms, onset + {d.window_ms[1]:g} ms)"


def _clock_fit_text(d: DayData) -> str:
    fit = {k: float(v) for k, v in d.clock.items() if k.startswith("fit_") and isinstance(v, (int, float))}
    return "" if not fit else ("; presenter -> acquisition clock fit acq = offset + (1 + drift) * presenter: " +
                               ", ".join(f"{k}={v:g}" for k, v in fit.items()))


def _nwb_file(d: DayData, meta: dict[str, dict], origin: DataOrigin, existing=None):
    """The NWBFile with its session-level metadata and subject (``existing``: that file, its
    subject kept if set)."""
    from pynwb import NWBFile
    from pynwb.file import Subject

    a = d.attrs
    version = a.get("software_version", "unknown")
    start, start_how = time_base(a)
    s, e = meta["subject"], meta["session"]
    stim_on = d.config.rsvp.stim_on_ms
    kind = "simulated data" if origin.simulated else ("live data" if origin.live else "data of unrecorded origin")
    nwb = existing if existing is not None else NWBFile(
        session_description=(f"itloop closed-loop IT recording, day {d.day} ({kind}; status "
                             f"{a.get('status', '?')}): RSVP of clean and model-designed perturbed images, multi-unit "
                             f"spikes per channel. {origin.text}"),
        identifier=nwb_identifier(a),
        session_start_time=start,
        timestamps_reference_time=start,
        session_id=nwb_session_id(a),
        experiment_description=("Sensitivity of IT sites to small targeted image perturbations (Guo et al. 2022 method): "
                                "each day a readout of the recorded sites is refitted, perturbations are designed with it, "
                                "shown by RSVP and the responses recorded"),
        experimenter=list(e["experimenter"]) or None,
        lab=e["lab"] or None,
        institution=e["institution"] or None,
        keywords=list(e["keywords"]) or None,
        protocol=e["protocol"] or None,
        data_collection=(f"{origin.text} Recorded with itloop {version} (backend '{a.get('backend', '?')}'). All times "
                         f"are seconds on the acquisition clock; {start_how}{_clock_fit_text(d)}. Spike counts per "
                         f"presentation in {_window_text(d)}."),
        notes="itloop configuration (TOML) used for this day:\n" + d.config_text,
        source_script=f"itloop {version} (rig.store.nwb.export_nwb)",
        source_script_file_name="rig/store/nwb.py",
        stimulus_notes=f"{len(d.stimuli)} uint8 RGB images shown by RSVP; stim_on = {stim_on:g} ms",
    )
    if nwb.subject is None:
        nwb.subject = Subject(subject_id=s["id"], species=s["species"] or None, sex=s["sex"], age=s["age"] or None,
                              date_of_birth=_utc(s["date_of_birth"]) if s["date_of_birth"] else None,
                              description=s["description"] or None)
    return nwb


def _add_electrodes(nwb, d: DayData, arr: dict) -> tuple[list, list[int] | None]:
    """The array: device, one electrode group, one electrode per channel; returns (group per
    channel, electrode row per channel)."""
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
    return [group] * d.n_channels, list(range(d.n_channels))


def _recording_electrodes(nwb, d: DayData) -> tuple[list, list[int] | None]:
    """The rows of electrodes already in ``nwb`` (a raw recording's) named like the day's channels:
    (group per channel, row per channel), or ([], None) if some channel has no electrode of its name."""
    table = nwb.electrodes
    if "channel_name" not in table.colnames:
        return [], None
    names = [str(x) for x in table["channel_name"][:]]
    where = {n: i for i, n in enumerate(names)}
    if not all(c in where for c in d.channel_names):
        return [], None
    erows = [where[c] for c in d.channel_names]
    return [table["group"][r] for r in erows], erows


def _add_trials(nwb, d: DayData) -> None:
    from pynwb.epoch import TimeIntervals

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


def _shown_rows(d: DayData) -> np.ndarray:
    """Rows of /presentations that were shown (and have an onset on the acquisition clock)."""
    onset = np.asarray(d.presentations["onset_acq_s"], float)
    return np.flatnonzero(np.isfinite(onset) & np.asarray(d.presentations["shown"], bool))


def _add_presentations(nwb, d: DayData):
    """intervals/presentations: one row per presentation shown; returns (table, shown rows)."""
    from pynwb.epoch import TimeIntervals

    p = d.presentations
    onset = np.asarray(p["onset_acq_s"], float)
    rows = _shown_rows(d)
    stim_on = d.config.rsvp.stim_on_ms / 1000.0
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
    return pres, rows


def _add_units(nwb, d: DayData, meta: dict, origin: DataOrigin, links: tuple[list, list[int] | None]) -> None:
    """Raw spikes as one unit per channel, linked to its electrode (``links``: group and
    electrode row per channel, or no rows when the file's electrodes have other names)."""
    from pynwb.misc import Units

    times, chans = np.asarray(d.spike_times_s, float), np.asarray(d.spike_channels)
    resolution, res_how = _spike_resolution_s(origin, meta, times)
    groups, erows = links
    nwb.units = Units(name="units", resolution=resolution, electrode_table=nwb.electrodes if erows else None,
                      description=("one unit per recording channel (multi-unit threshold crossings); spike_times in s, "
                                   f"acquisition clock; resolution: {res_how}" + ("" if erows else
                                   "; not linked to electrodes: the file's electrodes have other channel names")))
    nwb.add_unit_column(name="channel_name", description="recording channel this unit's spikes came from")
    nwb.add_unit_column(name="channel_index", description="channel index in the day file (unit: 1)")
    for c, cname in enumerate(d.channel_names):
        link = {"electrodes": [erows[c]], "electrode_group": groups[c]} if erows else {}
        nwb.add_unit(spike_times=np.sort(times[chans == c]), channel_name=cname, channel_index=c, **link)


def _add_stimuli(nwb, d: DayData, rows: np.ndarray) -> None:
    """Every stimulus as an RGBImage template, and the IndexSeries of the ones shown."""
    from pynwb.base import ImageReferences, Images
    from pynwb.image import IndexSeries, RGBImage

    ss = d.stimuli
    imgs = [RGBImage(name=f"stim_{i:06d}", data=ss.pixels[i],
                     description=f"stimulus row {i}, uint8 RGB as displayed (height, width, 3); sha1 {d.stim_ids[i]}")
            for i in range(len(ss))]
    images = Images(name="stimuli", images=imgs, order_of_images=ImageReferences(name="order_of_images", data=imgs),
                    description="every stimulus of the day, uint8 RGB (height, width, 3) exactly as displayed; "
                                "model input = pixels / 255; row i = stim_index i")
    nwb.add_stimulus_template(images)
    nwb.add_stimulus(IndexSeries(
        name="stimulus_shown", data=np.asarray(d.presentations["stim_index"][rows], np.uint32), indexed_images=images,
        unit="N/A", timestamps=np.asarray(d.presentations["onset_acq_s"], float)[rows],
        description="index into stimulus templates 'stimuli' of each image shown; timestamps = onset (acquisition clock, s)"))


def _add_counts(nwb, d: DayData, pres, rows: np.ndarray) -> None:
    """processing/ecephys/spike_counts: counts per shown presentation x unit in the window."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData

    version = d.attrs.get("software_version", "unknown")
    window = _window_text(d)
    ecephys = (nwb.processing.get("ecephys")
               or nwb.create_processing_module(name="ecephys", description=f"itloop {version}: spike counts per presentation"))
    counts = np.asarray(d.counts, np.float32).reshape(len(d.presentations["onset_acq_s"]), d.n_channels)[rows]
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


def _add_misc(nwb, d: DayData, rows: np.ndarray) -> None:
    """processing/misc: stimulus provenance, presentations not shown, sync pulses."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb import TimeSeries

    version = d.attrs.get("software_version", "unknown")
    ss, p, tr = d.stimuli, d.presentations, d.trials
    shown = np.zeros(len(p["onset_acq_s"]), bool)
    shown[rows] = True
    fit = _clock_fit_text(d)
    misc = nwb.create_processing_module(name="misc", description=f"itloop {version}: stimulus provenance, "
                                                                 "presentations not shown, clock sync pulses")
    cols, dropped = [], []
    for c in type(ss).COLUMNS + type(ss).GEOMETRY_COLUMNS:  # 'parent' would shadow an hdmf attribute: the column is 'parent_index'
        values = np.asarray(getattr(ss, c))
        if c != "kind" and values.dtype.kind == "f" and len(values) and np.isnan(values).all():
            dropped.append(c)
            continue
        data = [str(x) for x in ss.kind] if c == "kind" else values
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
def _add_behavior(nwb, d: DayData) -> None:
    """Eye position (SpatialSeries in EyeTracking, pupil in PupilTracking) and rewards
    (TimeSeries) under processing/behavior, from the day's /eye and /rewards tables; times
    on the acquisition clock (samples whose time could not be aligned, NaN, are left out)."""
    from pynwb import TimeSeries
    from pynwb.behavior import EyeTracking, PupilTracking, SpatialSeries

    if not (len(d.eye.get("t_acq_s", ())) or len(d.rewards.get("t_acq_s", ()))):
        return
    mod = (nwb.processing.get("behavior")
           or nwb.create_processing_module(name="behavior", description="eye position and rewards recorded by itloop"))
    units = {name: (unit, desc) for name, _, unit, desc in EYE_COLUMNS + REWARD_COLUMNS}
    eye_t = np.asarray(d.eye["t_acq_s"], float)
    ok = np.isfinite(eye_t)
    clock = units["t_acq_s"][1]
    if ok.any():
        xy = np.column_stack([d.eye["x_deg"][ok], d.eye["y_deg"][ok]]).astype(float)
        mod.add(EyeTracking(spatial_series=SpatialSeries(
            name="eye_position", data=xy, unit="degrees", **_time_kwargs(eye_t[ok]),
            reference_frame="screen centre = (0, 0); x right, y up; degrees of visual angle",
            description=f"gaze position (x, y), degrees of visual angle; timestamps: {clock}")))
        pupil = np.asarray(d.eye["pupil"][ok], float)
        if np.isfinite(pupil).any():
            mod.add(PupilTracking(time_series=TimeSeries(
                name="pupil", data=pupil, **_time_kwargs(eye_t[ok]), unit=units["pupil"][0],
                description=units["pupil"][1])))
    rew_t = np.asarray(d.rewards["t_acq_s"], float)
    ok = np.isfinite(rew_t)
    if ok.any():
        mod.add(TimeSeries(name="rewards", data=np.asarray(d.rewards["duration_ms"][ok], float),
                           **_time_kwargs(rew_t[ok]), unit=units["duration_ms"][0],
                           description=f"rewards given: duration_ms, {units['duration_ms'][1]}; timestamps: {clock}"))


# --------------------------------------------------------------------------- export
@dataclass
class ExportJob:
    """One day's export, checked and ready to write."""

    day_path: Path
    out_path: Path
    day: DayData
    meta: dict
    origin: DataOrigin


def dandi_relpath(subject_id: str, session_id: str, modalities: tuple[str, ...] = ("ecephys", "image")) -> Path:
    """The name ``dandi organize`` gives a day of an experiment (several sessions per subject):
    ``sub-<id>/sub-<id>_ses-<session_id>_<modalities joined by +>.nwb``, values sanitised as
    dandi does (``_``, spaces, ``.`` and the like become ``-``)."""
    sub, ses = _dandi_value(subject_id), _dandi_value(session_id)
    return Path(f"sub-{sub}") / f"sub-{sub}_ses-{ses}_{'+'.join(sorted(modalities))}.nwb"


def _dandi_value(value: str) -> str:
    return re.sub(r"[_*\\/<>:|\"'?%@;,.\s]", "-", str(value))


def nwb_session_id(attrs: dict) -> str:
    """The NWB ``session_id`` (and DANDI ``ses-`` label) of a day: its ``session_id``, plus
    ``-replay`` for a replay and ``-units`` for a day of sorted units (they share the source's)."""
    sid = str(attrs.get("session_id", "unknown"))
    if attrs.get("replayed_from"):
        sid += "-replay"
    if attrs.get("sites_are") == "units":
        sid += "-units"
    return sid


def day_modalities(d: DayData) -> tuple[str, ...]:
    """The modalities ``dandi organize`` reads off a day's NWB: ecephys (electrodes, units),
    image (the stimuli), behavior (eye position, when the day has gaze samples on the acquisition clock)."""
    gaze = np.isfinite(np.asarray(d.eye.get("t_acq_s", ()), float)).any()
    return tuple(sorted({"ecephys", "image"} | ({"behavior"} if gaze else set())))


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
    if not len(_shown_rows(d)):
        from rig.store.repair import _reason_counts

        why = ", ".join(f"{k} x{n}" for k, n in list(_reason_counts(d.presentations).items())[:3]) or "no presentation recorded"
        raise ExportRefused(f"{d.path}: no presentation has an onset on the acquisition clock ({why}), so there is "
                            "nothing to share; `itloop day check` says why")
    meta = merge_metadata(stored_metadata(d), overrides)
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
    if out_dir is not None:
        out = Path(out_dir) / dandi_relpath(meta["subject"]["id"], nwb_session_id(d.attrs), day_modalities(d))
    elif out_path is not None:
        out = Path(out_path)
    else:
        raise ValueError("give out_path or out_dir")
    if out.exists() and out.resolve() == day_path.resolve():
        raise ExportRefused(f"the NWB output {out} is the day file itself; choose another output path")
    return ExportJob(day_path, out, d, meta, origin)


def write_export(job: ExportJob, overwrite: bool = False) -> Path:
    """Write a prepared export beside ``out`` first, then rename it (``modelfit.files.atomic_path``),
    so the output is never half-written. Refuses an existing output unless ``overwrite``, and
    ``overwrite`` replaces only an earlier NWB export (never a day file, plan, journal or model)."""
    from pynwb import NWBHDF5IO

    out = job.out_path
    if out.exists() and not overwrite:
        raise ExportRefused(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it, or choose another output path")
    if out.exists() or out.is_symlink():
        _check_replaceable(out)
    nwb = build_nwbfile(job.day, job.meta, job.origin)
    image = _nwb_image(nwb, NWBHDF5IO)   # built in memory: a full disk is then one OSError of a plain write
    try:   # without overwrite, a file that appeared meanwhile is not replaced
        with atomic_path(out, suffix=".nwb", overwrite=overwrite) as tmp:
            tmp.write_bytes(image)
    except FileExistsError:
        raise ExportRefused(f"{out} appeared while exporting; pass overwrite=True (CLI: --overwrite) to replace it") from None
    return out


def _nwb_image(nwb, io_class) -> bytes:
    """The bytes of the NWB file of ``nwb``, built in memory (HDF5's core driver), so that no
    HDF5 write to a disk can fail half-way (a full disk then crashed h5py at exit)."""
    f = h5py.File(f"itloop-nwb-{uuid.uuid4().hex}.nwb", "w", driver="core", backing_store=False)
    try:
        with io_class(file=f, mode="w") as io:
            io.write(nwb)
            f.flush()
            return f.id.get_file_image()
    finally:
        if f.id.valid:
            f.close()


def _check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces an earlier NWB export only: never a day file, plan, journal or model."""
    if out.is_symlink() or not out.is_file() or out.suffix != ".nwb":
        raise ExportRefused(f"{out} is not an NWB export (a .nwb file); --overwrite replaces only those, never a "
                            "day file, plan, journal or model: choose another output path")
    try:
        with h5py.File(out, "r") as h5:
            software = h5.attrs.get("software")
    except OSError:
        return          # not HDF5 at all: an unfinished export
    if software in ("itloop", b"itloop"):
        raise ExportRefused(f"{out} is an itloop day or plan file, not an NWB export; --overwrite never replaces it: "
                            "choose another output path")


def export_nwb(day_path: str | Path, out_path: str | Path, *, overrides: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write the day file ``day_path`` (opened read-only) as NWB to ``out_path``; see
    :func:`prepare_export` for ``overrides`` and the errors."""
    return write_export(prepare_export(day_path, out_path, overrides=overrides), overwrite=overwrite)


_DAY_FILE = re.compile(r"day_(\d{3,})\.h5")


def experiment_days(folder: str | Path) -> list[Path]:
    """The recorded day files of an experiment folder (``day_DDD.h5``; plans excluded), by day."""
    days = {}
    for p in Path(folder).iterdir():
        m = _DAY_FILE.fullmatch(p.name)
        if m:
            days[p] = int(m[1])
    return sorted(days, key=days.__getitem__)


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

