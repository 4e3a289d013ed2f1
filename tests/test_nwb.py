"""NWB export: real day files round-trip through pynwb with the same numbers, carry the
subject / session / array metadata, and pass nwbinspector's DANDI checks."""
import argparse
import datetime as dt
import hashlib
import json
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from rig.backend import SessionInfo
from rig.cli import main
from rig.cli.day_export import add_export_command
from rig.config import ConfigError, load_config
from rig.errors import UserError
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayWriter
from rig.store.nwb import REQUIRED_FOR_LIVE, ExportRefused, data_origin, export_nwb
from rig.store.origin import LIVE, Origin
from rig.store.reader import read_day
from tests.fakes import CountingBackend
from tests.test_dayfile import _stimuli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.toml"
META = {"subject": {"id": "M17", "sex": "M", "age": "P7Y", "description": "adult rhesus, chronic implant"},
        "session": {"experimenter": ["Doe, Jane"], "lab": "Vision Lab", "institution": "Example University",
                    "protocol": "IACUC-2026-001"},
        "array": {"device": "Utah array 3 channels", "manufacturer": "Blackrock Neurotech", "location": "left AIT",
                  "reference": "titanium pedestal", "electrode_x_um": [0.0, 400.0, 800.0],
                  "electrode_y_um": [0.0, 0.0, 400.0]}}
ZERO = "2026-11-02T09:15:00.250000+00:00"
# nwbinspector's suggestions left on a simulated day recorded with the default config (README, NWB section)
ALLOWED_SUGGESTIONS = {"check_experimenter_exists", "check_institution"}


def _record_counting(path, meta=None, acquisition=True):
    """A day from the counting backend (a known answer; treated as a live recording) with an
    aborted trial (two presentations never shown) and a dropped frame."""
    ss = _stimuli()
    sch = build_schedule(ss.parent, 3, 4, 0, 0.3)
    attrs = {"acq_clock_zero_utc": ZERO, "acq_clock_zero_source": "test"}
    if acquisition:
        attrs["spike_source_json"] = json.dumps({"system": "counting test source", "version": "1.2",
                                                 "sampling_rate_hz": 30000.0})
    cfg = load_config(overrides=meta or {})
    w = DayWriter.create(path, config_text=cfg.to_toml(), day=1, session_id="test-day001", stimuli=ss,
                         schedule_stim_index=sch.stim_index, presentations_per_trial=4, seconds_per_presentation=0.3,
                         channel_names=["ch0", "ch1", "ch2"], backend="counting", window_ms=(70.0, 170.0), attrs=attrs,
                         origin=Origin(LIVE))
    run_session(CountingBackend(abort_at={1: 2}, drop_at={(3, 1)}), w, ss, sch, SessionInfo("test", 1),
                (70.0, 170.0))
    w.close()
    return path


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    return _record_counting(tmp_path_factory.mktemp("nwb") / "d.h5", META)


@pytest.fixture(scope="module")
def bare_day(tmp_path_factory):
    """A live-looking day recorded with the default (empty) metadata."""
    return _record_counting(tmp_path_factory.mktemp("bare") / "day_001.h5")


