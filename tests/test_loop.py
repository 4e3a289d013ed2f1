"""The closed loop end to end: simulate, analyse, report, resume (tiny settings, fixed seed)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rig.cli import main
from rig.config import load_config
from rig.driver.simulate import simulate
from rig.paths import day_path, plan_path
from rig.store.reader import read_day
from rig.store.repair import check_day
from tests.helpers import wait_for_journal_lines

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.toml"


OPENS: dict[str, int] = {}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A 2-day simulation; every read of a day file (full read or status check) is counted."""
    from rig.store import reader

    folder = tmp_path_factory.mktemp("loop") / "exp"
    real_open = reader._open_h5

    def counting_open(path):
        OPENS[Path(path).name] = OPENS.get(Path(path).name, 0) + 1
        return real_open(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_open_h5", counting_open)
        summary = simulate(load_config(TINY), folder, days=2)
    return folder, summary


def test_each_day_file_is_read_at_most_twice_in_a_simulation(experiment):
    day_files = {k: v for k, v in OPENS.items() if k.startswith("day_") and k.endswith(".h5") and ".plan" not in k}
    assert set(day_files) == {"day_000.h5", "day_001.h5", "day_002.h5"}, OPENS
    assert max(day_files.values()) <= 2, OPENS


def _analysis(folder, day):
    return json.loads((folder / f"day_{day:03d}.analysis.json").read_text())


def test_two_day_simulation_end_to_end(experiment):
    folder, summary = experiment
    cfg = load_config(TINY)
    for day in range(3):
        s, problems = check_day(day_path(folder, day))
        assert problems == [] and s["status"] == "complete"
    d1 = read_day(day_path(folder, 1))
    kinds = d1.stimuli.kind
    n_targeted = cfg.experiment.sites_per_day * cfg.experiment.images_per_site * len(cfg.experiment.epsilons) * 2
    assert (kinds == "targeted").sum() == n_targeted and (kinds == "random").sum() > 0
    # provenance: every perturbed stimulus's parent is a clean image of the set, shown epsilon <= requested
    t = kinds != "clean"
    assert np.all(kinds[d1.stimuli.parent[t]] == "clean")
    assert np.all(d1.stimuli.epsilon_shown[t] <= d1.stimuli.epsilon_requested[t] + 1e-9)
    # the targets are recording channels, and the audit trail names model and code
    assert set(d1.stimuli.site[kinds == "targeted"]) <= set(d1.model["target_channels"].tolist())
    assert d1.model["model_file"] == "model_through_000.h5" and d1.model["code_version"].startswith("0.1.0")
    # the plan records the engine as it ran: max_batch_rows = 0 and the auto modes resolved for this device
    ran = json.loads(d1.model["perturb_params"])
    assert cfg.perturb.max_batch_rows == 0 and ran["max_batch_rows"] >= 1
    assert ran["precision"] in ("fp32", "bf16") and ran["memory_format"] in ("contiguous", "channels_last")
    assert ran["compile"] == "off"   # auto never compiles on CPU (measured no faster there)
    a1, a2 = _analysis(folder, 1), _analysis(folder, 2)
    for a in (a1, a2):
        # the loop moves the sites more than random directions of the same size (at the largest
        # epsilon, where the effect is far above noise; small-epsilon ratios depend on the random nets)
        assert a["epsilons"] == list(cfg.experiment.epsilons)  # the planned grid labels every per-epsilon list
        big = a["epsilons"].index(2.0)
        assert a["targeted_abs"][big]["value"] > a["random_abs"][big]["value"]
        for k in range(len(a["epsilons"])):
            # the white-box attack on the ground truth bounds what the loop achieved (noise-free)
            f = a["truth"]["fraction_true_achieved"][k]
            assert 0 < f["value"] <= 1.0 + 1e-6 and f["lo"] <= f["value"] <= f["hi"]
        wb = a["truth"]["whitebox_budget"]
        # at least the loop's budget, restarts and steps doubled together, convergence counted per problem
        assert wb["restarts"] >= 2 * cfg.perturb.restarts and wb["steps"] >= 2 * cfg.perturb.steps
        assert 0 <= wb["problems_converged"] <= wb["problems"] == cfg.experiment.sites_per_day * cfg.experiment.images_per_site
        assert a["simulation"]["model_alignment"] == 1.0   # tiny.toml: the controlled setting
        sat = a["truth"]["saturation_share_within_5pct"]
        assert len(sat) == len(a["epsilons"]) and all(v is not None and 0 <= v <= 1 for v in sat)
    # day-over-day: the loop reuses the screening images, which the day-2 model was trained on: said so
    dod = a2["day_over_day"]["epsilons"]
    assert set(dod) == {f"{e:g}" for e in cfg.experiment.epsilons} and "day_over_day" not in a1
    for v in dod.values():
        assert v["out_of_sample"] is False and "not an out-of-sample comparison" in v["images"]
        assert v["mde"] > 0 and v["p_holm"] >= v["p"]
    for a in (a1, a2):   # the headline: targeted - random with an interval holding its estimate, per epsilon
        for d in a["targeted_minus_random"]:
            assert d["lo"] <= d["value"] <= d["hi"]
        for r, text in zip(a["targeted_over_random"], a["targeted_over_random_text"]):
            assert (r is None) == text.startswith("not estimable")
            assert r is None or r["lo"] <= r["value"] <= r["hi"]
    text = summary.read_text()
    assert summary.exists() and "targeted - random" in text and "at least 10x" not in text
    for name in ("**r**", "**r / sqrt(ceiling)**", "**r^2 / ceiling**"):   # the three predictivity names
        assert name in text
    assert "model_alignment = 1" in text and "paired over the same (site, clean image)" in text


def test_report_figures_exist_and_are_not_empty(experiment):
    _folder, summary = experiment
    names = ["sensitivity_vs_epsilon", "sensitivity_by_day", "predicted_vs_measured", "site_panels",
             "example_stimuli", "predictivity_vs_ceiling", "figure1a"]
    for name in names:
        png = summary.parent / f"{name}.png"
        assert png.exists() and png.stat().st_size > 20_000, name
        px = np.asarray(Image.open(png).convert("L"), float)
        assert px.std() > 10, name  # not a blank canvas
        assert f"{name}.png" in summary.read_text()


def test_report_reuses_current_analyses_without_forward_passes_or_bootstraps(experiment, monkeypatch):
    """`itloop report` on a finished experiment: no torch forward pass, no bootstrap, no day analysed
    again while each day's analysis.json is current; a stale identity makes it analyse that day."""
    import scipy.stats
    import torch

    from rig.steps import analyze

    folder, _ = experiment
    counts = {"forward": 0, "bootstrap": 0, "analyse": 0}   # every interval is a scipy bootstrap/permutation test

    def counting(name, fn):
        def wrapped(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(torch.nn.Module, "__call__", counting("forward", torch.nn.Module.__call__))
    monkeypatch.setattr(scipy.stats, "bootstrap", counting("bootstrap", scipy.stats.bootstrap))
    monkeypatch.setattr(scipy.stats, "permutation_test", counting("bootstrap", scipy.stats.permutation_test))
    monkeypatch.setattr(analyze, "day_results", counting("analyse", analyze.day_results))
    assert main(["report", str(folder), "--no-progress"]) == 0
    assert counts == {"forward": 0, "bootstrap": 0, "analyse": 0}, counts
    # "current" is decided from the stored identity: an older analysis version is recomputed
    p = folder / "day_002.analysis.json"
    a = json.loads(p.read_text())
    a["identity"]["analysis_version"] = 0
    p.write_text(json.dumps(a))
    assert main(["report", str(folder), "--no-progress"]) == 0
    assert counts["analyse"] == 1 and counts["bootstrap"] > 0
    assert json.loads(p.read_text())["identity"]["analysis_version"] > 0


def test_rerun_skips_finished_days(experiment, capsys):
    folder, _ = experiment
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("day_*.h5")}
    assert main(["simulate", "--out", str(folder), "--days", "2", "--no-progress", "--no-report"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("day_*.h5")} == before


def test_different_config_refused(experiment, tmp_path, capsys):
    folder, _ = experiment
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("sites_per_day = 2", "sites_per_day = 3"))
    assert main(["simulate", "--out", str(folder), "--days", "2", "--config", str(other), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_interrupted_simulate_gives_the_same_result(experiment, tmp_path):
    """Kill `itloop simulate` (SIGKILL) during day 2's recording, re-run it: same numbers."""
    folder, _ = experiment
    other = tmp_path / "exp"
    other.mkdir()
    # days 0 and 1 as in the uninterrupted run; day 2 planned but not recorded
    for name in ["experiment.toml", "day_000.h5", "day_000.h5.journal", "day_000.plan.h5", "day_001.plan.h5",
                 "day_001.h5", "day_001.h5.journal", "day_001.analysis.json", "groundtruth.npz"]:
        shutil.copy(folder / name, other / name)
    cmd = [sys.executable, "-m", "rig.cli", "simulate", "--out", str(other), "--days", "2", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = other / "day_002.h5.journal"
    try:
        assert wait_for_journal_lines(journal, 1, timeout_s=240), "day 2 never started recording"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert plan_path(other, 2).exists() and not read_day(day_path(other, 2)).complete
    assert main(["simulate", "--out", str(other), "--days", "2", "--no-progress", "--no-report"]) == 0
    a, b = read_day(day_path(folder, 2)), read_day(day_path(other, 2))
    assert np.array_equal(a.stimuli.pixels, b.stimuli.pixels)  # the same plan
    assert np.array_equal(a.mean_responses(), b.mean_responses(), equal_nan=True)
    x, y = _analysis(folder, 2), _analysis(other, 2)
    assert x.pop("identity")["analysis_version"] == y.pop("identity")["analysis_version"]  # the files differ (UUID)
    assert x == y


@pytest.mark.slow
def test_piped_simulation_prints_lines_not_progress_bars(tmp_path):
    """With stdout and stderr going to a pipe (a log file, CI) the bars are off: one line per step.

    The smallest experiment that runs every step (screening, refit + plan, recording, analysis
    with the white-box truth): 2 sites x 1 image x 1 epsilon, so the truth takes seconds."""
    small = tmp_path / "small.toml"
    text = TINY.read_text()
    for a, b in (("images_per_site = 3", "images_per_site = 1"),
                 ("epsilons = [0.5, 2.0]", "epsilons = [2.0]")):
        assert a in text
        text = text.replace(a, b)
    small.write_text(text)
    out = subprocess.run([sys.executable, "-m", "rig.cli", "simulate", "--config", str(small), "--out", str(tmp_path / "exp"),
                          "--days", "1", "--no-report"], check=False, capture_output=True, timeout=280, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode() + out.stderr.decode()
    assert len(out.stdout) + len(out.stderr) < 20_000, text[-3000:]
    assert "\r" not in text  # no bar redraws
    for step in ("day 0: recording", "day 1: refit + plan", "day 1: recording", "day 1: analysis"):
        assert f"[{step}:" in text
