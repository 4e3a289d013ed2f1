"""20 SIGKILLs at random moments of a real two-day loop (recording, resume, plan, analysis).

Every kill waits for an event (journal lines, the day file's lock taken, a progress line)
with a bounded wait, then kills at once: no fixed sleep races the process, and every
assertion holds whatever the exact moment. Then: 0 trials lost, 0 duplicated, every
interrupted day equals an uninterrupted day of the same seed (all tables, bit for bit;
only session id and timestamps may differ), and the analysis completes.
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rig.store.journal import read_journal
from rig.store.lock import locked_by
from rig.store.reader import read_day
from rig.store.repair import check_day

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny.toml")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
           PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
WAIT_S = 180.0


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rig.cli", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out
    return out


def _kill_when(proc: subprocess.Popen, event) -> bool:
    """SIGKILL ``proc`` as soon as ``event()`` is true; False if it ended first (no kill)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if event():
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            return True
        if proc.poll() is not None:
            proc.communicate(timeout=30)
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the awaited event never came")


def _line_seen(proc: subprocess.Popen, marker: str):
    """An event: ``marker`` appeared on the process's output (read without blocking)."""
    seen = {"text": ""}

    def event() -> bool:
        while select.select([proc.stdout], [], [], 0)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            seen["text"] += line
            if marker in line:
                return True
        return False

    return event


def _journal_lines(path: Path) -> int:
    j = path.with_name(path.name + ".journal")
    return j.read_bytes().count(b"\n") if j.exists() else 0


def _record_with_kills(folder: Path, day: int, kills: int, rng: random.Random, extra=()) -> int:
    """Record ``day`` killing it ``kills`` times (mid-recording and mid-resume), then finish it."""
    path = folder / f"day_{day:03d}.h5"
    done = 0
    while done < kills:
        resume = path.exists()
        proc = _cli("day", "run", "--day", str(day), "--out", str(folder), "--no-progress",
                    *(["--resume"] if resume else list(extra)))
        before = _journal_lines(path)
        if resume and rng.random() < 0.3:             # while resuming: as soon as it holds the file
            event = lambda proc=proc: locked_by(path) == proc.pid
        else:                                         # mid-recording: after 1-2 more trials
            target = before + rng.randint(1, 2)
            event = lambda target=target: _journal_lines(path) >= target
        assert _kill_when(proc, event), f"day {day} finished before kill {done + 1}; the test needs a longer day"
        done += 1
        _check_intact(path)
    _finish(_cli("day", "run", "--day", str(day), "--out", str(folder), "--no-progress", "--resume"))
    return done


def _check_intact(path: Path) -> None:
    """After a kill: the file reads, agrees with its journal, and holds no duplicate."""
    d = read_day(path)
    assert check_day(path)[1] == []
    journal = read_journal(path.with_name(path.name + ".journal"))
    assert len(journal) - len(d.trials["trial_index"]) in (0, 1)          # at most the trial in flight
    assert [r.trial.trial_index for r in journal] == list(range(len(journal)))


def _same_day(a: Path, b: Path) -> None:
    """Two day files hold the same recording (session id and timestamps aside)."""
    x, y = read_day(a), read_day(b)
    assert x.complete and y.complete
    for table in ("trials", "presentations"):
        for k in getattr(x, table):
            np.testing.assert_array_equal(getattr(x, table)[k], getattr(y, table)[k], err_msg=f"{table}/{k}")
    for k in ("counts", "spike_times_s", "spike_channels", "sync_presenter_s", "sync_acq_s", "schedule_stim_index"):
        np.testing.assert_array_equal(getattr(x, k), getattr(y, k), err_msg=k)
    assert x.config_text == y.config_text and x.stim_ids == y.stim_ids
    v = x.presentations["valid"]
    planned = x.presentations["planned_index"][v]
    assert sorted(planned) == list(range(len(x.schedule_stim_index)))      # none lost, none twice


@pytest.mark.slow
@pytest.mark.timeout(900)      # ~2 min of CPU; more wall time on a shared machine
def test_twenty_sigkills_across_the_loop_lose_and_duplicate_nothing(tmp_path):
    rng = random.Random(20)
    run, ref = tmp_path / "killed", tmp_path / "reference"
    kills = 0
    # day 0: recording and resumes, against an uninterrupted day 0
    kills += _record_with_kills(run, 0, 7, rng, extra=("--config", TINY))
    _finish(_cli("day", "run", "--day", "0", "--out", str(ref), "--config", TINY, "--no-progress"))
    _same_day(run / "day_000.h5", ref / "day_000.h5")
    # plan day 1: killed while fitting (no progress line yet) and while perturbing
    for marker in ("", "perturbing", "perturbing"):
        proc = _cli("day", "plan", "--day", "1", "--out", str(run))
        event = _line_seen(proc, marker) if marker else (lambda proc=proc: (run / "model_through_000.h5").exists()
                                                          or proc.poll() is not None)
        assert _kill_when(proc, event) or not marker, "planning ended before the kill"
        kills += 1
        assert not (run / "day_001.plan.h5").exists() or read_day(run / "day_001.plan.h5").day == 1
    if not (run / "day_001.plan.h5").exists():
        _finish(_cli("day", "plan", "--day", "1", "--out", str(run), "--no-progress"))
    assert not [p.name for p in run.iterdir() if "partial" in p.name or p.name.endswith(".creating")]
    # day 1 from the same plan: killed, against an uninterrupted recording of that plan
    for name in ("day_000.h5", "day_001.plan.h5"):
        shutil.copy(run / name, ref / name)
    (ref / "day_000.plan.h5").unlink(missing_ok=True)
    kills += _record_with_kills(run, 1, 7, rng)
    _finish(_cli("day", "run", "--day", "1", "--out", str(ref), "--no-progress"))
    _same_day(run / "day_001.h5", ref / "day_001.h5")
    # analysis: killed three times at progress moments, then run to the end
    for _ in range(3):
        proc = _cli("day", "analyze", "--day", "1", "--out", str(run))
        target = rng.choice(["", "day 1"])
        event = _line_seen(proc, target) if target else (lambda: (run / "model_through_000.h5").exists())
        kills += _kill_when(proc, event)
    out = _finish(_cli("day", "analyze", "--day", "1", "--out", str(run), "--no-progress"))
    assert "numbers written to" in out
    numbers = json.loads((run / "day_001.analysis.json").read_text())
    assert numbers and not [p.name for p in run.iterdir() if "partial" in p.name]
    assert kills == 20
