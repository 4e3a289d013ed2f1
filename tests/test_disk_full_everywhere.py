"""A real full disk at every write point of a session (issue 25): a private tmpfs is filled so
that the session runs out of space at a different place each seed (the header, the journal,
a table, the commit, the clock state, the completion), then space is freed. Every day must
then resume, or be rebuilt by ``itloop day recover`` without ``--plan`` and resume; never a
crash, never a committed trial that differs from the journal."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rig.cli import main
from tests.test_data_safety import _unshare_works

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.toml"
SEEDS = 30

SCRIPT = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    import numpy as np
    from rig.cli import main
    from rig.store.dayfile import DayFileError
    from rig.store.journal import journal_path, read_journal
    from rig.store.reader import day_status
    from tests.test_data_safety import _assert_whole_day_right, _record
    from tests.test_dayfile import _stimuli

    fs, seeds = Path(sys.argv[1]), int(sys.argv[2])
    ss, n_ch = _stimuli(12, 32), 8

    def free():
        st = os.statvfs(fs)
        return st.f_bavail * st.f_frsize

    def leave_free(room):                           # fill the file system until `room` bytes are free
        with open(fs / "filler", "wb") as fh:
            left = free() - room
            while left > 0:
                try:
                    left -= fh.write(bytes(min(left, 1 << 20)))
                except OSError:
                    break

    base = free()
    ref = fs / "ref"
    ref.mkdir()
    _record(ref / "d.h5", ss, n_ch=n_ch)
    need = base - free()                          # what a whole day takes on this file system
    shutil.rmtree(ref)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        room = int(need * (seed + rng.uniform()) / seeds * 1.05)
        folder = fs / f"s{seed:02d}"
        folder.mkdir()
        path = folder / "d.h5"
        leave_free(room)
        try:
            _record(path, ss, n_ch=n_ch)
            first = "finished"
        except DayFileError as exc:
            first = "full" if "disk full" in str(exc) else f"error {exc}"
        (fs / "filler").unlink()
        before = read_journal(journal_path(path)) if journal_path(path).exists() else []
        how = "resumed"
        try:
            if day_status(path) == "complete":
                how = "complete"
            else:
                _record(path, ss, n_ch=n_ch)
        except DayFileError as exc:
            rc = main(["day", "recover", str(path)])     # no --plan
            assert rc == 0, (seed, exc)
            how = "recovered"
            _record(path, ss, n_ch=n_ch)
        after = read_journal(journal_path(path))
        assert [r.trial.trial_index for r in after[:len(before)]] == [r.trial.trial_index for r in before]
        assert all(np.array_equal(a.counts, b.counts) for a, b in zip(after, before))
        _assert_whole_day_right(path, ss, n_ch=n_ch)   # complete, counts right, file = journal
        print(f"seed {seed} room {room} {first} {how} ok", flush=True)
        shutil.rmtree(folder)
    print("ALL", seeds)
    # replay and export of a real day onto the filled disk: one line, exit 2, nothing left, no crash
    import subprocess
    src = Path(sys.argv[3])
    src_size = src.stat().st_size
    for k in range(6):
        room = int(src_size * (0.15 + 0.3 * k))
        rec = fs / "rec"                          # a damaged day (its trial count altered) with its journal
        rec.mkdir()
        shutil.copy(str(src) + ".journal", rec / "day_000.h5.journal")
        shutil.copy(src, rec / "day_000.h5")
        import h5py
        with h5py.File(rec / "day_000.h5", "r+") as h5:
            h5.attrs["committed_trials"] = 999
        damaged = sorted((p.name, p.read_bytes()) for p in rec.iterdir())
        leave_free(room)
        for cmd in (["day", "replay", str(src), "--no-progress", "--out", str(fs / "out" / "r.h5")],
                    ["day", "export", str(src), "--nwb", str(fs / "out" / "d.nwb")]):
            (fs / "out").mkdir(exist_ok=True)
            run = subprocess.run([sys.executable, "-m", "rig.cli", *cmd], capture_output=True, text=True)
            left_behind = sorted(p.name for p in (fs / "out").iterdir())
            err = run.stderr.strip()
            ok = (run.returncode == 0 and len(left_behind) >= 1) or (
                run.returncode == 2 and err.count(chr(10)) == 0 and err.startswith("itloop: error:") and not left_behind)
            print(f"{cmd[1]} room {room} rc {run.returncode} left {left_behind} {'ok' if ok else 'BAD ' + err[-300:]}",
                  flush=True)
            shutil.rmtree(fs / "out")
        run = subprocess.run([sys.executable, "-m", "rig.cli", "day", "recover", str(rec / "day_000.h5")],
                             capture_output=True, text=True)
        err = run.stderr.strip()
        names = sorted(p.name for p in rec.iterdir())
        ok = (run.returncode in (0, 1) and any(n.startswith("day_000.h5.damaged-") for n in names)) or (
            run.returncode == 2 and err.count(chr(10)) == 0 and err.startswith("itloop: error:")
            and sorted((p.name, p.read_bytes()) for p in rec.iterdir()) == damaged)
        print(f"recover room {room} rc {run.returncode} left {names} {'ok' if ok else 'BAD ' + err[-300:]}", flush=True)
        shutil.rmtree(rec)
        (fs / "filler").unlink()
""")


@pytest.mark.slow
def test_a_full_disk_at_every_write_point_resumes_or_recovers(tmp_path):
    why = _unshare_works()
    if why:
        pytest.skip(why)
    fs, src = tmp_path / "fs", tmp_path / "src"
    fs.mkdir()
    assert main(["day", "run", "--day", "0", "--out", str(src), "--config", str(TINY), "--no-progress",
                 "--max-trials", "6"]) == 0
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = (f'mount -t tmpfs -o size=4m tmpfs "{fs}" && cd "{ROOT}" && '
           f'exec "{sys.executable}" - "{fs}" {SEEDS} "{src / "day_000.h5"}"')
    run = subprocess.run(["unshare", "-m", "bash", "-c", cmd], input=SCRIPT, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, (run.returncode, run.stdout[-3000:], run.stderr[-3000:])   # 139 = a segfault
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("seed ")]
    assert len(lines) == SEEDS and all(ln.endswith(" ok") for ln in lines), run.stdout
    assert f"ALL {SEEDS}" in run.stdout
    firsts = {ln.split()[4] for ln in lines}
    assert "full" in firsts                        # the disk did fill during sessions
    tools = [ln for ln in run.stdout.splitlines() if ln.startswith(("replay ", "export ", "recover "))]
    assert len(tools) == 18 and all(ln.endswith(" ok") for ln in tools), "\n".join(tools)
    assert any(" rc 2 " in ln for ln in tools)     # some ran out of space
    assert any(ln.startswith("recover ") and " rc 0 " in ln for ln in tools)   # and recover can succeed
