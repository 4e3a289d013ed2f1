"""Day files: round trip, crash safety (SIGKILL), resume without duplicates, never overwrite."""
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from rig.backend import SessionInfo
from rig.session.runner import run_session
from rig.session.schedule import Schedule, build_schedule
from rig.store.dayfile import DayFileError, DayWriter
from rig.store.journal import journal_path
from rig.store.origin import LIVE, Origin
from rig.store.reader import read_day
from rig.store.repair import check_day, recover_day
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet
from tests.fakes import CountingBackend
from tests.helpers import wait_for_journal_lines

ROOT = Path(__file__).resolve().parents[1]


def _stimuli(n=6, size=16):
    """n clean images and one perturbed child of each, with every provenance column filled."""
    clean = builtin_images(n, size, 0)
    kids = np.clip(clean.astype(int) + 3, 0, 255).astype(np.uint8)
    grid = np.array([2.0, 0.5])           # the planned grid, not sorted: its order is the plan's
    ei = np.arange(n) % 2
    return StimulusSet(np.concatenate([clean, kids]), kind=["clean"] * n + ["targeted"] * n,
                       parent=np.r_[np.full(n, -1), np.arange(n)], site=np.r_[np.full(n, -1), np.arange(n) % 3],
                       epsilon_requested=np.r_[np.zeros(n), grid[ei]], epsilon_index=np.r_[np.full(n, -1), ei],
                       epsilons=grid,
                       epsilon_shown=np.r_[np.zeros(n), 0.98 * grid[ei]],
                       direction=np.r_[np.zeros(n), np.where(np.arange(n) % 2, 1, -1)],
                       predicted_change=np.r_[np.full(n, np.nan), np.linspace(-1, 1, n)],
                       budget_passes=np.r_[np.zeros(n), np.full(n, 40)])


def _new(path, ss, repeats=3, k=4, n_ch=3):
    sch = build_schedule(ss.parent, repeats, k, 0, 0.3)
    w = DayWriter.create(path, config_text="[rsvp]\nstim_on_ms = 100.0\n", day=1, session_id="test", stimuli=ss,
                         schedule_stim_index=sch.stim_index, presentations_per_trial=k, seconds_per_presentation=0.3,
                         channel_names=[f"ch{i}" for i in range(n_ch)], backend="counting", window_ms=(70.0, 170.0),
                         origin=Origin(LIVE))
    return w, sch


def test_round_trip_counts_provenance_and_clock(tmp_path):
    ss = _stimuli()
    w, sch = _new(tmp_path / "d.h5", ss)
    be = CountingBackend(abort_at={1: 2}, drop_at={(3, 1)})
    res = run_session(be, w, ss, sch, SessionInfo("test", 1), (70.0, 170.0))
    w.close()
    assert res.complete and be.opened == 1 and be.closed == 1
    d = read_day(tmp_path / "d.h5")
    assert d.complete and d.config_text.startswith("[rsvp]")
    # counts: exactly the known number of spikes in the window, none of those outside it
    expected = np.array([be.expected(s) for s in range(len(ss))])
    assert np.array_equal(d.mean_responses(), expected)
    assert d.responses_by_repeat().shape[0] == 3
    # provenance and pixels survive
    assert np.array_equal(d.stimuli.pixels, ss.pixels) and d.stim_ids == ss.ids
    for c in StimulusSet.COLUMNS:
        a, b = getattr(d.stimuli, c), getattr(ss, c)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), c
    assert np.array_equal(d.stimuli.epsilons, ss.epsilons)   # the planned grid, once, in the plan's order
    # the aborted trial's unshown presentations and the dropped frame are invalid and were re-shown
    p = d.presentations
    assert (~p["valid"]).sum() == 2 + 1 and not d.trials["fixation_ok"][1]
    assert sorted(p["planned_index"][p["valid"]]) == list(range(len(sch)))
    # onsets on the acquisition clock = the fake's offset + drift
    shown = p["shown"]
    assert np.allclose(p["onset_acq_s"][shown], be.acq(p["onset_presenter_s"][shown]), atol=1e-9)
    with h5py.File(tmp_path / "d.h5") as h5:
        assert np.isclose(h5["sync"].attrs["fit_drift"], 30e-6, rtol=1e-6)
        assert h5["spikes/counts"].attrs["unit"] == "spikes" and "description" in h5["stimuli/pixels"].attrs
    summary, problems = check_day(tmp_path / "d.h5")
    assert problems == [] and summary["valid_presentations"] == len(sch) and summary["aborted_trials"] == 1


def test_never_overwritten(tmp_path):
    ss = _stimuli()
    w, _ = _new(tmp_path / "d.h5", ss)
    w.close()
    before = (tmp_path / "d.h5").read_bytes()
    with pytest.raises(DayFileError, match="already exists"):
        _new(tmp_path / "d.h5", ss)
    assert (tmp_path / "d.h5").read_bytes() == before


