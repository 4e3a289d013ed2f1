"""The data's origin as data: written at record time, read by one function, the same answer
in analysis, ``day check`` and NWB; ground truth for every day whose spikes are simulated."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rig.cli import main
from rig.store.nwb import data_origin
from rig.store.origin import LIVE, PRESENTER_SIM, SIM, UNKNOWN, Origin, legacy_origin, read_origin
from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.configs import free_port

TINY = Path(__file__).resolve().parent / "data" / "tiny.toml"


def test_read_origin_reads_the_attribute_and_a_replays_source():
    assert read_origin({"origin": "presenter+sim"}) == Origin(PRESENTER_SIM)
    o = read_origin({"origin": b"sim", "replayed_from": "0c4f"})
    assert o.simulated and o.replayed and o.replayed_from == "0c4f" and not o.live
    assert read_origin({}).kind == UNKNOWN and not read_origin({}).simulated
    with pytest.raises(ValueError, match="origin"):
        read_origin({"origin": "simulated monkey"})


@pytest.mark.parametrize("attrs, kind", [
    # the four sentences older writers stored (rig/backends/factory.py, rig/loop/record.py before schema 2)
    ({"backend": "sim", "spike_source": "SIMULATED monkey (sim backend: no presenter, no acquisition system)"}, SIM),
    ({"backend": "presenter", "spike_source": "SIMULATED monkey (in-process; no acquisition system: these spikes "
                                              "were not recorded)"}, PRESENTER_SIM),
    ({"backend": "rig", "spike_source": "RECORDED by Open Ephys GUI (Event Broadcaster) at tcp://x; streams -; 30000 Hz"},
     LIVE),
    ({"backend": "replay", "replayed_from": "/data/day_001.h5", "replayed_from_backend": "presenter",
      "replayed_from_identifier": "abc", "spike_source": "SIMULATED monkey (in-process; ...)"}, PRESENTER_SIM),
    ({"backend": "counting"}, UNKNOWN),
])
def test_older_files_get_their_origin_from_the_old_sentence(attrs, kind):
    o = legacy_origin(attrs)
    assert o.kind == kind
    assert o.replayed_from == ("abc" if "replayed_from" in attrs else "")



def _analysis(folder: Path, day: int) -> dict:
    return json.loads((folder / f"day_{day:03d}.analysis.json").read_text())


@pytest.mark.slow
@pytest.mark.xvfb
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`")
def test_presenter_and_replayed_days_get_ground_truth(tmp_path):
    pytest.importorskip("psychopy", reason="the presenter needs PsychoPy")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.read_text() + f"""
[rsvp]
presentations_per_trial = 4
fixation_acquire_ms = 50.0
inter_trial_ms = 100.0
[presenter]
endpoint = "{endpoint}"
heartbeat_s = 0.2
dead_after_s = 5.0
""")
    exp = tmp_path / "exp"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(exp), "--config", str(cfg),
                 "--no-progress"]) == 0
    assert main(["day", "plan", "--day", "1", "--out", str(exp), "--config", str(cfg), "--no-progress"]) == 0
    log = open(tmp_path / "presenter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--endpoint", endpoint, "--windowed", "320x240",
                             "--refresh-hz", "60", "--pace"], stdout=log, stderr=subprocess.STDOUT)
    try:
        rc = main(["day", "run", "--day", "1", "--backend", "presenter", "--out", str(exp), "--config", str(cfg),
                   "--no-progress"])   # connections come from the user's config, never from a data file
    finally:
        proc.kill()
        proc.wait(timeout=20)
        log.close()
    assert rc == 0
    assert main(["day", "analyze", "--day", "1", "--out", str(exp), "--no-progress"]) == 0
    # the same day replayed offline into a second folder (its day 0, model and truth cache beside it)
    rep = tmp_path / "rep"
    rep.mkdir()
    for f in exp.iterdir():
        if not f.name.startswith("day_001") and f.is_file():
            shutil.copy(f, rep / f.name)
    assert main(["day", "replay", str(exp / "day_001.h5"), "--out", str(rep / "day_001.h5"), "--no-progress"]) == 0
    assert main(["day", "analyze", "--day", "1", "--out", str(rep), "--no-progress"]) == 0

    sim_day, presenter_day, replayed_day = read_day(exp / "day_000.h5"), read_day(exp / "day_001.h5"), read_day(rep / "day_001.h5")
    assert sim_day.origin == Origin(SIM)
    assert presenter_day.origin == Origin(PRESENTER_SIM) and presenter_day.attrs["backend"] == "presenter"
    assert replayed_day.origin == Origin(PRESENTER_SIM, replayed_from=presenter_day.attrs["identifier"])
    for folder in (exp, rep):      # both closed-loop days: the white-box truth of the simulated sites
        truth = _analysis(folder, 1)["truth"]
        assert all(f is not None and 0 < f["value"] for f in truth["fraction_true_achieved"])
    # one answer everywhere: the day file, `day check`, the NWB export, the analysis
    for d in (sim_day, presenter_day, replayed_day):
        summary, _ = check_day(d.path)
        nwb = data_origin(d)
        assert (summary["origin"], summary["replayed_from"]) == (d.origin.kind, d.origin.replayed_from)
        assert nwb.simulated == d.origin.simulated is True and nwb.replayed_from == d.origin.replayed_from
    assert "presenter" in data_origin(presenter_day).text


def test_an_older_file_is_read_with_its_derived_origin(tmp_path):
    """A schema-1 day file (origin only as the spike_source sentence) is upgraded when read."""
    folder = tmp_path / "exp"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(folder), "--config", str(TINY),
                 "--no-progress"]) == 0
    path = folder / "day_000.h5"
    with h5py.File(path, "r+") as h5:
        for k in ("origin", "experiment_uuid"):
            del h5.attrs[k]
        h5.attrs["schema_version"] = 1
        h5.attrs["spike_source"] = "SIMULATED monkey (sim backend: no presenter, no acquisition system)"
    d = read_day(path)
    assert d.origin == Origin(SIM) and d.experiment_uuid == "" and data_origin(d).simulated
    assert check_day(path)[0]["origin"] == SIM
    assert np.isfinite(d.counts[d.presentations["valid"]]).all()


def test_every_dataset_has_unit_and_description(tmp_path):
    """A recorded day and a plan with a designing model: /config_toml and /model/* included."""
    folder = tmp_path / "exp"
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(folder), "--config", str(TINY),
                 "--no-progress"]) == 0
    assert main(["day", "plan", "--day", "1", "--out", str(folder), "--no-progress"]) == 0
    missing = []
    for path in (folder / "day_000.h5", folder / "day_001.plan.h5"):
        with h5py.File(path, "r") as h5:
            h5.visititems(lambda name, obj, path=path: missing.append(f"{path.name}:{name}") if isinstance(obj, h5py.Dataset)
                          and not ({"unit", "description"} <= set(obj.attrs)) else None)
            if path.name.endswith("plan.h5"):
                assert "coef" in h5["model"] and h5["model/coef"].attrs["unit"]
    assert missing == []
