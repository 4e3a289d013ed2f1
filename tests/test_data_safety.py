"""Nothing lost: a full disk, a torn journal, a damaged file, a file still being recorded.

A full disk is simulated in-process (the journal's file or the HDF5 table writer raises
``OSError(ENOSPC)`` at a chosen point) and, where ``unshare -m`` can mount a small tmpfs
(root on Linux), for real in a 3 MiB file system.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import rig.store.dayfile as dayfile
from rig.backend import SessionInfo
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.store.dayfile import DayFileError, DayWriter, DiskFullError, write_plan
from rig.store.journal import JournalError, journal_path, read_journal
from rig.store.lock import lock_path, locked_by
from rig.store.reader import read_day
from rig.store.repair import check_day, recover_day
from tests.fakes import CountingBackend
from tests.test_dayfile import _new, _stimuli

ROOT = Path(__file__).resolve().parents[1]


def _record(path, ss, max_trials=None, n_ch=3):
    w, sch = (DayWriter.resume(path), None) if path.exists() else _new(path, ss, n_ch=n_ch)
    sch = sch or read_day(path).schedule()
    with w:
        return run_session(CountingBackend(n_ch), w, ss, sch, SessionInfo("t", 1), (70, 170),
                           max_trials=max_trials)


def _assert_whole_day_right(path, ss, n_ch=3):
    """Complete, every planned slot recorded once, counts equal the known answer, file = journal."""
    d = read_day(path)
    v = d.presentations["valid"]
    assert d.complete and sorted(d.presentations["planned_index"][v]) == list(range(len(d.schedule_stim_index)))
    be = CountingBackend(n_ch)
    np.testing.assert_array_equal(d.counts[v], [be.expected(s) for s in d.presentations["stim_index"][v]])
    assert list(d.trials["trial_index"]) == list(range(len(d.trials["trial_index"])))
    summary, problems = check_day(path)
    assert problems == [] and summary["journal"].startswith(f"{len(d.trials['trial_index'])} trials")


class _FullAfter:
    """A file object that accepts ``budget`` more bytes, writes part of the next write, then ENOSPC."""

    def __init__(self, fh, budget):
        self.fh, self.budget = fh, budget

    def write(self, data):
        if len(data) > self.budget:
            self.fh.write(data[: self.budget])
            self.fh.flush()
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


# --------------------------------------------------------------------------- full disk
def test_enospc_in_the_journal_stops_with_one_line_and_resume_loses_nothing(tmp_path, monkeypatch):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=3)
    line = len(journal_path(path).read_bytes()) // 3
    real_open = DayWriter._open.__func__

    def open_nearly_full(cls, p):
        w = real_open(cls, p)
        w._journal._fh = _FullAfter(w._journal._fh, budget=2 * line + line // 2)   # dies inside the 3rd line
        return w

    monkeypatch.setattr(DayWriter, "_open", classmethod(open_nearly_full))
    with pytest.raises(DiskFullError) as exc:
        _record(path, ss)
    assert str(exc.value) == f"disk full: 5 trials safe in {path}; free space and --resume"
    monkeypatch.undo()
    assert read_day(path).attrs["committed_trials"] == 5
    assert journal_path(path).read_bytes()[-1:] != b"\n"          # a torn line was left ...
    _record(path, ss)                                              # ... and is cut, not merged, on resume
    _assert_whole_day_right(path, ss)
    assert any(p.name.startswith("d.h5.journal.torn-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("fail_at_call", [3, 17, 20])
def test_enospc_while_writing_hdf5_never_commits_the_trial(tmp_path, monkeypatch, fail_at_call):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=2)
    calls = {"n": 0}
    real_append = dayfile._append

    def append(ds, values):
        calls["n"] += 1
        if calls["n"] == fail_at_call:     # a chosen table of the 1st trial of this session (20 tables + trial row)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(ds, values)

    monkeypatch.setattr(dayfile, "_append", append)
    with pytest.raises(DiskFullError, match=rf"^disk full: 3 trials safe in {path}; free space and --resume$"):
        _record(path, ss)
    monkeypatch.undo()
    assert read_day(path).attrs["committed_trials"] == 2          # the half-written trial is not committed
    assert len(read_journal(journal_path(path))) == 3             # but it is safe in the journal
    assert check_day(path)[1] == []
    _record(path, ss)
    _assert_whole_day_right(path, ss)


def test_readback_mismatch_is_never_committed(tmp_path, monkeypatch):
    """If what the file returns differs from what was written, the trial is not committed."""
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=1)
    real = dayfile.stored_tables

    def lying(h5, row):
        t = real(h5, row)
        if row >= 1:                                                # the new trial reads back as zeros
            t["spikes/times_s"] = np.zeros_like(t["spikes/times_s"])
        return t

    monkeypatch.setattr(dayfile, "stored_tables", lying)
    with pytest.raises(DayFileError, match="differs from what was written.*2 trials are safe"):
        _record(path, ss)
    monkeypatch.undo()
    assert read_day(path).attrs["committed_trials"] == 1


def test_day_check_compares_every_committed_trial_with_the_journal(tmp_path):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=4)
    assert check_day(path)[1] == []
    with h5py.File(path, "r+") as h5:                 # zero one committed trial's raw spikes
        a, b = int(h5["trials/spikes_end"][1]), int(h5["trials/spikes_end"][2])
        h5["spikes/times_s"][a:b] = 0.0
    summary, problems = check_day(path)
    assert len(problems) == 1 and "1 committed trial(s) differ from the journal" in problems[0]
    assert "trial row 2" in problems[0]
    with pytest.raises(DayFileError, match="differ from the journal"):
        DayWriter.resume(path)                        # never continues a file that disagrees with its journal
    recover_day(path)
    assert check_day(path)[1] == []
    _record(path, ss)
    _assert_whole_day_right(path, ss)


REAL_FS = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=3m tmpfs "$FS"
    cd "$ROOT"
    set +e
    "$PY" - "$FS/d.h5" > "$OUT/first.txt" 2>&1 <<'EOF'
    import sys
    from pathlib import Path
    from tests.test_data_safety import _record
    from tests.test_dayfile import _stimuli
    from rig.store.dayfile import DayFileError
    try:
        _record(Path(sys.argv[1]), _stimuli(40, 32), n_ch=40)
    except DayFileError as exc:
        print("ERROR", exc)
    EOF
    mount -o remount,size=64m tmpfs "$FS"
    "$PY" - "$FS/d.h5" > "$OUT/second.txt" 2>&1 <<'EOF'
    import sys
    from pathlib import Path
    from tests.test_data_safety import _record
    from tests.test_dayfile import _stimuli
    _record(Path(sys.argv[1]), _stimuli(40, 32), n_ch=40)
    print("RESUMED")
    EOF
    cp "$FS"/d.h5 "$FS"/d.h5.journal "$OUT"/
""")