def test_resume_after_max_trials_has_no_duplicates(tmp_path):
    ss = _stimuli()
    w, sch = _new(tmp_path / "d.h5", ss)
    run_session(CountingBackend(abort_at={0: 1}), w, ss, sch, SessionInfo("t", 1), (70, 170), max_trials=3)
    w.close()
    assert read_day(tmp_path / "d.h5").attrs["status"] == "recording"
    w = DayWriter.resume(tmp_path / "d.h5")
    assert w.next_trial_index == 3
    be = CountingBackend()
    run_session(be, w, ss, sch, SessionInfo("t", 1), (70, 170))
    w.close()
    d = read_day(tmp_path / "d.h5")
    assert d.complete
    vp = d.presentations["planned_index"][d.presentations["valid"]]
    assert sorted(vp) == list(range(len(sch)))
    assert list(d.trials["trial_index"]) == list(range(len(d.trials["trial_index"])))
    with pytest.raises(DayFileError, match="complete"):
        DayWriter.resume(tmp_path / "d.h5")


KILLER = textwrap.dedent("""
    import sys, time
    from tests.test_dayfile import _stimuli, _new
    from tests.fakes import CountingBackend
    from rig.session.runner import run_session
    from rig.backend import SessionInfo

    class Stalling(CountingBackend):
        # runs freely, then hangs inside trial `stall_at` (bounded), so the kill always comes mid-session
        def run_trial(self, trial):
            if trial.trial_index >= int(sys.argv[2]):
                time.sleep(120)
            return super().run_trial(trial)

    ss = _stimuli(30, 8)
    w, sch = _new(sys.argv[1], ss, repeats=20, k=5, n_ch=8)
    run_session(Stalling(8), w, ss, sch, SessionInfo("t", 1), (70, 170))
""")


@pytest.mark.parametrize("after_trials", [2, 12])
def test_sigkill_mid_session_loses_nothing_committed_and_resume_completes(tmp_path, after_trials):
    """Killed at a random moment after ``after_trials`` trials (the child stalls 30 trials
    later, so the session can never finish first): nothing committed is lost."""
    path = tmp_path / "d.h5"
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(path), str(after_trials + 30)], cwd=ROOT)
    try:
        assert wait_for_journal_lines(journal_path(path), after_trials, timeout_s=120), "the session never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    d = read_day(path)  # opens after a SIGKILL
    journal_trials = sum(1 for _ in open(journal_path(path)))
    n = len(d.trials["trial_index"])
    assert 0 < n and not d.complete  # killed mid-session
    assert journal_trials - n in (0, 1)  # at most the trial in flight is not yet in HDF5
    assert check_day(path)[1] == []
    # every trial completed before the kill is intact: counts equal the known answer
    ss = _stimuli(30, 8)
    be = CountingBackend(8)
    v = d.presentations["valid"]
    exp = np.array([be.expected(s) for s in d.presentations["stim_index"][v]])
    assert np.array_equal(d.counts[v], exp)
    # resume completes the day with no duplicate presentation
    w = DayWriter.resume(path)
    assert w.committed_trials == journal_trials  # the journal's extra trial was replayed
    sch_order = d.schedule_stim_index
    run_session(CountingBackend(8), w, ss, Schedule(sch_order, 5, 0.3), SessionInfo("t", 1), (70, 170))
    w.close()
    d2 = read_day(path)
    vp = d2.presentations["planned_index"][d2.presentations["valid"]]
    assert d2.complete and sorted(vp) == list(range(len(sch_order)))
    assert check_day(path)[1] == []


def test_truncated_file_is_reported_and_recover_rebuilds_from_journal(tmp_path):
    ss = _stimuli()
    w, sch = _new(tmp_path / "d.h5", ss)
    run_session(CountingBackend(), w, ss, sch, SessionInfo("t", 1), (70, 170), max_trials=4)
    w.close()
    good = read_day(tmp_path / "d.h5")
    # keep a copy of the header as a "plan", then truncate the day file
    plan = tmp_path / "plan.h5"
    plan.write_bytes((tmp_path / "d.h5").read_bytes())
    data = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "d.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(DayFileError, match="truncated or damaged.*recover"):
        check_day(tmp_path / "d.h5")
    recover_day(tmp_path / "d.h5", plan_path=plan)
    rebuilt = read_day(tmp_path / "d.h5")
    assert np.array_equal(rebuilt.counts, good.counts)
    assert np.array_equal(rebuilt.presentations["planned_index"], good.presentations["planned_index"])
    assert any(p.name.startswith("d.h5.damaged-") for p in tmp_path.iterdir())  # the damaged file is kept


def test_not_an_itloop_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(DayFileError, match="not an itloop day file"):
        read_day(tmp_path / "other.h5")


def strip_epsilon_index(path) -> None:
    """Make ``path`` look like a day file written before /stimuli/epsilon_index existed (schema 1)."""
    with h5py.File(path, "r+") as h5:
        h5.attrs["schema_version"] = 1
        del h5["stimuli/epsilon_index"]
        for k in ("epsilons", "epsilons_unit"):
            del h5["stimuli"].attrs[k]


def test_day_file_without_epsilon_index_reads_with_the_grid_of_its_requested_epsilons(tmp_path):
    ss = _stimuli()
    w, _ = _new(tmp_path / "old.h5", ss)
    w.close()
    strip_epsilon_index(tmp_path / "old.h5")
    st = read_day(tmp_path / "old.h5").stimuli
    kids = ss.kind != "clean"
    assert st.epsilons.tolist() == [0.5, 2.0]        # the distinct requested values, ascending
    assert np.all(st.epsilon_index[~kids] == -1)
    assert np.array_equal(st.epsilons[st.epsilon_index[kids]], ss.epsilon_requested[kids])

