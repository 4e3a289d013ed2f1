"""One NWB for DANDI: NeuroConv's ConverterPipe puts a recording and an itloop day
(ItloopDayInterface) in one file on one clock. The recording is SpikeInterface's generator,
either through NeuroConv's recording interface directly or written as a tiny Open Ephys binary
folder (tests/openephys_folder.py) and read by NeuroConv's OpenEphysRecordingInterface; read back with pynwb, trial times sit on the recording's clock, the
day's extra tables (display, origin, designing model, eye calibration) are there, and
nwbinspector's DANDI config finds nothing CRITICAL or BEST_PRACTICE_VIOLATION."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from rig.cli import main
from rig.store.reader import read_day

pytest.importorskip("neuroconv", reason="needs NeuroConv: pip install 'itloop[dandi]'")
pytest.importorskip("spikeinterface", reason="needs SpikeInterface: pip install 'itloop[dandi]'")
pynwb = pytest.importorskip("pynwb")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny.toml")
FS = 2000.0              # an LFP-rate recording keeps the file small


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A simulated day, plus (added as the loop and the calibration routine store them) a designing
    model's readout and an eye calibration map."""
    folder = tmp_path_factory.mktemp("nc") / "exp"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(folder), "--config", TINY,
                 "--no-progress"]) == 0
    path = folder / "day_000.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "r+") as h5:
        del h5["model"]   # a screening day: its model group holds no readout yet
        g = h5.create_group("model")
        for k, v in {"coef": rng.normal(size=(6, 8)), "intercept": rng.normal(size=6), "feature_mean": np.zeros(8),
                     "feature_scale": np.ones(8), "site_channels": np.arange(6)}.items():
            g.create_dataset(k, data=v)
        g.attrs.update({"backbone": "tiny", "layer": "layer4"})
        h5.create_group("calibration").attrs["map_json"] = json.dumps(
            {"model": "affine", "coef": [[0.01, 0.0], [0.0, 0.01], [0.1, -0.2]], "targets_deg": [[0, 0], [5, 0]],
             "error_deg": [0.1, 0.2], "created_utc": "2026-01-01T00:00:00+00:00"})
    return path


def _recording(d, tmp_path, kind: str):
    """A generated recording on the day's acquisition clock: its first sample is sample number
    ``first`` (1 s before the first trial), channels named like the day's."""
    from neuroconv.tools.testing.mock_interfaces import MockRecordingInterface

    first = int(np.floor((d.trials["start_acq_s"][0] - 1.0) * FS))
    n = int(np.ceil((d.trials["end_acq_s"][-1] + 1.0) * FS)) - first
    rec = MockRecordingInterface(num_channels=d.n_channels, sampling_frequency=FS, durations=(n / FS,), seed=0)
    if kind == "generated":
        rec.recording_extractor = rec.recording_extractor.rename_channels(new_channel_ids=list(d.channel_names))
        rec.set_aligned_starting_time(first / FS)
        return rec, first, n
    from neuroconv.datainterfaces import OpenEphysRecordingInterface

    from tests.openephys_folder import write_openephys_binary

    zero = dt.datetime.fromisoformat(d.attrs["acq_clock_zero_utc"])
    folder = write_openephys_binary(tmp_path / "openephys", rec.recording_extractor.get_traces(), FS, first,
                                    list(d.channel_names), start=zero.replace(tzinfo=None))
    return OpenEphysRecordingInterface(folder_path=folder), first, n


@pytest.mark.parametrize("kind", ["generated", "openephys"])
def test_converter_pipe_writes_one_file_on_one_clock(day, tmp_path, kind):
    from neuroconv import ConverterPipe
    from nwbinspector import Importance, inspect_nwbfile, load_config

    from rig.store.neuroconv_interface import ItloopDayInterface

    d = read_day(day)
    rec, first, n = _recording(d, tmp_path, kind)
    itloop = ItloopDayInterface(file_path=day)
    out = tmp_path / itloop.dandi_name()
    out.parent.mkdir(parents=True)
    ConverterPipe(data_interfaces=[rec, itloop]).run_conversion(nwbfile_path=out, overwrite=True)
    assert out.name == f"sub-sim-monkey_ses-{d.attrs['session_id']}_ecephys+image.nwb"

    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        (es,) = [v for v in nwb.acquisition.values() if isinstance(v, pynwb.ecephys.ElectricalSeries)]
        assert es.starting_time == first / FS and es.rate == FS and es.data.shape == (n, d.n_channels)
        # one time base: session_start_time is the acquisition clock's zero; trials are on that clock
        zero = dt.datetime.fromisoformat(d.attrs["acq_clock_zero_utc"])
        assert nwb.session_start_time == zero
        trials = nwb.trials.to_dataframe()
        np.testing.assert_array_equal(trials["start_time"].to_numpy(), d.trials["start_acq_s"])
        np.testing.assert_array_equal(trials["stop_time"].to_numpy(), d.trials["end_acq_s"])
        # every trial lies inside the recording: its first and last sample exist in the ElectricalSeries
        samples = np.round((trials[["start_time", "stop_time"]].to_numpy() - es.starting_time) * FS)
        assert samples.min() >= 0 and samples.max() < n
        shown = d.presentations["shown"]
        pres = nwb.intervals["presentations"].to_dataframe()
        np.testing.assert_array_equal(pres["start_time"].to_numpy(), d.presentations["onset_acq_s"][shown])
        # the day's units link to the recording's electrodes by channel name
        units = nwb.units.to_dataframe()
        names = [str(e["channel_name"].iloc[0]) for e in units["electrodes"]]
        assert names == list(d.channel_names) and len(nwb.electrodes) == d.n_channels
        # structured DANDI details
        misc = nwb.processing["misc"]
        origin = misc["data_origin"].to_dataframe().set_index("field")["value"].map(json.loads)
        assert origin["origin"] == "sim" and origin["simulated"] is True and origin["replayed"] is False
        display = misc["display_geometry"].to_dataframe().set_index("field")["value"].map(json.loads)
        assert display["distance_cm"] > 0 and display["px_per_deg"] > 0 and display["image_size_px"] == 48
        readout = misc["designing_model_readout"].to_dataframe()
        assert len(readout) == 6 and np.asarray(readout["weights"].iloc[0]).shape == (8,)
        cal = misc["eye_calibration"].to_dataframe()
        np.testing.assert_allclose(cal["coef_x"], [0.01, 0.0, 0.1])
        assert nwb.subject.subject_id == "sim-monkey"

    msgs = list(inspect_nwbfile(nwbfile_path=str(out), config=load_config("dandi")))
    bad = [f"{m.importance.name} {m.check_function_name}: {m.message}" for m in msgs
           if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION, Importance.ERROR)]
    assert bad == [], bad


def test_day_export_carries_the_same_details(day, tmp_path):
    """`itloop day export` (no NeuroConv) writes the same origin, display, model and calibration tables."""
    shutil.copy(day, tmp_path / "day_000.h5")
    assert main(["day", "export", str(tmp_path / "day_000.h5"), "--nwb", str(tmp_path / "d.nwb")]) == 0
    with pynwb.NWBHDF5IO(str(tmp_path / "d.nwb"), "r") as io:
        misc = io.read().processing["misc"]
        assert {"data_origin", "display_geometry", "designing_model_readout", "eye_calibration"} <= set(misc.data_interfaces)
