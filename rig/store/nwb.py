"""Export one itloop day file to NWB (pynwb) for sharing on DANDI.

Where each part of the day file goes (all times in seconds on the *acquisition clock*,
exactly as in the day file; NWB's ``timestamps_reference_time`` is the day file's
``created_utc``, but the acquisition clock's zero is the acquisition system's own)::

    /general/notes, session_description   the full config TOML; itloop + software version
    /general/subject                      subject_id, species
    /intervals/trials                     one row per trial attempt (start/end_acq_s, ...)
    /intervals/presentations              one row per presentation attempted: start_time =
                                          onset (NaN if never shown), stop_time = onset +
                                          rsvp.stim_on_ms; stim_index, valid, frames_on, ...
    /units                                one unit per recording channel: raw spike times
    /stimulus/templates/stimuli           Images: one RGBImage per stimulus (uint8, H x W x 3)
    /stimulus/presentation/stimulus_shown IndexSeries into those images; timestamps = onsets
    /processing/itloop/stimulus_provenance  kind, parent_index, site, epsilon_*, direction, ...
    /processing/itloop/spike_counts       counts per presentation x channel (spikes) in the
                                          analysis window, one row per presentations row
    /processing/itloop/sync_pulses        presenter-clock time of each sync pulse, stamped
                                          with its acquisition-clock time
"""
from __future__ import annotations

import datetime as _dt
import os
import tomllib
from pathlib import Path

import h5py
import numpy as np

from rig.store.reader import DayData, read_day

UNIT_DESCRIPTIONS = {
    "kind": "clean | targeted | random",
    "parent": "row of the clean parent image in stimuli; -1 for clean images (unit: 1)",
    "site": "channel (unit row) the perturbation targets; -1 for none (unit: 1)",
    "epsilon_requested": "perturbation size asked for (unit: L2 norm of pixels in [0,1])",
    "epsilon_shown": "perturbation size displayed after uint8 rounding (unit: L2 norm of pixels in [0,1])",
    "direction": "+1 drive the site up, -1 down, 0 none (unit: 1)",
    "predicted_change": "designing model's predicted change f_site(shown) - f_site(parent); NaN if none (unit: spikes)",
    "budget_passes": "forward+backward passes spent designing the image (unit: passes)",
    "sha1": "sha1 (hex) of the image's uint8 bytes, as in the day file",
}
PRESENTATION_DESCRIPTIONS = {
    "stim_index": "row of stimulus_provenance / image in stimulus templates shown (unit: 1)",
    "planned_index": "slot of the planned schedule this presentation fulfils (unit: 1)",
    "trial_index": "trial attempt it belonged to (unit: 1)",
    "position": "position within the trial, 0-based (unit: 1)",
    "shown": "the image was shown in full (bool)",
    "onset_presenter_s": "stimulus-on flip time on the presenter clock; NaN if not shown (unit: s)",
    "frames_on": "frames the image was on screen (unit: frames)",
    "frames_mask": "frames the grey mask was on screen (unit: frames)",
    "dropped_frame": "a frame was dropped during this presentation (bool)",
    "fixation_ok": "fixation held through this presentation (bool)",
    "valid": "shown, fixation held, no dropped frame, acquisition intact (bool)",
}
TRIAL_DESCRIPTIONS = {
    "trial_index": "attempt number within the session (unit: 1)",
    "n_planned": "presentations the trial was to show (unit: presentations)",
    "completed": "presentations shown in full with fixation held (unit: presentations)",
    "fixation_ok": "False if fixation broke during the trial (bool)",
    "acquisition_ok": "False if the acquisition stream had a gap (bool)",
    "end_presenter_s": "trial end on the presenter clock (unit: s)",
}
CLOCK_NOTE = "acquisition clock, seconds"


def _stim_on_s(config_text: str) -> float:
    """rsvp.stim_on_ms of the day's config, in seconds (the config default if absent)."""
    from rig.config import RsvpConfig

    try:
        ms = tomllib.loads(config_text).get("rsvp", {}).get("stim_on_ms", RsvpConfig.stim_on_ms)
    except tomllib.TOMLDecodeError:
        ms = RsvpConfig.stim_on_ms
    return float(ms) / 1000.0


