"""End to end on loopback, the live path with a fixating monkey: a real presenter (PsychoPy
under Xvfb) enforcing fixation on the simulated eye (``itloop sim-gaze`` over LSL, read by
the presenter), the simulated acquisition system (``itloop sim-rig``, Open Ephys broadcaster
format, watching the presenter's flips), rewards through the serial driver into a real pty,
and ``itloop day run --backend rig``.

Breaks are injected into the eye stream at known LSL times. Checked from the presenter's own
flip log and per-frame gaze records (tests.fixation_checks): every abort is a blank frame
drawn right after the first check that saw an injected breaking sample; the aborted trials'
unshown presentations were re-queued and the day completed; the eye trace is in the day file
on the acquisition clock (checked against sim-rig's true clock); one reward per completed
trial in the day file and on the serial line; and the recorded onsets and spike counts still
match sim-rig's truth. No assertion depends on wall-clock frame timing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rig.cli import main
from rig.link.client import PresenterClient
from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.fixation_checks import check_aborts_on_next_frame, check_requeued, drain_pty
from tests.live_rig import compare_with_truth, rig_config, start_presenter, start_sim_rig
from tests.lsl_local import unique_stream  # sets LSLAPICFG before pylsl is used; children inherit it

pytestmark = [
    pytest.mark.xvfb, pytest.mark.slow, pytest.mark.timeout(600),
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`"),
]
pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install psychopy)")
pytest.importorskip("pylsl", reason="pip install pylsl")

BREAK_AFTER_START_S = 0.45     # injected break, s after the start command (LSL clock): 50 ms acquire + 2 of 4 presentations
BREAK_EVERY, N_BREAKS = 2, 4   # into every 2nd trial started, 4 in all
REWARD_MS = 80.0


def test_live_rig_fixation_breaks_abort_on_the_next_frame_eye_trace_and_rewards(tmp_path, capsys, monkeypatch):
    import pylsl

    stream = unique_stream()
    master, slave = os.openpty()
    cfg, ports = rig_config(tmp_path, drop=0.05, repeats=3, system="openephys", extra=(
        f'[eye]\nsource = "lsl"\nlsl_stream = "{stream}"\nresolve_timeout_s = 60.0\n'
        "[fixation]\nlost_ms = 2000.0\nacquire_timeout_ms = 20000.0\n"
        f'[reward]\ndriver = "serial"\nport = "{os.ttyname(slave)}"\nmode = "command"\nduration_ms = {REWARD_MS}\n'))
    out = tmp_path / "exp"
    gaze = subprocess.Popen([sys.executable, "-m", "rig.cli", "sim-gaze", "--name", stream, "--seconds", "400",
                             "--jitter", "0.05", "--drift", "0.1", "--away-deg", "8", "--away-ms", "250"],
                            stdin=subprocess.PIPE, stderr=open(tmp_path / "gaze.log", "w"), text=True)
    procs = [gaze]
    results, injected, starts = [], [], []
    start, finish = PresenterClient.start_trial, PresenterClient.finish_trial

    def start_and_inject(self, *a, **kw):
        # a break at a known LSL time inside this trial's RSVP (a presenter slow to start makes it fall in the
        # fixation acquire instead: then it only delays the trial, and the count of aborts below shows it)
        if len(starts) % BREAK_EVERY == 0 and len(injected) < N_BREAKS:
            injected.append(pylsl.local_clock() + BREAK_AFTER_START_S)
            gaze.stdin.write(f"break_at {injected[-1]!r}\n")
            gaze.stdin.flush()
        starts.append(a)
        return start(self, *a, **kw)

    def finish_and_keep(self, *a, **kw):
        results.append(finish(self, *a, **kw))
        return results[-1]

    monkeypatch.setattr(PresenterClient, "start_trial", start_and_inject)
    monkeypatch.setattr(PresenterClient, "finish_trial", finish_and_keep)
    try:
        procs.append(start_sim_rig(cfg, out, tmp_path))
        procs.append(start_presenter(cfg, ports, tmp_path / "presenter.log"))
        rc = main(["day", "run", "--day", "0", "--backend", "rig", "--out", str(out), "--config", str(cfg), "--no-progress"])
    finally:
        for proc in reversed(procs):              # the presenter first: every reward it sent is in the pty now
            proc.kill()
            proc.wait(timeout=30)
        pulses = drain_pty(master)
        os.close(master)
        os.close(slave)
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err + (tmp_path / "presenter.log").read_text()[-3000:]
    path = out / "day_000.h5"
    summary, problems = check_day(path)
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "rig"
    assert summary["spike_source"].startswith("RECORDED by Open Ephys GUI")

    # ---- every abort came on the frame after the check that first saw an injected breaking sample
    aborted = [r for r in results if r.aborted]
    assert len(aborted) >= 2, f"only {len(aborted)} of the injected breaks fell in an RSVP"
    lat = check_aborts_on_next_frame(aborted, injected)
    print(f"\n{len(injected)} breaks injected, {len(aborted)} fell in an RSVP and aborted it; breaking sample -> "
          f"blank flip {np.min(lat):.1f}-{np.max(lat):.1f} ms (median {np.median(lat):.1f}) at 30 Hz; {len(results)} trials")

    # ---- aborted (and unsynchronised) presentations were re-queued; the day completed
    d = read_day(path)
    pres, trials = d.presentations, d.trials
    assert int(np.sum(~trials["fixation_ok"])) == len(aborted)
    broken = ~trials["fixation_ok"]
    assert (trials["completed"][broken] < trials["n_planned"][broken]).all()   # cut short: the rest went back in the queue
    check_requeued(pres, summary["planned_presentations"])

    # ---- recorded onsets and counts still match sim-rig's truth (aborted trials' shown images included)
    res = compare_with_truth(path, tmp_path / "truth.jsonl")
    print({k: v for k, v in res.items() if k != "errors_s"}, "max onset error ms", 1e3 * np.abs(res["errors_s"]).max())
    assert res["unmatched"] == 0 and res["n_valid"] == summary["planned_presentations"]
    assert np.abs(res["errors_s"]).max() < 0.5e-3
    assert res["bad_counts"] == 0 and res["dropped_rows_valid"] == 0

    # ---- the eye trace is in the day file, per trial, on the acquisition clock
    _d = read_day(path)
    eye, rewards = _d.eye, _d.rewards
    assert set(np.unique(eye["trial_index"])) == set(trials["trial_index"].tolist())
    for ti, completed, planned in zip(trials["trial_index"], trials["completed"], trials["n_planned"]):
        sel = eye["trial_index"] == ti
        # at least the acquire time (50 ms at 500 Hz), and the whole RSVP for a completed trial
        assert sel.sum() >= (20 if completed < planned else 20 + planned * 0.2 * 500 * 0.9), (ti, sel.sum())
        assert np.all(np.diff(eye["t_presenter_s"][sel]) > 0)
    ok = np.isfinite(eye["t_acq_s"])
    assert ok.mean() > 0.5
    # sim-rig's true presenter -> acquisition clock (one presenter process: one line, photodiode jitter <= 1 ms)
    truth = [json.loads(x) for x in (tmp_path / "truth.jsonl").read_text().splitlines() if x.strip()]
    tp, ta = np.array([r["t_presenter"] for r in truth]), np.array([r["t_acq_true"] for r in truth])
    slope, icpt = np.polyfit(tp, ta, 1)
    np.testing.assert_allclose(eye["t_acq_s"][ok], slope * eye["t_presenter_s"][ok] + icpt, atol=2e-3)
    assert np.median(np.hypot(eye["x_deg"], eye["y_deg"])) < 0.5     # mostly on the fixation point

    # ---- one reward per completed trial: in the day file and on the serial line
    n_completed = int(np.sum(trials["completed"] == trials["n_planned"]))
    assert len(rewards["kind"]) == n_completed and (rewards["kind"] == 0).all()
    assert np.allclose(rewards["duration_ms"], REWARD_MS)
    rok = np.isfinite(rewards["t_acq_s"])
    assert rok.mean() > 0.5
    np.testing.assert_allclose(rewards["t_acq_s"][rok], slope * rewards["t_presenter_s"][rok] + icpt, atol=2e-3)
    assert pulses.count(f"R {REWARD_MS:g}\n".encode()) == n_completed, pulses
