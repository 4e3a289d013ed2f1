"""Sharding, the cost model and the deadline refusal, in this process (no cluster)."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import torch

from rig.compute.budget import Estimate, check_deadline, seconds_left
from rig.config import ComputeConfig, ConfigError, load_config
from rig.errors import UserError
from stimuli.cost import PassRate, passes_per_problem, run_passes
from stimuli.images import builtin_images
from stimuli.objective import SiteObjective
from stimuli.perturb import PerturbParams, generate_perturbations, solve
from stimuli.shards import (
    TAIL_FACTOR,
    auto_shards,
    clean_predictions,
    merge_shards,
    solve_in_shards,
    solve_shard,
    split_evenly,
    split_problems,
)
from tests.separable import SeparableModel

SIZE = 12
EPS = [0.0, 0.5, 2.0]
PROBLEMS = [(0, 0), (5, 1), (2, 2), (3, 0), (5, 2), (1, 1), (4, 0)]   # image 5 early: its parent index > rows


def _assert_same(a, b) -> None:
    assert np.array_equal(a.pixels, b.pixels)
    for c in a.COLUMNS:
        assert np.array_equal(getattr(a, c), getattr(b, c), equal_nan=(c == "predicted_change")), c
    assert np.array_equal(a.epsilons, b.epsilons)


def test_split_covers_every_problem_once_in_order():
    shards = split_problems(10, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [s.index for s in shards] == [0, 1, 2, 3] and split_problems(0, 3) == []
    with pytest.raises(ValueError, match="problems_per_shard"):
        split_problems(4, 0)


def test_even_split_sizes_differ_by_at_most_one():
    shards = split_evenly(10, 4)
    assert [(s.start, s.stop) for s in shards] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [s.index for s in shards] == [0, 1, 2, 3]
    assert [len(s) for s in split_evenly(3, 5)] == [1, 1, 1] and split_evenly(0, 2) == []
    with pytest.raises(ValueError, match="n_shards"):
        split_evenly(4, 0)


def test_auto_shards_fill_the_engine_and_give_every_slot_the_same_work():
    p = PerturbParams()   # the paper's 100 restarts x 40 steps, pruning: 1,750 passes per problem
    eps = [0.5, 1.0, 2.0, 3.0]
    per_pair = 2 * len(eps) * passes_per_problem(p)
    # paper day (882 pairs) on 2 workers: shards of >= TAIL_FACTOR * 64 rows * 40 steps passes, an even count
    day = auto_shards(21 * 42, eps, p, 2)
    assert len(day) % 2 == 0 and {len(s) for s in day} <= {len(day[0]), len(day[0]) + 1}
    assert min(len(s) for s in day) * per_pair >= TAIL_FACTOR * p.max_batch_rows * p.steps
    assert [(s.start, s.stop) for s in day] == [(s.start, s.stop) for s in split_evenly(882, len(day))]
    # a bigger engine batch needs bigger shards
    big = auto_shards(21 * 42, eps, dataclasses_replace(p, max_batch_rows=512), 2)
    assert len(big) < len(day) and len(big) % 2 == 0
    # few pairs: one shard per slot (never more shards than slots can share evenly)
    assert [len(s) for s in auto_shards(6, eps, p, 2)] == [3, 3]
    assert [len(s) for s in auto_shards(1, eps, p, 4)] == [1]
    assert auto_shards(0, eps, p, 2) == []


def test_shard_with_a_cached_clean_prediction_is_the_same_shard():
    model = SeparableModel(3, 3 * SIZE * SIZE, seed=4)
    clean = builtin_images(6, SIZE, seed=2)
    params = PerturbParams(restarts=3, steps=6, max_batch_rows=4, random_controls_per_image=1)
    cv = clean_predictions(model, clean, params)
    a = solve_shard(model, clean, PROBLEMS[1:3], EPS, params, 9, index=1)
    b = solve_shard(model, clean, PROBLEMS[1:3], EPS, params, 9, index=1, clean_values=cv)
    for part in ("targeted", "controls"):
        for c, v in getattr(a, part).items():
            assert np.array_equal(v, getattr(b, part)[c], equal_nan=(c == "predicted_change")), (part, c)
    with pytest.raises(ValueError, match="clean_values has 5 rows for 6 clean images"):
        solve_shard(model, clean, PROBLEMS[1:3], EPS, params, 9, clean_values=cv[:5])


@pytest.mark.parametrize("per_shard", [1, 2, 3, 7])
def test_sharded_equals_single_run_bit_for_bit(per_shard):
    model = SeparableModel(3, 3 * SIZE * SIZE, seed=4)
    clean = builtin_images(6, SIZE, seed=2)
    params = PerturbParams(restarts=4, steps=10, max_batch_rows=8, prune_keep_fraction=0.5, random_controls_per_image=2)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        single = generate_perturbations(model, clean, PROBLEMS, EPS, params, seed=9)
        sharded = solve_in_shards(model, clean, PROBLEMS, EPS, params, 9, per_shard)
    _assert_same(single, sharded)
    assert (single.kind == "targeted").sum() == len(PROBLEMS) * len(EPS) * 2
    assert (single.budget_passes > 0).any()


def test_merge_refuses_missing_or_duplicated_shards():
    model = SeparableModel(3, 3 * SIZE * SIZE)
    clean = builtin_images(6, SIZE, seed=2)
    p = PerturbParams(restarts=1, steps=2, random_controls_per_image=0)
    a = solve_shard(model, clean, PROBLEMS[:2], [0.5], p, 0, index=0)
    b = solve_shard(model, clean, PROBLEMS[2:], [0.5], p, 0, index=1)
    assert len(merge_shards(clean, [b, a], 2, [0.5])) == 6 + 2 * len(PROBLEMS)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        merge_shards(clean, [a], 2, [0.5])
    with pytest.raises(ValueError, match=r"duplicated \[0\]"):
        merge_shards(clean, [a, a, b], 2, [0.5])


@pytest.mark.parametrize("kw", [dict(prune=False, early_stop=False),
                                dict(prune=True, prune_keep_fraction=0.5, prune_after_fraction=0.2, prune_rounds=3,
                                     early_stop=False, first_phase_radius_factor=1.0),
                                dict(prune=True, prune_keep_fraction=0.25, prune_after_fraction=0.25,
                                     early_stop=False)])
def test_passes_per_problem_is_what_the_engine_spends_without_early_stopping(kw):
    params = PerturbParams(restarts=8, steps=10, max_batch_rows=16, **kw)
    model = SeparableModel(2, 3 * SIZE * SIZE)
    x = torch.from_numpy(builtin_images(2, SIZE, 1)).permute(0, 3, 1, 2).float() / 255
    obj = SiteObjective(model)
    with obj.session():
        sols = solve(obj, x, [0, 1], [0, 1], [0.5, 1.0], [1, -1], params)
    assert [s.passes for s in sols] == [passes_per_problem(params)] * 2
    if kw["prune"] and kw.get("prune_rounds") == 3:
        assert passes_per_problem(params) == 8 * 2 + 4 * 2 + 2 * 2 + 1 * 4


def test_run_size_counts_problems_passes_and_stimuli():
    p = PerturbParams(restarts=10, steps=4, prune=False, random_controls_per_image=1)
    size = run_passes(n_pairs=5, n_clean=3, epsilons=[0.0, 1.0, 2.0], params=p, n_shards=2)
    assert size.problems == 5 * 3 * 2
    assert size.passes == 5 * 2 * 2 * 40               # epsilon 0 costs nothing
    assert size.stimuli == 3 + 30 + 15
    assert size.forward_rows == 2 * 3 + 30 + 15


def _estimate(passes_per_s: float, passes: int = 36000, workers: int = 1) -> Estimate:
    size = run_passes(n_pairs=1, n_clean=1, epsilons=[1.0], params=PerturbParams(restarts=passes // 80, steps=40,
                                                                                  prune=False))
    return Estimate(size, PassRate("cpu", 64, passes_per_s, 2**30, 1.0), workers, 2**30)


def test_deadline_refusal_names_the_numbers_and_the_keys():
    est = _estimate(10.0)                          # 36000 passes at 10/s = 1 h
    assert est.size.passes == 36000 and est.seconds == pytest.approx(3600 + 0.5 * 4 / 10)   # + 4 forward-only rows
    check_deadline(est, ComputeConfig(max_hours=2.0))
    check_deadline(est, ComputeConfig())           # no limit
    with pytest.raises(UserError) as exc:
        check_deadline(est, ComputeConfig(max_hours=0.5))
    msg = str(exc.value)
    for must in ("36,000 passes", "10.0 passes/s", "1:00:0", "compute.max_hours = 0.5", "0:30:00",
                 "perturb.restarts", "experiment.images_per_site", "compute.scheduler"):
        assert must in msg, must
    assert "\n" not in msg
    check_deadline(_estimate(10.0, workers=4), ComputeConfig(max_hours=0.5))   # 4 workers: 15 min


def test_deadline_clock_time_is_the_next_occurrence():
    now = dt.datetime(2026, 11, 30, 22, 0)
    assert seconds_left(ComputeConfig(deadline="07:00"), now)[0] == 9 * 3600
    assert seconds_left(ComputeConfig(deadline="23:30"), now)[0] == 1.5 * 3600
    left, key = seconds_left(ComputeConfig(deadline="2026-12-01T06:00", max_hours=10), now)
    assert left == 8 * 3600 and "compute.deadline" in key
    with pytest.raises(UserError, match="compute.deadline = '23:30'"):
        check_deadline(_estimate(1.0), ComputeConfig(deadline="23:30"), now)


@pytest.mark.parametrize("text, key", [("[compute]\nscheduler = \"mpi\"\n", "compute.scheduler"),
                                       ("[compute]\ndeadline = \"7am\"\n", "compute.deadline"),
                                       ("[compute]\nproblems_per_shard = -1\n", "compute.problems_per_shard"),
                                       ("[compute]\nmax_hours = -1\n", "compute.max_hours")])
def test_compute_config_errors_name_the_key(tmp_path, text, key):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(f)
    assert load_config(overrides={"compute": {"scheduler": "tcp://10.0.0.5:8786"}}).compute.scheduler.startswith("tcp")


def test_slurm_job_script_books_what_the_config_says():
    from rig.compute.generate import make_slurm_cluster

    cc = ComputeConfig(scheduler="slurm", slurm_queue="gpu", slurm_account="lab42", slurm_cores=6,
                       slurm_memory="24GB", slurm_walltime="07:30:00", slurm_gpus=2,
                       slurm_job_extra=["--constraint=a100"])
    cluster = make_slurm_cluster(cc, scheduler_options={"host": "127.0.0.1", "dashboard_address": None})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("#SBATCH -J itloop", "#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=6",
                      "#SBATCH -t 07:30:00", "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100"):
        assert directive in lines, directive
    assert any(ln.startswith("#SBATCH --mem=") for ln in lines)
    assert "export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s" in lines            # quiet Dask housekeeping
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in lines
    worker = [ln for ln in lines if "dask_worker" in ln or "dask-worker" in ln]
    assert len(worker) == 1 and "tcp://127.0.0.1:" in worker[0] and "--nthreads 1" in worker[0]


def test_stimuli_generate_prints_the_cost_and_refuses_a_plan_past_the_deadline(tmp_path, capsys):
    from rig.cli import main
    from tests.test_perturb_cli import _fitted_model_file

    model = _fitted_model_file(tmp_path)
    cfg = tmp_path / "c.toml"
    args = ["stimuli", "generate", "--model", str(model), "--config", str(cfg), "--sites", "0,1",
            "--images-per-site", "2", "--epsilons", "0.5,1", "--no-progress"]
    cfg.write_text("[images]\nsize_px = 32\nn_clean = 6\n[perturb]\nrestarts = 50\nsteps = 40\n"
                   "[compute]\nprobe_batches = 1\nmax_hours = 1e-6\n")
    rc = main(args + ["--out", str(tmp_path / "late.npz")])
    captured = capsys.readouterr()
    assert rc == 2 and not (tmp_path / "late.npz").exists()
    assert "passes/s on cpu" in captured.out and "expected time" in captured.out
    # the cost line names the engine's mode and the batch that max_batch_rows = 0 chose
    assert "max_batch_rows = 0 -> " in captured.out and "compile = auto -> off" in captured.out
    assert any(m in captured.out for m in ("rows, bf16, channels_last, compile off", "rows, fp32, contiguous"))
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "refusing to generate" in err[0] and "compute.max_hours = 1e-06" in err[0]
    assert "perturb.restarts" in err[0] and f"{2 * 2 * 2 * 2 * 50 * 10 + 2 * 2 * 2 * 2 * 13 * 30:,} passes" in err[0]
    cfg.write_text("[images]\nsize_px = 32\nn_clean = 6\n[perturb]\nrestarts = 2\nsteps = 4\n"
                   "[compute]\nprobe_batches = 1\nmax_hours = 24\n")
    assert main(args + ["--out", str(tmp_path / "ok.npz")]) == 0 and (tmp_path / "ok.npz").exists()


def test_random_controls_of_a_late_parent_alone():
    """A shard holding only image 5 needs controls whose parent index exceeds their own count."""
    from stimuli.perturb import random_controls

    clean = builtin_images(6, SIZE, seed=2)
    ss = random_controls(clean, [5], [0.5, 1.0], 1, seed=3)
    assert list(ss.kind) == ["clean"] * 6 + ["random"] * 2 and list(ss.parent[6:]) == [5, 5]
    assert np.all(ss.epsilon_shown[6:] <= ss.epsilon_requested[6:]) and np.all(ss.epsilon_shown[6:] > 0)


def test_the_model_source_reads_its_file_once_and_travels_as_bytes(tmp_path, monkeypatch):
    """FittedModelFiles: the fitted-model file is read once (its bytes); the parsed model and
    the built module come from those bytes, once per process; a pickled copy (what a Dask
    worker receives) builds the same predictions."""
    import pickle
    from pathlib import Path

    import h5py
    import torch

    from rig.compute.generate import FittedModelFiles, InMemoryModel
    from tests.test_perturb_cli import _fitted_model_file

    path = _fitted_model_file(tmp_path)
    reads, opened = [], []
    real_read, real_h5 = Path.read_bytes, h5py.File
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real_read(self))
    monkeypatch.setattr(h5py, "File", lambda name, *a, **k: opened.append(str(name)) or real_h5(name, *a, **k))
    source = FittedModelFiles.from_paths(path)
    module = source.build("cpu")
    assert source.build("cpu") is module and source.fitted().n_sites == 4
    assert reads == [path.name] and not any(str(path) in o for o in opened)
    x = torch.rand(2, 3, 32, 32)
    clone = pickle.loads(pickle.dumps(source))
    with torch.no_grad():
        torch.testing.assert_close(clone.build("cpu")(x), module(x))
    assert clone.sha256 == source.sha256 and InMemoryModel(module).build("cpu") is module
    assert InMemoryModel(module).sha256 == InMemoryModel(clone.build("cpu")).sha256