def _sha(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _presentations_back(nwb, n):
    """The day file's /presentations rebuilt from the shown table + presentations_not_shown."""
    pr = nwb.intervals["presentations"]
    out = {"onset_acq_s": np.full(n, np.nan), "shown": np.zeros(n, bool)}
    rows = np.asarray(pr["attempt"][:])
    out["onset_acq_s"][rows] = pr["start_time"][:]
    out["shown"][rows] = True
    ns = nwb.processing["misc"]["presentations_not_shown"] if "presentations_not_shown" in nwb.processing["misc"].data_interfaces else None
    for col in ("stim_index", "planned_index", "trial_index", "position"):
        v = np.full(n, -1, np.int64)
        v[rows] = pr[col][:]
        if ns is not None:
            v[np.asarray(ns["attempt"][:])] = ns[col][:]
        out[col] = v
    for col in ("valid", "fixation_ok", "dropped_frame"):
        v = np.zeros(n, bool)
        v[rows] = pr[col][:]
        out[col] = v
    for col in ("frames_on", "frames_mask"):
        v = np.zeros(n, np.int64)
        v[rows] = pr[col][:]
        out[col] = v
    return out, ns


def _times(ts):
    """A TimeSeries' times, from its timestamps or its starting_time + rate."""
    if ts.timestamps is not None:
        return np.asarray(ts.timestamps[:])
    return ts.starting_time + np.arange(len(ts.data)) / ts.rate


def _check_round_trip(day_path, nwb_path):
    """Everything the NWB file holds equals the day file's numbers."""
    d = read_day(day_path)
    p, n = d.presentations, len(d.presentations["valid"])
    with pynwb.NWBHDF5IO(str(nwb_path), "r") as io:
        nwb = io.read()
        assert d.config_text in nwb.notes
        # trials
        assert np.array_equal(nwb.trials["start_time"][:], d.trials["start_acq_s"])
        assert np.array_equal(nwb.trials["stop_time"][:], d.trials["end_acq_s"])
        for col in ("trial_index", "completed", "fixation_ok", "acquisition_ok"):
            assert np.array_equal(np.asarray(nwb.trials[col][:]), d.trials[col]), col
        # presentations: shown ones with real onsets, the rest in their own table, none NaN
        back, ns = _presentations_back(nwb, n)
        assert np.array_equal(back["onset_acq_s"], p["onset_acq_s"], equal_nan=True)
        assert np.array_equal(back["shown"], p["shown"])
        for col in ("stim_index", "planned_index", "trial_index", "position", "valid", "fixation_ok", "dropped_frame",
                    "frames_on", "frames_mask"):
            assert np.array_equal(back[col], p[col]), col
        pr = nwb.intervals["presentations"]
        assert np.isfinite(pr["start_time"][:]).all() and np.isfinite(pr["stop_time"][:]).all()
        if ns is not None:  # each unshown presentation points at its trial
            trial_rows = np.asarray(ns["trial"].data[:])
            assert np.array_equal(d.trials["trial_index"][trial_rows], ns["trial_index"][:])
        # spikes per unit, each unit on its own electrode
        units = nwb.units
        assert list(units["channel_name"][:]) == d.channel_names
        for c in range(d.n_channels):
            expect = np.sort(d.spike_times_s[d.spike_channels == c])
            assert len(expect) > 0 and np.array_equal(units.get_unit_spike_times(c), expect)
            assert units["electrodes"][c]["channel_name"].tolist() == [d.channel_names[c]]
        assert units.resolution > 0
        # stimuli: pixels, the IndexSeries of shown images, provenance
        images = nwb.stimulus_template["stimuli"]
        order = images.order_of_images.data[:]
        assert len(order) == len(d.stimuli)
        for i, img in enumerate(order):
            assert np.array_equal(np.asarray(img.data[:]), d.stimuli.pixels[i])
        shown = np.isfinite(p["onset_acq_s"])
        ix = nwb.stimulus["stimulus_shown"]
        assert np.array_equal(ix.data[:], p["stim_index"][shown]) and np.array_equal(ix.timestamps[:], p["onset_acq_s"][shown])
        prov = nwb.processing["misc"]["stimulus_provenance"]
        assert list(prov["kind"][:]) == list(d.stimuli.kind) and list(prov["sha1"][:]) == d.stim_ids
        assert np.array_equal(prov["parent_index"][:], d.stimuli.parent)
        pc = prov["predicted_change"][:] if "predicted_change" in prov.colnames else np.full(len(d.stimuli), np.nan)
        assert np.array_equal(pc, d.stimuli.predicted_change, equal_nan=True)
        assert np.array_equal(prov["epsilon_index"][:], d.stimuli.epsilon_index)
        assert str([float(e) for e in d.stimuli.epsilons]) in prov["epsilon_index"].description
        # counts: under ecephys, one row per shown presentation; unshown ones were NaN in the day file
        assert "itloop" not in nwb.processing
        counts = nwb.processing["ecephys"]["spike_counts"]
        full = np.full((n, d.n_channels), np.nan, np.float32)
        full[np.asarray(pr["attempt"][:])] = counts["counts"][:]
        assert np.array_equal(full, d.counts, equal_nan=True)
        assert "spikes" in counts["counts"].description
        sync = nwb.processing["misc"]["sync_pulses"]
        assert np.array_equal(sync.data[:], d.sync_presenter_s)
        assert np.array_equal(sync.timestamps[:], d.sync_acq_s) if sync.timestamps is not None else \
            np.allclose(_times(sync), d.sync_acq_s, rtol=0, atol=1e-9)
        return nwb.identifier, nwb.session_description, nwb.session_start_time


def test_round_trip_metadata_and_time_base(day, tmp_path):
    before = _sha(day)
    out = export_nwb(day, tmp_path / "d.nwb")
    assert _sha(day) == before  # the day file is untouched
    ident, desc, start = _check_round_trip(day, out)
    d = read_day(day)
    assert ident == d.attrs["identifier"] and str(uuid.UUID(ident)) == ident  # the day file's UUID, no prefix
    assert start == dt.datetime.fromisoformat(ZERO)  # session_start_time = the acquisition clock's zero
    assert "counting test source 1.2" in desc and "simulated" not in desc.lower()
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert nwb.timestamps_reference_time == start
        s = nwb.subject
        assert (s.subject_id, s.sex, s.age, s.species) == ("M17", "M", "P7Y", "Macaca mulatta")
        assert list(nwb.experimenter) == ["Doe, Jane"] and nwb.institution == "Example University"
        assert nwb.lab == "Vision Lab" and nwb.protocol == "IACUC-2026-001" and "macaque" in list(nwb.keywords)
        dev = nwb.devices["Utah array 3 channels"]
        assert dev.model.manufacturer == "Blackrock Neurotech"
        el = nwb.electrodes.to_dataframe()
        assert list(el["location"]) == ["left AIT"] * 3 and list(el["reference"]) == ["titanium pedestal"] * 3
        assert list(el["rel_x"]) == [0.0, 400.0, 800.0] and list(el["rel_y"]) == [0.0, 0.0, 400.0]
        assert nwb.electrode_groups["array"].device is dev
        assert nwb.units.resolution == pytest.approx(1 / 30000)
        assert "behavior" not in nwb.processing  # no eye trace or rewards in this day file
    assert pynwb.validate(path=str(out)) == []


def test_identifier_stable_across_exports(day, tmp_path):
    a = export_nwb(day, tmp_path / "a.nwb")
    b = export_nwb(day, tmp_path / "b.nwb")
    ids = []
    for f in (a, b):
        with pynwb.NWBHDF5IO(str(f), "r") as io:
            ids.append(io.read().identifier)
    assert ids[0] == ids[1] == read_day(day).attrs["identifier"] and not ids[0].startswith("itloop")


def test_metadata_stored_in_day_file(day):
    with h5py.File(day, "r") as h5:
        g = h5["metadata"]
        assert json.loads(g.attrs["subject"])["id"] == "M17"
        assert json.loads(g.attrs["session"])["experimenter"] == ["Doe, Jane"]
        assert json.loads(g.attrs["array"])["electrode_x_um"] == [0.0, 400.0, 800.0]
        assert h5.attrs["acq_clock_zero_utc"] == ZERO


def test_live_day_refused_until_metadata_given(bare_day, tmp_path):
    with pytest.raises(ExportRefused) as exc:
        export_nwb(bare_day, tmp_path / "x.nwb")
    msg = str(exc.value)
    assert "\n" not in msg and all(k in msg for k in REQUIRED_FOR_LIVE)
    assert not (tmp_path / "x.nwb").exists()
    # given at export time (the day file stays as recorded), it goes through
    before = _sha(bare_day)
    meta = tmp_path / "meta.toml"
    meta.write_text('[subject]\nid = "M17"\nsex = "F"\ndate_of_birth = "2019-03-04"\n'
                    '[session]\nexperimenter = ["Doe, Jane"]\ninstitution = "Example University"\n'
                    '[array]\ndevice = "Utah array"\nlocation = "left AIT"\n')
    assert _cli(["export", str(bare_day), "--nwb", str(tmp_path / "x.nwb"), "--metadata", str(meta)]) == 0
    assert _sha(bare_day) == before
    with pynwb.NWBHDF5IO(str(tmp_path / "x.nwb"), "r") as io:
        s = io.read().subject
        assert s.subject_id == "M17" and s.date_of_birth.date() == dt.date(2019, 3, 4)
    # a bad value at export is named like any config error
    meta.write_text('[subject]\nage = "seven years"\n')
    with pytest.raises(UserError, match="subject.age"):
        _cli(["export", str(bare_day), "--nwb", str(tmp_path / "y.nwb"), "--metadata", str(meta)])


def test_sampling_rate_needed_for_a_live_day(tmp_path):
    path = _record_counting(tmp_path / "d.h5", META, acquisition=False)
    with pytest.raises(ExportRefused, match="array.sampling_rate_hz"):
        export_nwb(path, tmp_path / "d.nwb")
    export_nwb(path, tmp_path / "d.nwb", overrides={"array": {"sampling_rate_hz": 40000.0}})
    with pynwb.NWBHDF5IO(str(tmp_path / "d.nwb"), "r") as io:
        assert io.read().units.resolution == pytest.approx(1 / 40000)


def test_eye_and_rewards_go_under_behavior(day, tmp_path):
    path = tmp_path / "with_eye.h5"
    shutil.copy(day, path)
    d = read_day(day)
    t = np.linspace(d.trials["start_acq_s"][0], d.trials["end_acq_s"][-1], 500)
    n = len(t)
    eye = {"trial_index": np.zeros(n, "i8"), "t_presenter_s": t, "t_acq_s": t, "x_deg": np.sin(t), "y_deg": np.cos(t),
           "pupil": np.full(n, 1200.0)}
    rewards = {"trial_index": np.zeros(3, "i8"), "t_presenter_s": d.trials["end_acq_s"][:3],
               "t_acq_s": d.trials["end_acq_s"][:3], "duration_ms": [80.0, 80.0, 120.0], "kind": np.zeros(3, "i1")}
    with h5py.File(path, "r+") as h5:   # the day file's own (empty) eye and reward tables, filled with known rows
        for group, cols in (("eye", eye), ("rewards", rewards)):
            for name, v in cols.items():
                ds = h5[group][name]
                ds.resize(len(v), axis=0)
                ds[:] = v
        h5["trials/eye_end"][-1] = n   # the last committed trial ends where these tables end
        h5["trials/reward_end"][-1] = 3
    out = export_nwb(path, tmp_path / "e.nwb")
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        beh = io.read().processing["behavior"]
        pos = beh["EyeTracking"]["eye_position"]
        assert pos.unit == "degrees" and np.allclose(pos.data[:], np.column_stack([np.sin(t), np.cos(t)]), atol=1e-6)
        assert np.allclose(_times(pos), t, rtol=0, atol=1e-9)  # regular: starting_time + rate
        assert np.array_equal(beh["PupilTracking"]["pupil"].data[:], np.full(len(t), 1200.0))
        rw = beh["rewards"]
        assert rw.unit == "ms" and np.array_equal(rw.data[:], [80.0, 80.0, 120.0])
        assert np.allclose(_times(rw), d.trials["end_acq_s"][:3], rtol=0, atol=1e-9)
    bad, suggestions = _inspect(out)
    assert bad == [] and suggestions == set(), (bad, suggestions)


def test_refuses_to_overwrite(day, tmp_path):
    out = tmp_path / "d.nwb"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="overwrite"):
        export_nwb(day, out)
    assert out.read_bytes() == b"precious" and sorted(x.name for x in tmp_path.iterdir()) == ["d.nwb"]
    export_nwb(day, out, overwrite=True)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert len(io.read().intervals["presentations"]) == read_day(day).presentations["shown"].sum()


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_export_command(parser.add_subparsers(dest="day_command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_and_refusal(day, tmp_path):
    out = tmp_path / "c.nwb"
    assert _cli(["export", str(day), "--nwb", str(out), "--subject", "M2"]) == 0 and out.exists()
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert io.read().subject.subject_id == "M2"
    with pytest.raises(UserError, match="--overwrite"):
        _cli(["export", str(day), "--nwb", str(out)])
    assert _cli(["export", str(day), "--nwb", str(out), "--overwrite"]) == 0
    with pytest.raises(UserError, match="does not exist"):
        _cli(["export", str(tmp_path / "missing.h5"), "--nwb", str(tmp_path / "m.nwb")])
    with pytest.raises(UserError, match="subject.id"):
        _cli(["export", str(day), "--nwb", str(tmp_path / "s.nwb"), "--subject", "M/2"])


def test_experiment_folder_export_uses_dandi_names(day, bare_day, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(day, exp / "day_001.h5")
    shutil.copy(day, exp / "day_001.plan.h5")  # plans are not exported
    assert _cli(["export", str(exp), "--nwb-dir", str(tmp_path / "dandi")]) == 0
    sid = read_day(day).attrs["session_id"]          # the names `dandi organize` gives (ses- = session_id)
    assert sorted(str(p.relative_to(tmp_path / "dandi")) for p in (tmp_path / "dandi").rglob("*.nwb")) == [
        f"sub-M17/sub-M17_ses-{sid}_ecephys+image.nwb"]
    # one day that may not be exported: nothing is written, the message names the day and keys
    shutil.copy(bare_day, exp / "day_002.h5")
    with pytest.raises(UserError, match="day_002.h5.*subject.id"):
        _cli(["export", str(exp), "--nwb-dir", str(tmp_path / "dandi2")])
    assert not (tmp_path / "dandi2").exists()
    with pytest.raises(UserError, match="--nwb-dir"):
        _cli(["export", str(exp), "--nwb", str(tmp_path / "one.nwb")])


@pytest.mark.parametrize("section, key, value", [
    ("subject", "age", "7 years"), ("subject", "sex", "male"), ("subject", "id", "M 17"),
    ("subject", "date_of_birth", "2019-14-01"), ("subject", "species", "macaque"),
    ("session", "experimenter", ["Jane Doe"]), ("array", "electrode_x_um", [1.0, 2.0]),
    ("array", "sampling_rate_hz", -1.0)])
def test_metadata_config_errors_name_the_key(section, key, value):
    with pytest.raises(ConfigError, match=f"{section}.{key.replace('_x_', '_y_') if key == 'electrode_x_um' else key}"):
        load_config(overrides={section: {key: value}})


# --------------------------------------------------------------------------- simulated + replayed days
def _inspect(path):
    """nwbinspector (pinned, see pyproject's test extra) with the DANDI config:
    (messages at BEST_PRACTICE_VIOLATION or worse, names of the suggestions)."""
    from nwbinspector import Importance, inspect_nwbfile
    from nwbinspector import load_config as inspector_config

    msgs = list(inspect_nwbfile(nwbfile_path=str(path), config=inspector_config("dandi")))
    bad = [f"{m.importance.name} {m.check_function_name}: {m.message}" for m in msgs
           if m.importance != Importance.BEST_PRACTICE_SUGGESTION]
    return bad, {m.check_function_name for m in msgs if m.importance == Importance.BEST_PRACTICE_SUGGESTION}


@pytest.fixture(scope="module")
def sim_experiment(tmp_path_factory):
    """A simulated screening day recorded through the CLI, and its replay (`itloop day replay`)."""
    pytest.importorskip("nwbinspector")
    root = tmp_path_factory.mktemp("sim")
    exp, rep = root / "exp", root / "rep"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(exp), "--config", str(TINY), "--no-progress"]) == 0
    rep.mkdir()
    assert main(["day", "replay", str(exp / "day_000.h5"), "--out", str(rep / "day_000.h5"), "--no-progress"]) == 0
    return exp, rep


@pytest.mark.slow
def test_simulated_and_replayed_days_pass_dandi_checks(sim_experiment, tmp_path):
    exp, rep = sim_experiment
    out = tmp_path / "dandi"
    assert main(["day", "export", str(exp), "--nwb-dir", str(out)]) == 0
    assert main(["day", "export", str(rep), "--nwb-dir", str(out)]) == 0
    sid = read_day(exp / "day_000.h5").attrs["session_id"]
    sim_nwb = out / "sub-sim-monkey" / f"sub-sim-monkey_ses-{sid}_ecephys+image.nwb"
    rep_nwb = out / "sub-sim-monkey" / f"sub-sim-monkey_ses-{sid}-replay_ecephys+image.nwb"
    for day_file, nwb_file in ((exp / "day_000.h5", sim_nwb), (rep / "day_000.h5", rep_nwb)):
        bad, suggestions = _inspect(nwb_file)
        assert bad == [], bad  # 0 CRITICAL, 0 BEST_PRACTICE_VIOLATION, no validation error
        assert suggestions <= ALLOWED_SUGGESTIONS, suggestions
        ident, desc, start = _check_round_trip(day_file, nwb_file)
        assert "simulated" in desc.lower()
        attrs = read_day(day_file).attrs
        assert ident == attrs["identifier"] and start == dt.datetime.fromisoformat(attrs["acq_clock_zero_utc"])
    a, b = read_day(exp / "day_000.h5").attrs, read_day(rep / "day_000.h5").attrs
    assert a["identifier"] != b["identifier"] and b["replayed_from"] == a["identifier"]
    with pynwb.NWBHDF5IO(str(rep_nwb), "r") as io:
        nwb = io.read()
        assert "replay of day file day_000.h5" in nwb.session_description and a["identifier"] in nwb.data_collection
        assert nwb.subject.sex == "U" and nwb.subject.age == "P0D/" and "SIMULATED" in nwb.subject.description
    assert data_origin(read_day(exp / "day_000.h5")).simulated and data_origin(read_day(rep / "day_000.h5")).replayed_from


def test_recovered_day_keeps_its_identifier(day, tmp_path):
    from rig.backends.replay import replay_day
    from rig.store.journal import journal_path
    from rig.store.repair import recover_day

    replay = replay_day(day, tmp_path / "replay.h5")
    for src in (day, replay):  # a recording and a replay: recovery keeps each one's identifier
        path = tmp_path / f"copy_{src.name}"
        shutil.copy(src, path)
        shutil.copy(journal_path(src), journal_path(path))
        recover_day(path)
        a, b = read_day(src), read_day(path)
        assert b.attrs["identifier"] == a.attrs["identifier"] and b.attrs["acq_clock_zero_utc"] == ZERO
        assert np.array_equal(b.spike_times_s, a.spike_times_s)
    assert read_day(replay).origin.replayed_from == read_day(day).attrs["identifier"]
    assert read_day(replay).attrs["identifier"] != read_day(day).attrs["identifier"]


def test_recording_takes_todays_metadata_over_the_plans(tmp_path, capsys):
    """The plan fixes the experiment; who records and which subject/array are the day's own."""
    from rig.steps.record import ensure_screening_plan, record_day

    planned = load_config(TINY)
    ensure_screening_plan(planned, tmp_path)
    today = load_config(TINY, overrides=META)
    record_day(today, tmp_path, 0, "sim", max_trials=1)
    assert "differs" not in capsys.readouterr().out  # only the metadata differ: no note
    with h5py.File(tmp_path / "day_000.h5", "r") as h5:
        assert json.loads(h5["metadata"].attrs["subject"])["id"] == "M17"
        assert json.loads(h5["metadata"].attrs["session"])["institution"] == "Example University"
        zero = dt.datetime.fromisoformat(h5.attrs["acq_clock_zero_utc"])
        created = dt.datetime.fromisoformat(h5.attrs["created_utc"])
        assert abs((zero - created).total_seconds()) < 5  # the simulated clock reads 0 s when the day starts
    d = read_day(tmp_path / "day_000.h5")
    assert "M17" in d.config_text and d.trials["start_acq_s"][0] > 0
