"""`day analyze` and `report` on a units experiment (`itloop day units`): the analysis of the
sorted units is the analysis of the same counts at the units standing for the targeted
channels, computed directly on a channel day that holds those counts.

A tiny simulated experiment (screening day, one closed-loop day) is sorted into two units
per channel (a unit's row is never its channel's number); both days come back as units
days beside a copy of the designing model. The reference is the channel experiment with
each channel's counts replaced by its standing unit's counts: every number of the units
day's analysis must equal the reference's (the white-box truth, per channel, is left out).
"""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from rig.cli import main
from rig.results.headline import _e
from rig.store.reader import read_day

si = pytest.importorskip("spikeinterface", reason="needs SpikeInterface: pip install 'itloop[sorting]'")
pytestmark = pytest.mark.filterwarnings("ignore:The extractor is not serializable")   # a NumpySorting saved

FS = 30000.0
CONFIG = """
[experiment]
sites_per_day = 2
images_per_site = 2
epsilons = [2.0]
[images]
size_px = 32
n_clean = 30
[screening]
repeats = 3
[schedule]
repeats = 3
min_parent_separation_min = 0.0
[model]
backbone = "tiny"
[perturb]
restarts = 2
steps = 4
[sim]
n_channels = 3
fixation_break_prob = 0.0
smoothing_px = 0.0
model_alignment = 1.0
"""
# unit ids in the sorting's order: 20c = channel c's main unit, 30c = a sparser second unit on c; channel
# c's main unit is row 2c + 1, so a site read as a channel number would be another unit
ORDER = [300, 200, 301, 201, 302, 202]


def _sorting(d) -> tuple[si.core.NumpySorting, int]:
    """Two units per channel from the day's simulated spikes (a sorter splitting each channel):
    the main unit gets 80 % of the spikes, the second 20 %; samples of a recording that starts
    100 samples before the first spike. Returns the sorting and that first sample."""
    first = int(np.floor(d.spike_times_s.min() * FS)) - 100
    rng = np.random.default_rng(5)
    units = {}
    for c in range(d.n_channels):
        s = np.round(d.spike_times_s[d.spike_channels == c] * FS).astype(np.int64) - first
        second = rng.random(len(s)) < 0.2
        units[200 + c], units[300 + c] = s[~second], s[second]
    sorting = si.core.NumpySorting.from_unit_dict([{u: units[u] for u in ORDER}], sampling_frequency=FS)
    sorting.set_property("channel", np.array([u % 100 for u in ORDER]))
    return sorting, first


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(channel experiment, units experiment, reference experiment), each with days 0 and 1."""
    base = tmp_path_factory.mktemp("units_analysis")
    cfg, exp = base / "c.toml", base / "channels"
    cfg.write_text(CONFIG)
    for argv in (["day", "run", "--day", "0", "--backend", "sim"], ["day", "plan", "--day", "1"],
                 ["day", "run", "--day", "1", "--backend", "sim"]):
        assert main([*argv, "--out", str(exp), "--config", str(cfg), "--no-progress"]) == 0
    units, ref = base / "units", base / "reference"
    model_file = str(read_day(exp / "day_001.h5").model["model_file"])
    for folder in (units, ref):
        folder.mkdir()
        shutil.copy(exp / model_file, folder / model_file)     # the designing model, beside the days
    for day in (0, 1):
        name = f"day_{day:03d}.h5"
        sorting, first = _sorting(read_day(exp / name))
        sorting.save(folder=base / f"sorting_{day}")
        assert main(["day", "units", str(exp / name), "--sorting", str(base / f"sorting_{day}"),
                     "--out", str(units / name), "--first-sample", str(first)]) == 0
        standing = [ORDER.index(200 + c) for c in range(3)]  # the main unit has the most spikes
        shutil.copy(exp / name, ref / name)
        with h5py.File(ref / name, "r+") as h5:          # the same counts, in channel columns
            h5["spikes/counts"][:] = read_day(units / name).counts[:, standing]
    return exp, units, ref


def _without(numbers: dict, *keys: str) -> dict:
    return {k: v for k, v in numbers.items() if k not in keys}


@pytest.mark.slow
def test_units_analysis_is_the_analysis_of_the_same_counts(folders):
    exp, units, ref = folders
    standing = np.array([ORDER.index(200 + c) for c in range(3)])
    u1 = read_day(units / "day_001.h5")
    targets = read_day(exp / "day_001.h5").model["target_channels"]
    assert list(u1.model["target_channels"]) == list(standing[targets])
    assert list(u1.model["target_channels_recorded"]) == list(targets)
    for folder in (units, ref):
        assert main(["day", "analyze", "--day", "1", "--out", str(folder), "--no-progress"]) == 0
    a_units = json.loads((units / "day_001.analysis.json").read_text())
    a_ref = json.loads((ref / "day_001.analysis.json").read_text())
    # the sites are the units standing for the targeted channels, the truth (per channel) is not claimed
    assert a_units["sites"] == [int(standing[c]) for c in a_ref["sites"]] != a_ref["sites"]
    assert a_units.get("truth") is None and a_ref["truth"]
    assert a_units["model_units_abs"] and a_units["model_units_abs"][0]["value"] > 0
    fig_u, fig_r = a_units.pop("figure_data"), a_ref.pop("figure_data")
    assert fig_u["targeted"]["sites"] == a_units["sites"]
    assert _without(fig_u["targeted"], "sites") == _without(fig_r["targeted"], "sites")
    assert _without(a_units, "sites", "truth", "identity") == _without(a_ref, "sites", "truth", "identity")


def test_report_on_a_units_experiment(folders):
    _, units, _ = folders
    assert main(["report", str(units), "--no-progress"]) == 0
    summary = (units / "report" / "summary.md").read_text()
    analysis = json.loads((units / "day_001.analysis.json").read_text())
    assert "sites are offline-sorted units" in summary and "Ground truth" not in summary
    raw = analysis["targeted_abs"][0]
    # 2 sites x 2 images: too few of either for a two-level interval (the headline has none either)
    assert raw["lo"] is None and raw["hi"] is None
    assert f"raw |dr| {_e(raw)}" in summary


def test_units_against_a_screening_day_of_other_sites_is_refused(folders, tmp_path, capsys):
    exp, units, _ = folders
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(exp / "day_000.h5", mixed / "day_000.h5")          # channels on day 0, units on day 1
    shutil.copy(units / "day_001.h5", mixed / "day_001.h5")
    capsys.readouterr()
    assert main(["day", "analyze", "--day", "1", "--out", str(mixed), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different sites" in err and "itloop day units" in err and err.count("\n") == 1, err
    assert not (mixed / "day_001.analysis.json").exists()
