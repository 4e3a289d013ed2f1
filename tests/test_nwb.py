"""NWB export: a real day file round-trips through pynwb with the same numbers."""
import argparse
import hashlib

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from rig.backend import SessionInfo  # noqa: E402
from rig.cli.day_export import add_export_command  # noqa: E402
from rig.store.reader import read_day  # noqa: E402
from rig.errors import UserError  # noqa: E402
from rig.store.nwb import export_nwb  # noqa: E402
from rig.session.runner import run_session  # noqa: E402
from tests.fakes import CountingBackend  # noqa: E402
from tests.test_dayfile import _new, _stimuli  # noqa: E402


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A recorded day with an aborted trial (unshown presentations) and a dropped frame."""
    path = tmp_path_factory.mktemp("nwb") / "d.h5"
    ss = _stimuli()
    w, sch = _new(path, ss)
    run_session(CountingBackend(abort_at={1: 2}, drop_at={(3, 1)}), w, ss, sch, SessionInfo("test", 1),
                (70.0, 170.0), progress=False)
    w.close()
    return path


def _sha(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_round_trip_numbers_equal(day, tmp_path):
    before = _sha(day)
    out = export_nwb(day, tmp_path / "d.nwb", subject_id="M1")
    assert _sha(day) == before  # the day file is untouched
    d = read_day(day)
    p = d.presentations
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert nwb.session_id == "test" and nwb.subject.subject_id == "M1" and nwb.subject.species == "Macaca mulatta"
        assert d.config_text in nwb.notes and d.attrs["software_version"] in nwb.session_description
        # raw spikes: one unit per channel, identical times
        units = nwb.units
        assert list(units["channel_name"][:]) == d.channel_names
        for c in range(d.n_channels):
            expect = d.spike_times_s[d.spike_channels == c]
            assert len(expect) > 0 and np.array_equal(units.get_unit_spike_times(c), expect)
        # presentations: onsets (NaN where unshown), validity and bookkeeping columns
        pr = nwb.intervals["presentations"]
        assert np.array_equal(pr["start_time"][:], p["onset_acq_s"], equal_nan=True)
        assert np.isnan(pr["start_time"][:]).sum() == 2  # the aborted trial's two unshown presentations
        on = np.isfinite(p["onset_acq_s"])
        assert np.allclose(pr["stop_time"][:][on] - pr["start_time"][:][on], 0.1)  # stim_on_ms = 100
        for col in ("valid", "stim_index", "planned_index", "trial_index", "frames_on", "frames_mask", "fixation_ok"):
            assert np.array_equal(np.asarray(pr[col][:]), p[col]), col
        assert np.array_equal(nwb.trials["start_time"][:], d.trials["start_acq_s"])
        assert list(nwb.trials["fixation_ok"][:]) == list(d.trials["fixation_ok"])
        # images: pixels equal, the IndexSeries points at them with the onsets as timestamps
        images = nwb.stimulus_template["stimuli"]
        order = images.order_of_images.data[:]
        assert len(order) == len(d.stimuli)
        for i, img in enumerate(order):
            assert np.array_equal(np.asarray(img.data[:]), d.stimuli.pixels[i])
        shown = np.isfinite(p["onset_acq_s"])
        ix = nwb.stimulus["stimulus_shown"]
        assert np.array_equal(ix.data[:], p["stim_index"][shown]) and np.array_equal(ix.timestamps[:], p["onset_acq_s"][shown])
        # provenance and counts
        mod = nwb.processing["itloop"]
        prov = mod["stimulus_provenance"]
        assert list(prov["kind"][:]) == list(d.stimuli.kind) and list(prov["sha1"][:]) == d.stim_ids
        assert np.array_equal(prov["predicted_change"][:], d.stimuli.predicted_change, equal_nan=True)
        assert np.array_equal(prov["parent_index"][:], d.stimuli.parent)
        counts = mod["spike_counts"]
        assert np.array_equal(counts["counts"][:], d.counts, equal_nan=True)
        assert "70 ms" in counts.description and "spikes" in counts["counts"].description
        sync = mod["sync_pulses"]
        assert sync.unit == "s" and np.array_equal(sync.data[:], d.sync_presenter_s) and np.array_equal(sync.timestamps[:], d.sync_acq_s)
    assert pynwb.validate(path=str(out)) == []  # schema-valid (nwbinspector is not installed)


def test_refuses_to_overwrite(day, tmp_path):
    out = tmp_path / "d.nwb"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="overwrite"):
        export_nwb(day, out)
    assert out.read_bytes() == b"precious" and sorted(x.name for x in tmp_path.iterdir()) == ["d.nwb"]
    export_nwb(day, out, overwrite=True)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert len(io.read().intervals["presentations"]) == len(read_day(day).presentations["valid"])


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_export_command(parser.add_subparsers(dest="day_command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_and_refusal(day, tmp_path, capsys):
    out = tmp_path / "c.nwb"
    assert _cli(["export", str(day), "--nwb", str(out), "--subject", "M2"]) == 0 and out.exists()
    with pytest.raises(UserError, match="--overwrite"):
        _cli(["export", str(day), "--nwb", str(out)])
    assert _cli(["export", str(day), "--nwb", str(out), "--overwrite"]) == 0
    with pytest.raises(UserError, match="does not exist"):
        _cli(["export", str(tmp_path / "missing.h5"), "--nwb", str(tmp_path / "m.nwb")])
