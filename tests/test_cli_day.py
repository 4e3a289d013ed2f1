"""`itloop day run/check` end to end against the simulated monkey, through the real CLI."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig.cli import main
from rig.config import load_config
from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.helpers import wait_for_journal_lines

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny.toml")


def test_day_run_records_a_valid_screening_day(tmp_path, capsys):
    assert main(["day", "run", "--day", "0", "--backend", "sim", "--out", str(tmp_path), "--config", TINY, "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "day_000.h5"
    assert str(path) in out and "complete" in out
    summary, problems = check_day(path)
    cfg = load_config(TINY)
    assert problems == [] and summary["stimuli"] == cfg.images.n_clean and summary["channels"] == cfg.sim.n_channels
    d = read_day(path)
    assert d.responses_by_repeat().shape[0] == cfg.screening.repeats
    # the counts follow the simulated monkey's true rates (ground truth, evaluation only)
    from rig.backends.factory import build_sim_monkey
    monkey = build_sim_monkey(cfg)
    expected = monkey.expected_counts(monkey.true_rates(d.stimuli.pixels), (0.07, 0.17))
    measured = d.mean_responses()
    r = np.corrcoef(expected.ravel(), measured.ravel())[0, 1]
    assert r > 0.8
    assert abs(measured.mean() / expected.mean() - 1) < 0.1
    # the onsets came through the clock alignment: fitted drift equals the simulated one
    import h5py
    with h5py.File(path) as h5:
        assert np.isclose(h5["sync"].attrs["fit_drift"], cfg.sim.clock_drift_ppm * 1e-6, atol=2e-6)


def test_existing_day_refused_and_untouched(tmp_path, capsys):
    args = ["day", "run", "--day", "0", "--out", str(tmp_path), "--config", TINY, "--no-progress", "--max-trials", "2"]
    assert main(args) == 0
    before = (tmp_path / "day_000.h5").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and err.count("\n") == 1
    assert (tmp_path / "day_000.h5").read_bytes() == before


def test_interrupted_day_resumes_without_duplicates(tmp_path):
    base = ["day", "run", "--day", "0", "--out", str(tmp_path), "--config", TINY, "--no-progress"]
    assert main(base + ["--max-trials", "5"]) == 0
    assert not read_day(tmp_path / "day_000.h5").complete
    assert main(base + ["--resume"]) == 0
    d = read_day(tmp_path / "day_000.h5")
    vp = d.presentations["planned_index"][d.presentations["valid"]]
    assert d.complete and sorted(vp) == list(range(len(d.schedule_stim_index)))
    assert np.all(np.diff(d.trials["start_acq_s"]) > 0)  # the resumed clock keeps increasing


def test_sigkill_of_the_cli_then_resume(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rig.cli", "day", "run", "--day", "0", "--out", str(tmp_path), "--config", TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "day_000.h5.journal"
    try:
        assert wait_for_journal_lines(journal, 2, timeout_s=120), "day 0 never started recording"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    d = read_day(tmp_path / "day_000.h5")
    assert 0 < len(d.trials["trial_index"]) and not d.complete
    assert check_day(tmp_path / "day_000.h5")[1] == []
    assert main(["day", "run", "--day", "0", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    d2 = read_day(tmp_path / "day_000.h5")
    vp = d2.presentations["planned_index"][d2.presentations["valid"]]
    assert d2.complete and sorted(vp) == list(range(len(d2.schedule_stim_index)))
    # trials recorded before the kill are unchanged
    n = len(d.trials["trial_index"])
    assert np.array_equal(d2.counts[: len(d.counts)], d.counts, equal_nan=True)
    assert np.array_equal(d2.trials["trial_index"][:n], d.trials["trial_index"])


@pytest.mark.parametrize("setup, args, message", [
    ("empty_folder", [], "holds no images"),
    ("bad_toml", [], "not valid TOML"),
    ("unknown_key", [], "sim.n_chanels"),
    ("missing_weights", [], "nowhere.pt"),
    (None, ["--resume"], "does not exist"),
    (None, ["--day", "3"], "no plan"),
])
def test_bad_inputs_one_message_nonzero_exit(tmp_path, capsys, setup, args, message):
    cfg = tmp_path / "c.toml"
    if setup == "empty_folder":
        (tmp_path / "imgs").mkdir()
        cfg.write_text(f'[images]\nsource = "{tmp_path / "imgs"}"\n')
    elif setup == "bad_toml":
        cfg.write_text("[images\nsize_px = 3\n")
    elif setup == "unknown_key":
        cfg.write_text("[sim]\nn_chanels = 3\n")
    elif setup == "missing_weights":
        cfg.write_text(Path(TINY).read_text().replace('backbone = "tiny"', 'backbone = "tiny"\nweights = "/nowhere.pt"'))
    else:
        cfg.write_text(Path(TINY).read_text())
    argv = ["day", "run", "--day", "0", "--out", str(tmp_path / "out"), "--config", str(cfg), "--no-progress"]
    if "--day" in args:
        argv[3] = args[1]
    elif args:
        argv += args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("itloop: error:") and "\n" not in err
    assert not (tmp_path / "out" / "day_000.h5").exists()


def test_day_check_on_truncated_and_foreign_files(tmp_path, capsys):
    assert main(["day", "run", "--day", "0", "--out", str(tmp_path), "--config", TINY, "--no-progress", "--max-trials", "3"]) == 0
    assert main(["day", "check", str(tmp_path / "day_000.h5")]) == 0
    data = (tmp_path / "day_000.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["day", "check", str(tmp_path / "cut.h5")]) == 2
    err = capsys.readouterr().err
    assert "truncated or damaged" in err
    (tmp_path / "x.txt").write_text("hello")
    assert main(["day", "check", str(tmp_path / "x.txt")]) == 2


def test_ctrl_c_stops_after_the_current_trial_and_the_day_resumes(tmp_path):
    # a long screening day (30 images x 40 repeats, ~150 trials): Ctrl-C after 2 trials always comes mid-day
    long_day = tmp_path / "long.toml"
    long_day.write_text(Path(TINY).read_text().replace("[screening]\nrepeats = 4", "[screening]\nrepeats = 40"))
    assert "repeats = 40" in long_day.read_text()
    cmd = [sys.executable, "-m", "rig.cli", "day", "run", "--day", "0", "--out", str(tmp_path), "--config", str(long_day)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = tmp_path / "day_000.h5.journal"
    try:
        assert wait_for_journal_lines(journal, 2, timeout_s=120), "day 0 never started recording"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopping after this trial" in out and "resume with --resume" in out
    d = read_day(tmp_path / "day_000.h5")
    assert not d.complete and check_day(tmp_path / "day_000.h5")[1] == []
    # the trial in flight was finished and stored: file and journal agree
    assert len(d.trials["trial_index"]) == journal.read_bytes().count(b"\n")
    assert main(["day", "run", "--day", "0", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    assert read_day(tmp_path / "day_000.h5").complete