def _unshare_works() -> str:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"unshare -m + tmpfs not allowed here ({probe.stderr.strip()[:80]})"


@pytest.mark.slow
def test_a_real_full_file_system_then_resume(tmp_path):
    why = _unshare_works()
    if why:
        pytest.skip(why)
    fs, out = tmp_path / "fs", tmp_path / "out"
    fs.mkdir()
    out.mkdir()
    env = dict(os.environ, FS=str(fs), OUT=str(out), ROOT=str(ROOT), PY=sys.executable,
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = subprocess.run(["unshare", "-m", "bash", "-c", REAL_FS], env=env, capture_output=True, text=True, timeout=240)
    first, second = (out / "first.txt").read_text(), (out / "second.txt").read_text()
    assert run.returncode == 0, run.stderr + first + second
    error = [ln for ln in first.splitlines() if ln.startswith("ERROR")]
    assert len(error) == 1 and "disk full:" in error[0] and "free space and --resume" in error[0], first
    assert "RESUMED" in second, second
    _assert_whole_day_right(out / "d.h5", _stimuli(40, 32), n_ch=40)


# --------------------------------------------------------------------------- torn journal
def test_torn_journal_tail_is_cut_before_appending_and_never_swallows_a_trial(tmp_path):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=3)
    jp = journal_path(path)
    whole = jp.read_bytes()
    jp.write_bytes(whole + whole.splitlines(keepends=True)[0][:57])    # a crash mid-line
    assert len(read_journal(jp)) == 3                                    # the fragment is no trial
    _record(path, ss, max_trials=2)
    lines = jp.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5 and all(ln.endswith(b"\n") for ln in lines)
    assert len(read_journal(jp)) == 5 == read_day(path).attrs["committed_trials"]


