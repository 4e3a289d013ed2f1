"""SIGKILL of each live-rig process (controller, presenter, simulated acquisition) at random
moments while a day records: after resume, no completed trial is lost or duplicated, every
valid presentation matches the simulator's truth, and presentations shown while the
acquisition was down are invalid and re-queued.

``ITLOOP_RIG_KILLS`` sets the number of kills (default 20, spread over the three processes;
fewer for a quick run)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rig.store.journal import read_journal
from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.live_rig import compare_with_truth, rig_config, start_presenter, start_sim_rig

pytestmark = [
    pytest.mark.xvfb,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")


def _controller(cfg, out, tmp_path, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "rig.cli", "day", "run", "--day", "0", "--backend", "rig", "--out", str(out), "--no-progress"]
    # a resume takes the experiment's settings from the day file, its connections from --config (issue 25)
    argv += ["--resume", "--config", str(cfg)] if resume else ["--config", str(cfg)]
    return subprocess.Popen(argv, stdout=open(tmp_path / "controller.log", "a"), stderr=subprocess.STDOUT)


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_each_process_at_random_moments(tmp_path):
    n_kills = int(os.environ.get("ITLOOP_RIG_KILLS", "20"))
    rng = np.random.default_rng(11)
    cfg, ports = rig_config(tmp_path, drop=0.02, repeats=max(4, n_kills))
    out = tmp_path / "exp"
    journal = out / "day_000.h5.journal"
    sim = start_sim_rig(cfg, out, tmp_path)
    pres = start_presenter(cfg, ports, tmp_path / "presenter.log")
    ctrl = _controller(cfg, out, tmp_path, resume=False)
    kills = {"controller": 0, "presenter": 0, "acquisition": 0}
    try:
        for i in range(n_kills):
            victim = ("controller", "presenter", "acquisition")[i % 3]
            target = _lines(journal) + int(rng.integers(1, 3))
            deadline = time.monotonic() + 240
            while _lines(journal) < target and ctrl.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "controller.log").read_text()
                time.sleep(0.02)
            if ctrl.poll() is not None and (out / "day_000.h5").exists() and read_day(out / "day_000.h5").complete:
                break
            time.sleep(float(rng.uniform(0, 1.0)))              # a random moment within the next trial
            kills[victim] += 1
            if victim == "controller":
                ctrl.send_signal(signal.SIGKILL)
                ctrl.wait(timeout=30)
                ctrl = _controller(cfg, out, tmp_path, resume=True)
            elif victim == "presenter":
                pres.send_signal(signal.SIGKILL)
                pres.wait(timeout=30)
                ctrl.wait(timeout=120)                          # the controller notices the lost presenter and stops
                pres = start_presenter(cfg, ports, tmp_path / "presenter.log")
                ctrl = _controller(cfg, out, tmp_path, resume=True)
            else:
                sim.send_signal(signal.SIGKILL)
                sim.wait(timeout=30)
                sim = start_sim_rig(cfg, out, tmp_path)       # the controller records on; the gap's trials are invalid
        for _ in range(3):                                      # let the day finish (a late presenter kill may end a run)
            ctrl.wait(timeout=400)
            if read_day(out / "day_000.h5").complete:
                break
            ctrl = _controller(cfg, out, tmp_path, resume=True)
    finally:
        for proc in (ctrl, pres, sim):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)
    log = (tmp_path / "controller.log").read_text()
    path = out / "day_000.h5"
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete", log
    assert sum(kills.values()) >= min(n_kills, 3) and all(kills.values()), kills
    # nothing lost, nothing duplicated: the journal and the file hold the same trials, once each
    rows = read_journal(str(path) + ".journal")
    d = read_day(path)
    assert [r.trial.trial_index for r in rows] == d.trials["trial_index"].tolist()
    assert len(set(d.trials["trial_index"].tolist())) == len(d.trials["trial_index"])
    res = compare_with_truth(path, tmp_path / "truth.jsonl")
    # every valid presentation was seen by the (running) simulator: none recorded during its absence
    assert res["unmatched"] == 0 and res["dropped_rows_valid"] == 0
    assert np.abs(res["errors_s"]).max() < 0.5e-3 and res["bad_counts"] == 0
    # a restarted presenter is a new clock segment: along the committed sync pulses, each presenter
    # session's pulses form one run that no later session continues, and there are no more sessions
    # than presenters started (a restarted presenter whose trials were all unaligned adds no pulses,
    # so the count is an upper bound, not an equality)
    owners = [str(x).split("/")[0] for x in d.sync_segment]
    runs = [o for i, o in enumerate(owners) if i == 0 or o != owners[i - 1]]
    assert len(runs) == len(set(runs)), runs
    assert 1 <= len(runs) <= 1 + kills["presenter"] and all(o.startswith("presenter-") for o in runs), runs
    labels = {s["label"].split("/")[0] for s in summary["clock_segments"] if s["n_pairs"]}
    assert labels == set(runs), (labels, runs)
    assert len(runs) >= min(2, kills["presenter"]), runs   # restarted presenters did record aligned trials
    print(kills, {k: v for k, v in res.items() if k != "errors_s"}, "max onset error ms", 1e3 * np.abs(res["errors_s"]).max())
