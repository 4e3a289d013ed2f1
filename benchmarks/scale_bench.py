"""Plan generation for one fixed problem set: in this process vs on a 2-worker Dask LocalCluster.

    .venv/bin/python benchmarks/scale_bench.py [--quick]

Model: a fitted model file (the "tiny" backbone, random init, a ridge readout) shipped the
production way (rig.loop.compute.FittedModelFiles: file bytes + sha256, once per worker).
In-process: one stimuli.perturb.generate_perturbations call (compute.scheduler = "local")
with torch's default threads. Cluster: LocalCluster(n_workers=2 (--workers), processes=True,
threads_per_worker=1) on 127.0.0.1, started before the clock starts (its start-up is
printed separately), then the payload (model file bytes + images) goes to both workers and
each runs the same small warm-up as the in-process run did (printed separately, once per
worker and day); the timed part is every shard of the problem set.

Printed: both wall times, the shards' summed compute time, whether the two stimulus sets
are identical, and on the last line

    speedup = t_inprocess / t_cluster
    overhead_fraction = (workers * t_cluster - t_inprocess) / t_inprocess

    cpu_overhead_fraction = (cluster CPU seconds - in-process CPU seconds) / in-process CPU seconds

overhead_fraction: the worker-seconds the cluster spent beyond the in-process run's
seconds, as a fraction of it (0 when 2 workers on 2 idle cores halve the time).
cpu_overhead_fraction counts CPU time (this process, holding the client, scheduler and
nannies, plus both worker processes), so it measures what Dask adds even when the machine
is shared with other jobs, which inflates the wall-clock numbers (the load average is
printed). Run with OMP_NUM_THREADS=1: with more torch threads than free cores the
in-process run thrashes.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch


def fitted_model_file(folder: Path, size: int, n_sites: int = 6) -> Path:
    from modelfit.backbone import build_backbone
    from modelfit.readout import Readout
    from modelfit.store import save_fitted
    from stimuli.images import builtin_images

    bb = build_backbone("tiny", "layer4", None)
    x = torch.from_numpy(builtin_images(64, size, 5)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        feats = bb(x).numpy()
    rng = np.random.default_rng(0)
    y = feats @ rng.normal(size=(feats.shape[1], n_sites)) + rng.normal(size=(64, n_sites))
    readout = Readout(method="ridge", alphas=[1.0, 10.0], cv_folds=2).fit(feats, y)
    return save_fitted(folder / "model.h5", readout, bb, np.arange(n_sites))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smaller problem set")
    ap.add_argument("--per-shard", type=int, default=2, help="(image, site) pairs per shard")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from rig.config import ComputeConfig
    from rig.loop.compute import DistributedRun, FittedModelFiles
    from stimuli.images import builtin_images
    from stimuli.perturb import PerturbParams, generate_perturbations

    size = 32
    n_pairs, per_shard = (8 if args.quick else 16), args.per_shard
    clean = builtin_images(12, size, 1)
    problems = [(i % len(clean), i % 6) for i in range(n_pairs)]
    eps = [0.5, 1.0, 2.0]
    params = PerturbParams(restarts=8 if args.quick else 16, steps=20, max_batch_rows=64, random_controls_per_image=1)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, torch threads "
          f"{torch.get_num_threads()} in-process, 1 per worker")
    print(f"problem set: {n_pairs} (image, site) pairs x {len(eps)} epsilons x 2 directions, "
          f"{params.restarts} restarts x {params.steps} steps, {size} px, tiny backbone; {per_shard} pairs per shard")
    with tempfile.TemporaryDirectory() as tmp:
        mpath = fitted_model_file(Path(tmp), size)
        from modelfit.store import load_fitted

        module = load_fitted(mpath).module()
        generate_perturbations(module, clean, problems[:1], [0.5], PerturbParams(restarts=2, steps=2),
                               progress=False)   # warm-up
        t, c = time.perf_counter(), time.process_time()
        single = generate_perturbations(module, clean, problems, eps, params, seed=3, progress=False)
        t_in, cpu_in = time.perf_counter() - t, time.process_time() - c
        passes = int(single.budget_passes.sum())
        print(f"in-process: {t_in:.2f} s, {passes} passes, {passes / t_in:.1f} passes/s")

        t = time.perf_counter()
        with LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster, timeout=60) as client:
            client.wait_for_workers(args.workers, timeout=120)
            startup = time.perf_counter() - t
            cc = ComputeConfig(scheduler=cluster.scheduler_address, problems_per_shard=per_shard)
            source = FittedModelFiles.from_paths(mpath)
            procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
            t = time.perf_counter()
            with DistributedRun.open(client, source, clean, cc) as run:
                # the same warm-up as in-process, on each worker: builds the model there (one-off per day)
                warm = ComputeConfig(scheduler=cc.scheduler, problems_per_shard=1)
                DistributedRun(client, run.payload, warm).generate(problems[:args.workers], [0.5], PerturbParams(restarts=2, steps=2),
                                                                   3, "cpu", progress=False)
                t_once = time.perf_counter() - t
                cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
                t, c = time.perf_counter(), time.process_time()
                sharded, results = run.generate(problems, eps, params, 3, "cpu", progress=False)
                t_cl = time.perf_counter() - t
            # CPU seconds of the whole cluster: this process (client, scheduler, nannies) + the worker processes
            cpu_main = time.process_time() - c
            cpu_workers = [sum(p.cpu_times()[:2]) - c0 for p, c0 in zip(procs, cpu0)]
            cpu_cl = cpu_main + sum(cpu_workers)
    compute = sum(r.seconds for r in results)
    same = np.array_equal(single.pixels, sharded.pixels) and all(
        np.array_equal(getattr(single, c), getattr(sharded, c), equal_nan=c == "predicted_change")
        for c in single.COLUMNS)
    print(f"cluster start-up (not timed below): {startup:.2f} s; payload to the workers + model build + "
          f"warm-up (not timed below): {t_once:.2f} s")
    print(f"{args.workers}-worker LocalCluster: {t_cl:.2f} s for {len(results)} shards; shards' compute summed {compute:.2f} s "
          f"({compute / t_in:.2f}x the in-process time); workers: {sorted({r.worker for r in results})}")
    print(f"identical to the in-process run bit for bit: {same}")
    print(f"CPU seconds: in-process {cpu_in:.2f}, cluster {cpu_cl:.2f} = this process (client, scheduler, nannies) "
          f"{cpu_main:.2f} + workers {' + '.join(f'{w:.2f}' for w in cpu_workers)}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print(f"speedup={t_in / t_cl:.2f} overhead_fraction={(args.workers * t_cl - t_in) / t_in:.3f} "
          f"cpu_overhead_fraction={(cpu_cl - cpu_in) / cpu_in:.3f}")


if __name__ == "__main__":
    main()
