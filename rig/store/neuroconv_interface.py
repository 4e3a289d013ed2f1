"""A NeuroConv data interface for an itloop day: one NWB file with the raw recording, one time base.

    from neuroconv import ConverterPipe
    from neuroconv.datainterfaces import OpenEphysRecordingInterface
    from rig.store.neuroconv_interface import ItloopDayInterface

    rec = OpenEphysRecordingInterface(folder_path="2026-05-01_10-00-00")
    day = ItloopDayInterface(file_path="exp/day_001.h5")
    ConverterPipe(data_interfaces=[rec, day]).run_conversion(nwbfile_path=day.dandi_name(), metadata=None)

The itloop interface adds what ``itloop day export`` writes (trials, presentations, the
stimuli as images, spike counts, provenance, eye and reward, the designing model's
readout, the eye calibration, display geometry and the data origin: see
:mod:`rig.store.nwb` and :mod:`rig.store.nwb_details`) into the NWBFile NeuroConv builds.
Every itloop time is seconds on the acquisition clock (the acquisition system's sample
counter over its rate), which is the recording's own clock: put the itloop interface
LAST so that ``session_start_time`` is the wall time of that clock's zero
(``acq_clock_zero_utc``), and a recording whose first sample is sample number N starts
at N / rate s (Open Ephys: neo's ``t_start``; otherwise
``rec.set_aligned_starting_time(N / rate)``). The threshold-crossing units link to the
recording's electrodes where the channel names match.

Imported only by this path (``pip install itloop[dandi]``); the core install never
imports NeuroConv.
"""
from __future__ import annotations

from pathlib import Path

from neuroconv.basedatainterface import BaseDataInterface
from neuroconv.utils import DeepDict
from pydantic import FilePath

from rig.store.nwb import (
    ExportJob,
    build_nwbfile,
    dandi_relpath,
    day_modalities,
    metadata_overrides,
    prepare_export,
)

# NWBFile fields the itloop export fills in that NeuroConv's metadata schema accepts
NWBFILE_FIELDS = ("session_description", "session_id", "experiment_description", "experimenter", "lab",
                  "institution", "keywords", "protocol", "data_collection", "notes", "stimulus_notes")
SUBJECT_FIELDS = ("subject_id", "species", "sex", "age", "date_of_birth", "description")


class ItloopDayInterface(BaseDataInterface):
    """An itloop day file (HDF5) as a NeuroConv data interface."""

    display_name = "itloop day"
    keywords = ("itloop", "closed loop", "RSVP", "IT cortex", "adversarial perturbations")
    associated_suffixes = (".h5",)
    info = "Interface for itloop day files: trials, RSVP presentations, stimuli, eye, rewards, designing model."

    def __init__(self, file_path: FilePath, metadata_path: FilePath | None = None, verbose: bool = False):
        """``file_path``: the day file (only read). ``metadata_path``: a TOML file with
        [subject]/[session]/[array] keys replacing those stored in the day (as
        ``itloop day export --metadata``)."""
        super().__init__(file_path=file_path, metadata_path=metadata_path, verbose=verbose)
        path = Path(file_path)
        self._job: ExportJob = prepare_export(path, path.with_suffix(".neuroconv.nwb"),
                                              overrides=metadata_overrides(metadata_path))
        self._fields: dict | None = None

    def _nwbfile_fields(self) -> dict:
        """The NWBFile and Subject fields ``itloop day export`` would write (built once)."""
        if self._fields is None:
            j = self._job
            nwb = build_nwbfile(j.day, j.meta, j.origin)
            fields = {k: getattr(nwb, k) for k in NWBFILE_FIELDS if getattr(nwb, k, None) is not None}
            fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
            subject = {k: getattr(nwb.subject, k) for k in SUBJECT_FIELDS if getattr(nwb.subject, k, None) is not None}
            self._fields = {"NWBFile": {**fields, "session_start_time": nwb.session_start_time}, "Subject": subject}
        return self._fields

    def get_metadata(self) -> DeepDict:
        metadata = super().get_metadata()
        fields = self._nwbfile_fields()
        metadata["NWBFile"].deep_update(fields["NWBFile"])
        metadata["Subject"].deep_update(fields["Subject"])
        return metadata

    def add_to_nwbfile(self, nwbfile, metadata: dict | None = None, **conversion_options) -> None:
        """Add the day to ``nwbfile`` (the one NeuroConv builds, the recording already in it)."""
        j = self._job
        build_nwbfile(j.day, j.meta, j.origin, nwbfile=nwbfile)

    def dandi_name(self, modalities: tuple[str, ...] | None = None) -> Path:
        """The path ``dandi organize`` gives the combined file: ``sub-<id>/sub-<id>_ses-<session_id>_<modalities>.nwb``
        (default modalities: the day's, plus ecephys for the raw recording)."""
        j = self._job
        mods = modalities or day_modalities(j.day)
        return dandi_relpath(j.meta["subject"]["id"], self._nwbfile_fields()["NWBFile"]["session_id"], mods)
