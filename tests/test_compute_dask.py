"""Sharded generation on a real Dask cluster: a LocalCluster of 2 worker processes on loopback.

- a worker SIGKILLed while it runs a shard: the shard runs again, the plan is complete,
  nothing duplicated, identical bit for bit to the single-process run (row-separable
  model, so identity is a property of the sharding, not of float rounding);
- the day's payload: one model build and one clean-set prediction per worker however many
  shards it runs; while it is registered the worker's statistical profiler is paused and its
  20 ms event-loop tick slowed to 1 s, both restored after;
- ``itloop stimuli generate`` with ``compute.scheduler`` = the cluster's tcp:// address
  writes the same stimuli as the in-process run (a real fitted model file; its convolution
  backbone is compared to float rounding: see test_perturb_engine's chunking test).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from rig.compute.generate import DistributedRun
from rig.config import ComputeConfig
from stimuli.images import builtin_images
from stimuli.perturb import PerturbParams, generate_perturbations
from tests.separable import SeparableSource

pytestmark = pytest.mark.slow
SIZE = 16


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as c:
        yield c


def _executing_shards(dask_worker) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing if str(ts.key).startswith("itloop-shard-")]


def _finished_shards(dask_scheduler) -> int:
    return sum(1 for ts in dask_scheduler.tasks.values() if ts.state == "memory" and str(ts.key).startswith("itloop-shard-"))


def test_killed_worker_shards_rerun_and_the_plan_is_complete_and_identical(cluster):
    from distributed import Client

    source = SeparableSource(3, 3 * SIZE * SIZE, seed=1)
    clean = builtin_images(8, SIZE, seed=3)
    problems = [(i % 8, i % 3) for i in range(6)]
    eps = [0.5, 2.0]
    params = PerturbParams(restarts=16, steps=30, prune=False, early_stop=False, max_batch_rows=16,
                           random_controls_per_image=1)
    cc = ComputeConfig(scheduler=cluster.scheduler_address, problems_per_shard=1)
    killed: dict[str, object] = {}
    stop = threading.Event()
    with Client(cluster.scheduler_address, timeout=60) as client, \
            DistributedRun.open(client, source, clean, cc) as run:
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)

        def killer() -> None:  # SIGKILL a worker while it runs a shard, once another shard has finished
            end, seen = time.monotonic() + 120, {}
            while not stop.is_set() and time.monotonic() < end:
                try:
                    if client.run_on_scheduler(_finished_shards) >= 1:
                        now = {a: k[0] for a, k in client.run(_executing_shards).items() if k and a in pids}
                        for addr, key in now.items():
                            if seen.get(addr) == key:   # running at two polls in a row: mid-shard, not just done
                                os.kill(pids[addr], signal.SIGKILL)
                                killed.update(addr=addr, pid=pids[addr], key=key)
                                return
                        seen = now
                except Exception:  # a worker just left or joined: ask again
                    pass
                time.sleep(0.01)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        try:
            ss, results = run.generate(problems, eps, params, seed=7, device="cpu")
        finally:
            stop.set()
            th.join(timeout=10)
    assert killed, "the killer never saw a running shard"
    k = int(killed["key"].split("-")[2])
    assert sorted(r.index for r in results) == list(range(len(problems)))        # nothing lost or duplicated
    again = results[[r.index for r in results].index(k)]
    assert int(again.worker.rsplit(":", 1)[1]) != killed["pid"], (killed, again.worker)   # re-run elsewhere
    assert all(r.model_loads == 1 for r in results), [(r.worker, r.model_loads) for r in results]   # once per worker
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        single = generate_perturbations(source.build(), clean, problems, eps, params, seed=7)
    assert np.array_equal(ss.pixels, single.pixels)
    for c in single.COLUMNS:
        assert np.array_equal(getattr(ss, c), getattr(single, c), equal_nan=(c == "predicted_change")), c


def _payload_state(name: str, dask_worker=None) -> dict:
    plugin = dask_worker.plugins.get(name)
    pcs = dask_worker.periodic_callbacks
    return {"registered": plugin is not None, "clean_values": len(plugin._clean_values) if plugin else 0,
            "loads": plugin.loads if plugin else 0,
            "profiling": any(pcs[n].is_running() for n in ("profile", "profile-cycle") if n in pcs),
            "tick_ms": pcs["tick"].callback_time}


def test_payload_predicts_the_clean_set_once_per_worker_and_quiets_its_housekeeping(cluster):
    from distributed import Client

    source = SeparableSource(2, 3 * SIZE * SIZE, seed=2)
    clean = builtin_images(5, SIZE, seed=4)
    problems = [(i % 5, i % 2) for i in range(8)]
    params = PerturbParams(restarts=2, steps=4, max_batch_rows=8, random_controls_per_image=0)
    cc = ComputeConfig(scheduler=cluster.scheduler_address, problems_per_shard=1)
    with Client(cluster.scheduler_address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        before = client.run(_payload_state, "none")
        assert all(s["profiling"] and s["tick_ms"] == 20 for s in before.values())   # Dask's defaults
        with DistributedRun.open(client, source, clean, cc) as run:
            ss, results = run.generate(problems, [0.5], params, seed=1, device="cpu")
            during = client.run(_payload_state, run.payload.name)
        after = client.run(_payload_state, run.payload.name)
    assert sorted(r.index for r in results) == list(range(8))
    for state in during.values():   # one model build and one clean-set prediction per worker, however many shards
        assert state["registered"] and not state["profiling"] and state["tick_ms"] == 1000
        assert state["clean_values"] <= 1 and state["loads"] <= 1
    assert sum(s["clean_values"] for s in during.values()) == len({r.worker for r in results})
    assert all(not s["registered"] and s["profiling"] and s["tick_ms"] == 20 for s in after.values())   # restored
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        single = generate_perturbations(source.build(), clean, problems, [0.5], params, seed=1)
    assert np.array_equal(ss.pixels, single.pixels)


def test_cli_generate_on_the_cluster_matches_the_local_run(cluster, tmp_path, capsys):
    from rig.cli import main
    from rig.cli.stimuli import load_stimulus_set
    from tests.test_perturb_cli import _fitted_model_file

    model = _fitted_model_file(tmp_path)
    base = ("[images]\nsize_px = 32\nn_clean = 8\n[perturb]\nrestarts = 3\nsteps = 6\nearly_stop = false\n"
            "[compute]\nproblems_per_shard = 1\nprobe_batches = 1\n")
    runs = {}
    for name, extra in (("local", ""), ("dask", f"scheduler = \"{cluster.scheduler_address}\"\n")):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(base + extra)
        out = tmp_path / f"{name}.npz"
        with torch.random.fork_rng():
            torch.set_num_threads(1)
            rc = main(["stimuli", "generate", "--model", str(model), "--out", str(out), "--config", str(cfg),
                       "--sites", "0,2,3", "--images-per-site", "2", "--epsilons", "0.5,1.5", "--no-progress"])
        assert rc == 0
        runs[name] = (load_stimulus_set(out), capsys.readouterr().out)
    (a, out_a), (b, out_b) = runs["local"], runs["dask"]
    for text in (out_a, out_b):
        assert "passes/s on cpu" in text and "expected time" in text and "peak memory" in text
    assert "6 shards on tcp://127.0.0.1:" in out_b
    assert len(a) == len(b) == 8 + 6 * 2 * 2 + 6 * 2
    for c in ("kind", "parent", "site", "epsilon_requested", "direction", "budget_passes"):
        assert np.array_equal(getattr(a, c), getattr(b, c)), c
    # the convolution backbone sees other batches in shards: equal up to float rounding (bitwise on most CPUs)
    diff = np.abs(a.pixels.astype(int) - b.pixels.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    np.testing.assert_allclose(a.predicted_change, b.predicted_change, rtol=1e-3, atol=1e-4)
