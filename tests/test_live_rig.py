"""End to end on loopback: a real presenter (Xvfb) + the simulated acquisition system (a
separate process speaking the Open Ephys broadcaster format, or LSL) + ``itloop day run --backend rig``.

The recorded onsets and counts are compared with the simulator's own truth file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.live_rig import compare_with_truth, rig_config, run_live_day

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")


@pytest.mark.slow
@pytest.mark.parametrize("system", ["openephys", "lsl"])
def test_day_recorded_through_a_live_source_matches_the_simulators_truth(tmp_path, capsys, system):
    cfg, ports = rig_config(tmp_path, system=system)
    rc, text, err, path = run_live_day(tmp_path, capsys, cfg, ports)
    assert rc == 0, text + err + (tmp_path / "simrig.log").read_text()
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "rig"
    name = {"openephys": "Open Ephys GUI", "lsl": "Lab Streaming Layer"}[system]
    assert summary["spike_source"].startswith(f"RECORDED by {name}")
    assert "SIMULATED itloop sim-rig" in summary["spike_source"] and "30000 Hz" in summary["spike_source"]
    assert summary["origin"] == "live"
    assert text.splitlines()[[i for i, x in enumerate(text.splitlines()) if x.startswith("origin")][0]].startswith("origin     live; RECORDED")
    res = compare_with_truth(path, tmp_path / "truth.jsonl")
    print({k: v for k, v in res.items() if k != "errors_s"}, "max onset error ms", 1e3 * np.abs(res["errors_s"]).max())
    assert res["unmatched"] == 0 and res["n_valid"] == summary["planned_presentations"]
    assert np.abs(res["errors_s"]).max() < 0.5e-3
    assert res["bad_counts"] == 0
    assert res["n_dropped"] >= 1 and res["dropped_rows_valid"] == 0   # a lost pulse made its presentation invalid ...
    # ... and was shown again: the day is complete, every planned slot valid once (check_day found no duplicates)
    seg = summary["clock_segments"]
    # one presenter session, one segment; (a few seconds of pulses cannot pin 50 ppm down: the onset error above is the test)
    assert len(seg) == 1 and seg[0]["label"].startswith("presenter-") and "/run" in seg[0]["label"] and seg[0]["max_abs_residual_s"] < 0.5e-3
    # offline replay of the recorded day redoes the per-segment clock fit and the counts identically
    from rig.backends.replay import replay_day

    again = read_day(replay_day(path, tmp_path / "replay.h5"))
    d = read_day(path)
    assert np.array_equal(again.presentations["valid"], d.presentations["valid"])
    assert np.allclose(again.presentations["onset_acq_s"], d.presentations["onset_acq_s"], atol=1e-9, equal_nan=True)
    assert np.array_equal(again.counts, d.counts, equal_nan=True)
    if system == "lsl":
        return
    http = [json.loads(x) for x in (tmp_path / "http.jsonl").read_text().splitlines()]
    messages = [h["message"] for h in http if "message" in h]
    assert len(messages) == summary["trials"] and all(m.startswith("itloop session=") for m in messages)
    assert {"status": "RECORD"} in http and http[-1] == {"status": "ACQUIRE"}