def test_a_corrupt_line_in_the_middle_is_an_error_not_a_skip(tmp_path):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=3)
    jp = journal_path(path)
    lines = jp.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"completed": ', b'"completed":  ', 1)
    jp.write_bytes(b"".join(lines))
    with pytest.raises(JournalError, match="line 2 fails its checksum"):
        read_journal(jp)
    assert any("line 2" in p for p in check_day(path)[1])


# --------------------------------------------------------------------------- recover
def test_recover_without_journal_changes_nothing(tmp_path):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=2)
    journal_path(path).unlink()
    before = sorted(p.name for p in tmp_path.iterdir()), path.read_bytes()
    with pytest.raises(DayFileError, match="no journal.*Nothing was changed"):
        recover_day(path)
    assert (sorted(p.name for p in tmp_path.iterdir()), path.read_bytes()) == before


def test_recover_from_a_real_plan_with_zero_channels(tmp_path):
    ss = _stimuli()
    sch = build_schedule(ss.parent, 3, 4, 0, 0.3)
    plan = write_plan(tmp_path / "day_001.plan.h5", "[rsvp]\nstim_on_ms = 100.0\n", 1, ss, sch)
    assert read_day(plan).n_channels == 0
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=4)
    good = read_day(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    damaged = path.read_bytes()
    recover_day(path, plan_path=plan)
    rebuilt = read_day(path)
    assert rebuilt.n_channels == 3 and len(rebuilt.trials["trial_index"]) == 4
    np.testing.assert_array_equal(rebuilt.counts, good.counts)
    np.testing.assert_array_equal(rebuilt.spike_times_s, good.spike_times_s)
    assert float(rebuilt.attrs["window_start_ms"]) == 70.0 and float(rebuilt.attrs["window_end_ms"]) == 170.0
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("d.h5.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert not any(p.name.endswith(".rebuilding") for p in tmp_path.iterdir())
    assert check_day(path)[1] == []


def test_recover_that_cannot_verify_leaves_the_original(tmp_path):
    ss = _stimuli()
    path = tmp_path / "d.h5"
    _record(path, ss, max_trials=2)
    other = tmp_path / "other.h5"
    _record(other, ss, max_trials=1, n_ch=5)               # a plan/day with 5 channels: the wrong file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    damaged = path.read_bytes()
    with pytest.raises(DayFileError, match="5.*Nothing was changed|Nothing was changed.*"):
        recover_day(path, plan_path=other)
    assert path.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("d.h5")) == ["d.h5", "d.h5.journal"]


# --------------------------------------------------------------------------- being recorded
LIVE = textwrap.dedent("""
    import sys
    from tests.test_dayfile import _stimuli, _new
    w, sch = _new(sys.argv[1], _stimuli())
    print("open", flush=True)
    sys.stdin.readline()
    w.close()
""")


def test_a_file_being_recorded_is_named_as_such_and_not_recovered(tmp_path):
    path = tmp_path / "d.h5"
    proc = subprocess.Popen([sys.executable, "-c", LIVE, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        assert locked_by(path) == proc.pid
        with pytest.raises(DayFileError, match=f"being recorded by PID {proc.pid}"):
            check_day(path)
        with pytest.raises(DayFileError, match=f"being recorded by PID {proc.pid}.*Nothing was changed"):
            recover_day(path)
        with pytest.raises(DayFileError, match=f"being recorded by PID {proc.pid}"):
            DayWriter.resume(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "d.h5.journal", "d.h5.lock"]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert locked_by(path) is None and not lock_path(path).exists()
    assert check_day(path)[1] == []


def test_a_stale_lock_file_of_a_killed_recorder_blocks_nothing(tmp_path):
    path = tmp_path / "d.h5"
    proc = subprocess.Popen([sys.executable, "-c", LIVE, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lock_path(path).exists() and locked_by(path) is None
    assert check_day(path)[1] == []
    _record(path, _stimuli())
    _assert_whole_day_right(path, _stimuli())