def _start_time(created_utc: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(str(created_utc))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def build_nwbfile(d: DayData, *, subject_id: str = "unknown", species: str = "Macaca mulatta",
                  clock_fit: dict | None = None):
    """The in-memory :class:`pynwb.NWBFile` for a day read with :func:`read_day`.

    ``clock_fit``: the day file's ``/sync`` attributes (fit_offset_s, fit_drift, ...), if any.
    """
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb import NWBFile, ProcessingModule, TimeSeries
    from pynwb.base import ImageReferences, Images
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import IndexSeries, RGBImage
    from pynwb.misc import Units

    a = d.attrs
    version = a.get("software_version", "unknown")
    session_id = str(a.get("session_id", "unknown"))
    win = (float(a.get("window_start_ms", np.nan)), float(a.get("window_end_ms", np.nan)))
    nwb = NWBFile(
        session_description=(f"itloop closed-loop IT recording, day {d.day}, recorded with itloop "
                             f"{version} (backend {a.get('backend', '?')}, status {a.get('status', '?')}). "
                             f"All times are on the acquisition clock, in seconds. "
                             f"Spikes: {spike_provenance(a)}"),  # issue 11: spike provenance
        identifier=f"itloop-{session_id}-day{d.day:03d}-{a.get('created_utc', '')}",
        session_start_time=_start_time(a["created_utc"]),
        session_id=session_id,
        experiment_description="RSVP of model-designed targeted perturbations; per-site sensitivity of IT responses",
        notes="itloop configuration (TOML) used for this day:\n" + d.config_text,
        source_script=f"itloop {version} (rig.store.nwb.export_nwb)",
        source_script_file_name="rig/nwb.py",
        stimulus_notes=f"{len(d.stimuli)} uint8 RGB images shown by RSVP; stim_on = {_stim_on_s(d.config_text) * 1000:g} ms",
    )
    nwb.subject = Subject(subject_id=subject_id, species=species)

    # -- trials ----------------------------------------------------------------------
    for name, desc in TRIAL_DESCRIPTIONS.items():
        nwb.add_trial_column(name=name, description=desc)
    tr = d.trials
    for i in range(len(tr["trial_index"])):
        nwb.add_trial(start_time=float(tr["start_acq_s"][i]), stop_time=float(tr["end_acq_s"][i]),
                      **{k: tr[k][i].item() for k in TRIAL_DESCRIPTIONS})

    # -- presentations ---------------------------------------------------------------
    p = d.presentations
    onset = np.asarray(p["onset_acq_s"], float)
    pres = TimeIntervals(name="presentations",
                         description=("one row per presentation attempted; start_time = stimulus onset, stop_time = "
                                      "onset + rsvp.stim_on_ms (acquisition clock, s; NaN if never shown)"))
    for name, desc in PRESENTATION_DESCRIPTIONS.items():
        pres.add_column(name=name, description=desc)
    stop = onset + _stim_on_s(d.config_text)
    for i in range(len(onset)):
        pres.add_interval(start_time=float(onset[i]), stop_time=float(stop[i]),
                          **{k: p[k][i].item() for k in PRESENTATION_DESCRIPTIONS})
    nwb.add_time_intervals(pres)

    # -- raw spikes as units -----------------------------------------------------------
    nwb.units = Units(name="units", description="one unit per recording channel (multi-unit threshold crossings); "
                                                "spike_times in s, acquisition clock")
    nwb.add_unit_column(name="channel_name", description="recording channel this unit's spikes came from")
    nwb.add_unit_column(name="channel_index", description="channel index in the day file (unit: 1)")
    times, chans = np.asarray(d.spike_times_s, float), np.asarray(d.spike_channels)
    for c, cname in enumerate(d.channel_names):
        nwb.add_unit(spike_times=np.sort(times[chans == c]), channel_name=cname, channel_index=c)

    # -- stimuli -----------------------------------------------------------------------
    ss = d.stimuli
    imgs = [RGBImage(name=f"stim_{i:06d}", data=ss.pixels[i],
                     description=f"stimulus row {i}, uint8 RGB as displayed (height, width, 3); sha1 {d.stim_ids[i]}")
            for i in range(len(ss))]
    images = Images(name="stimuli", images=imgs, order_of_images=ImageReferences(name="order_of_images", data=imgs),
                    description="every stimulus of the day, uint8 RGB (height, width, 3) exactly as displayed; "
                                "model input = pixels / 255; row i = stim_index i")
    nwb.add_stimulus_template(images)
    shown = np.isfinite(onset)
    nwb.add_stimulus(IndexSeries(
        name="stimulus_shown", data=np.asarray(p["stim_index"][shown], np.uint32), indexed_images=images, unit="N/A",
        timestamps=onset[shown],
        description="index into stimulus templates 'stimuli' of each image shown; timestamps = onset (acquisition clock, s)"))

    mod = ProcessingModule(name="itloop", description=f"itloop {version}: stimulus provenance, spike counts, clock sync")
    nwb.add_processing_module(mod)
    # 'parent' would shadow an hdmf container attribute: the column is named 'parent_index'
    cols = [VectorData(name="parent_index" if c == "parent" else c, description=UNIT_DESCRIPTIONS[c],
                       data=[str(x) for x in ss.kind] if c == "kind" else np.asarray(getattr(ss, c)))
            for c in type(ss).COLUMNS]
    cols.append(VectorData(name="sha1", description=UNIT_DESCRIPTIONS["sha1"], data=list(d.stim_ids)))
    mod.add(DynamicTable(name="stimulus_provenance", columns=cols,
                         description="provenance of each stimulus; row i describes image stim_{i:06d}"))

    # -- spike counts -----------------------------------------------------------------
    n_pres = len(onset)
    counts = np.asarray(d.counts, np.float32).reshape(n_pres, len(d.channel_names))
    window = f"[onset + {win[0]:g} ms, onset + {win[1]:g} ms)"
    mod.add(DynamicTable(
        name="spike_counts",
        description=(f"spikes per presentation x channel in the window {window}; unit: spikes; NaN if not shown; "
                     f"row i = row i of intervals/presentations; columns of 'counts' = units rows (channels)"),
        columns=[
            DynamicTableRegion(name="presentation", data=np.arange(n_pres), table=pres,
                               description="row of intervals/presentations counted"),
            VectorData(name="counts", data=counts,
                       description=f"spike count (unit: spikes) in {window}, shape (presentations, channels); channels in "
                                   f"order {', '.join(d.channel_names)}"),
        ]))

    # -- sync ---------------------------------------------------------------------------
    fit = "" if not clock_fit else ("; clock fit acq = offset + (1 + drift) * presenter: " +
                                    ", ".join(f"{k}={v:g}" for k, v in clock_fit.items()))
    mod.add(TimeSeries(
        name="sync_pulses", data=np.asarray(d.sync_presenter_s, float), unit="s",
        timestamps=np.asarray(d.sync_acq_s, float),
        description=("sync pulses (stimulus onsets): data = pulse time stamped by the presenter (presenter clock, s); "
                     "timestamps = the same pulse on the acquisition clock (s)" + fit)))
    return nwb


def export_nwb(day_path: str | Path, out_path: str | Path, *, subject_id: str = "unknown",
               species: str = "Macaca mulatta", overwrite: bool = False) -> Path:
    """Write the day file ``day_path`` (opened read-only) as NWB to ``out_path``.

    Refuses to replace an existing ``out_path`` unless ``overwrite``; writes to
    ``<out stem>.partial.nwb`` first and renames it, so ``out_path`` is never half-written.
    Raises ValueError (existing output) or :class:`rig.store.dayfile.DayFileError` (bad day file).
    """
    from pynwb import NWBHDF5IO

    day_path, out = Path(day_path), Path(out_path)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it, or choose another output path")
    if out.resolve() == day_path.resolve():
        raise ValueError(f"the NWB output {out} is the day file itself; choose another output path")
    d = read_day(day_path)
    if not len(d.trials["trial_index"]):
        raise ValueError(f"day file {day_path} has no recorded trials; there is nothing to export (is it a plan file?)")
    with h5py.File(day_path, "r") as h5:  # read-only; DayData does not carry the clock fit
        clock_fit = {k: float(v) for k, v in h5["sync"].attrs.items() if k.startswith("fit_")}
    nwb = build_nwbfile(d, subject_id=subject_id, species=species, clock_fit=clock_fit)
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
        raise ValueError(f"{out} appeared while exporting; pass overwrite=True (CLI: --overwrite) to replace it") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# --- issue 11: spike provenance (kept separate from the export above) -------------------
def spike_provenance(attrs) -> str:
    """Where a day's spikes came from, as stored by the backend (``spike_source`` attr)."""
    src = attrs.get("spike_source")
    return str(src) if src else "unknown (written before spike provenance was stored)"
