"""`itloop day run --backend presenter`: the CLI drives a real presenter process (Xvfb)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.configs import run_presenter_day

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")



def test_day_run_through_the_presenter_backend(tmp_path, capsys):
    rc, _ = run_presenter_day(tmp_path, n_clean=6, n_channels=3)
    assert rc == 0, capsys.readouterr()
    path = tmp_path / "exp" / "day_000.h5"
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "presenter"
    d = read_day(path)
    p = d.presentations
    assert d.origin.kind == "presenter+sim" and d.origin.simulated
    assert (p["frames_on"][p["shown"]] == 6).all() and (p["frames_mask"][p["shown"]] == 6).all()
    # onsets are the presenter's flip stamps: increasing within each trial (their spacing is wall-clock
    # time of a sleep-paced Xvfb, not asserted; the frame counts above are the presenter's own)
    first = p["position"] == 0
    shown_pairs = (p["shown"][1:] & p["shown"][:-1]) & ~first[1:]
    assert (np.diff(p["onset_presenter_s"])[shown_pairs] > 0).all()
