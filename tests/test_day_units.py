"""`itloop day units`: a ground-truth sorting made with SpikeInterface, saved as a phy/Kilosort
folder and as a SpikeInterface folder in the acquisition's sample clock, comes back into a
recorded (simulated) day with every unit's per-presentation counts exactly right; the new
day fits and exports like any day; unstable units are flagged; the original is untouched."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from rig.cli import main
from rig.store.reader import read_day

si = pytest.importorskip("spikeinterface", reason="needs SpikeInterface: pip install 'itloop[sorting]'")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny.toml")
FS = 30000.0
FIRST = 270_000          # the acquisition's sample number at the sorted recording's first sample (9 s)


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    folder = tmp_path_factory.mktemp("units") / "exp"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(folder), "--config", TINY,
                 "--no-progress"]) == 0
    return folder / "day_000.h5"


def _truth_sorting(d):
    """Units in samples of the sorted recording: each channel's simulated spikes split into two
    units (a sorter separating two neurons), plus SpikeInterface generator units: one steady,
    one that vanishes half-way, one whose rate triples in the last third. Spikes within 2
    samples of a count-window edge are left out, so the truth has no rounding ambiguity."""
    rng = np.random.default_rng(7)
    units, channels = {}, {}
    for c in range(d.n_channels):
        s = np.round(d.spike_times_s[d.spike_channels == c] * FS).astype(np.int64) - FIRST
        half = rng.random(len(s)) < 0.5
        units[f"{c + 1}0"], units[f"{c + 1}1"] = s[half], s[~half]
        channels[f"{c + 1}0"] = channels[f"{c + 1}1"] = c
    t0, t1 = d.trials["start_acq_s"][0], d.trials["end_acq_s"][-1]
    n0, n1 = int(t0 * FS) - FIRST, int(t1 * FS) - FIRST
    gen = si.core.generate_sorting(num_units=3, sampling_frequency=FS, durations=[(n1 - n0) / FS], firing_rates=15.0,
                                   seed=3)
    g = [np.asarray(gen.get_unit_spike_train(u), np.int64) + n0 for u in gen.get_unit_ids()]
    units["90"] = g[0]
    units["91"] = g[1][g[1] < (n0 + n1) // 2]                       # lost half-way
    late = g[2][g[2] > n0 + 2 * (n1 - n0) // 3]
    units["92"] = np.sort(np.r_[g[2], late, late + 7])              # triples in the last third
    channels.update({"90": 0, "91": 1, "92": 2})
    onset = d.presentations["onset_acq_s"]
    edges = np.concatenate([onset + d.window_ms[0] / 1000, onset + d.window_ms[1] / 1000])
    edges = np.sort(edges[np.isfinite(edges)])
    for k, s in units.items():
        t = (s + FIRST) / FS
        j = np.clip(np.searchsorted(edges, t), 1, len(edges) - 1)
        near = np.minimum(np.abs(t - edges[j]), np.abs(t - edges[j - 1])) < 2 / FS
        units[k] = np.unique(s[~near])
    return units, channels


def _truth_counts(d, units):
    """Brute force: spikes of each unit in [onset + start, onset + end) for every presentation."""
    onset = d.presentations["onset_acq_s"]
    out = np.full((len(onset), len(units)), np.nan)
    for j, s in enumerate(units.values()):
        t = (s + FIRST) / FS
        for i, o in enumerate(onset):
            if np.isfinite(o):
                out[i, j] = np.sum((t >= o + d.window_ms[0] / 1000) & (t < o + d.window_ms[1] / 1000))
    return out


def _write_phy(folder: Path, units: dict, channels: dict) -> None:
    """A Kilosort/phy output folder (phy's documented layout) holding ``units`` plus one 'noise' cluster."""
    folder.mkdir()
    ids = list(units) + ["999"]
    spikes = [*units.values(), np.arange(1000, 50_000, 997, dtype=np.int64)]
    times = np.concatenate(spikes)
    clusters = np.concatenate([np.full(len(s), int(u)) for u, s in zip(ids, spikes)])
    order = np.argsort(times, kind="stable")
    np.save(folder / "spike_times.npy", times[order].astype(np.uint64))
    np.save(folder / "spike_clusters.npy", clusters[order].astype(np.int32))
    (folder / "params.py").write_text("dat_path = 'recording.dat'\nn_channels_dat = 6\ndtype = 'int16'\noffset = 0\n"
                                      f"sample_rate = {FS}\nhp_filtered = True\n")
    rows = ["cluster_id\tch\tgroup\tKSLabel\tContamPct\tAmplitude"]
    rows += [f"{u}\t{channels[u]}\tgood\tgood\t{i * 0.5:.1f}\t{40 + i}" for i, u in enumerate(units)]
    rows.append("999\t0\tnoise\tmua\t90.0\t5")
    (folder / "cluster_info.tsv").write_text("\n".join(rows) + "\n")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_phy_folder_comes_back_with_exact_counts_and_fits(day, tmp_path, capsys):
    d = read_day(day)
    units, channels = _truth_sorting(d)
    _write_phy(tmp_path / "ks", units, channels)
    before = _sha(day)
    out = tmp_path / "units" / "day_000.h5"
    rc = main(["day", "units", str(day), "--sorting", str(tmp_path / "ks"), "--out", str(out),
               "--first-sample", str(FIRST)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert _sha(day) == before                                          # the original is only read
    u = read_day(out)
    assert u.n_channels == len(units) == 15                             # the noise cluster is left out
    np.testing.assert_array_equal(u.counts, _truth_counts(d, units).astype(np.float32))
    assert np.array_equal(u.presentations["valid"], d.presentations["valid"])
    with h5py.File(out, "r") as h5:
        g = h5["units"]
        assert [x.decode() for x in g["unit_id"][:]] == list(units)
        assert list(g["channel"][:]) == [channels[k] for k in units]
        assert list(g["properties/ContamPct"][:]) == [i * 0.5 for i in range(len(units))]
        stable = dict(zip(units, g["stable"][:]))
        assert h5.attrs["sites_are"] == "units" and h5.attrs["units_from_identifier"] == d.attrs["identifier"]
        assert h5.attrs["identifier"] != d.attrs["identifier"]
        # a targeted channel's stimuli point at that channel's largest unit (none here: a screening day)
        assert (h5["stimuli/site_channel"][:] == -1).all()
    assert not stable["91"] and not stable["92"]                        # lost half-way; rate tripled
    assert all(stable[k] for k in units if not k.startswith("9")) and stable["90"]
    assert "UNSTABLE: unit 91" in text and "UNSTABLE: unit 92" in text and text.count("UNSTABLE") == 2
    # the new day is a day: the readout fits on its units and it exports to NWB
    rc = main(["model", "fit", "--days", str(out.parent), "--through", "0", "--all-sites"])
    assert rc == 0, capsys.readouterr()
    pytest.importorskip("pynwb")
    assert main(["day", "export", str(out), "--nwb", str(tmp_path / "units.nwb")]) == 0


@pytest.mark.filterwarnings("ignore:The extractor is not serializable")
def test_saved_spikeinterface_sorting_and_bad_inputs(day, tmp_path, capsys):
    d = read_day(day)
    units, channels = _truth_sorting(d)
    sorting = si.core.NumpySorting.from_unit_dict([units], sampling_frequency=FS)
    sorting.set_property("channel", np.array([channels[k] for k in units]))
    sorting.set_property("snr", np.linspace(2, 9, len(units)))
    sorting.save(folder=tmp_path / "saved")
    src = tmp_path / "targeted.h5"                 # a copy whose stimulus 0 targeted channel 2
    shutil.copy(day, src)
    with h5py.File(src, "r+") as h5:
        h5["stimuli/site"][0] = 2
    out = tmp_path / "u.h5"
    assert main(["day", "units", str(src), "--sorting", str(tmp_path / "saved"), "--out", str(out),
                 "--first-sample", str(FIRST)]) == 0
    np.testing.assert_array_equal(read_day(out).counts, _truth_counts(d, units).astype(np.float32))
    # the targeted channel's stimuli now point at its unit with the most spikes; the channel is kept
    ids = list(units)
    larger = max((k for k in units if channels[k] == 2), key=lambda k: len(units[k]))
    with h5py.File(out, "r") as h5:
        assert h5["stimuli/site"][0] == ids.index(larger) and h5["stimuli/site_channel"][0] == 2
        assert (h5["stimuli/site"][1:] == -1).all()
    capsys.readouterr()
    # an existing output, a folder that is no sorting, a wrong first sample: one line each, exit 2
    for argv, words in (([str(day), "--sorting", str(tmp_path / "saved"), "--out", str(out)], "already exists"),
                        ([str(day), "--sorting", str(tmp_path), "--out", str(tmp_path / "x.h5")], "cannot read"),
                        ([str(day), "--sorting", str(tmp_path / "saved"), "--out", str(tmp_path / "y.h5")],
                         "--first-sample")):
        assert main(["day", "units", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
