"""Plan generation for one fixed problem set: in this process vs on a 2-worker Dask LocalCluster.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_bench.py [--pairs 6] [--quick]

Problem set: a slice of a paper-scale day, with the paper day's per-pair work. The paper
day is 21 sites x 42 clean images, every epsilon in both directions, 100 restarts x 40 steps
with restart pruning and early stopping (PerturbParams() defaults, max_batch_rows 64, one
random control per problem and epsilon). Here: the same 42 clean images (builtin, 32 px),
a fitted model file with 21 sites (the "tiny" backbone, random init, a ridge readout),
epsilons 0.5, 1, 2, 3 (pixels in [0,1]), PerturbParams() defaults, and ``--pairs`` (image,
site) pairs (default 6: pair k = image 7k mod 42, site k mod 21) of the day's 882: 6 pairs x 4
epsilons x 2 directions = 48 problems, 4,800 restarts, about 78,000 passes. Each pair is
exactly the work a pair has at paper scale, so per-shard costs weigh what they would there
(with this tiny model at 32 px a pass is ~0.4 ms, so per-batch and per-shard costs weigh
far MORE than with ResNet50 at 224 px: a conservative test). ``--quick``: 2 pairs, 50
restarts.

In-process: one stimuli.perturb.generate_perturbations call (compute.scheduler = "local"),
with the workers' allocator settings (rig.compute.generate.relax_malloc) and ``--inprocess-threads`` torch threads (default 1: overhead_fraction counts core-seconds,
see below; ``--inprocess-threads 2`` gives it both cores instead). Cluster:
LocalCluster(n_workers=2 (--workers), processes=True, threads_per_worker=1) on 127.0.0.1,
with itloop's quiet Dask housekeeping (rig.compute.generate.QUIET_DASK, what the README tells a
lab to start its scheduler and workers with and what SLURM jobs get; ``--dask-defaults``:
Dask's stock settings, under which the payload still quiets each worker at run time), the model shipped the production way (rig.compute.generate.FittedModelFiles: file bytes +
sha256, once per worker), shards as compute.problems_per_shard = 0 (auto,
stimuli.shards.auto_shards) unless ``--per-shard`` is given. Not timed, printed separately:
the cluster's start-up, and per worker the payload, the model build, its clean-set
predictions and the same small warm-up the in-process run gets (one-off costs per worker and
day, seconds against a paper day's hours). Timed: every shard of the problem set, merged.

Printed: both wall times, the shards' summed compute time, the workers' idle time at the
end, whether the two stimulus sets are identical (pixels and every column), and on the last line

    speedup = t_inprocess / t_cluster
    overhead_fraction = (workers * t_cluster - t_inprocess) / t_inprocess
    cpu_overhead_fraction = (cluster CPU seconds - in-process CPU seconds) / in-process CPU seconds

overhead_fraction: the worker-seconds the cluster spent beyond the in-process run's
seconds, as a fraction of it (0 when 2 single-threaded workers on 2 idle cores halve the
single-threaded in-process time). cpu_overhead_fraction counts CPU time (this process,
holding the client, scheduler and nannies, plus both worker processes), so it measures what
Dask and sharding add even when the machine is shared with other jobs, which inflates the
wall-clock numbers (the load average is printed before and after). Run with
OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import psutil
import torch

SIZE, N_IMAGES, N_SITES = 32, 42, 21
EPSILONS = [0.5, 1.0, 2.0, 3.0]


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


def problem_set(n_pairs: int) -> list[tuple[int, int]]:
    """``n_pairs`` of the paper day's 21 x 42 (image, site) pairs, spread over images and sites."""
    return [((7 * k) % N_IMAGES, k % N_SITES) for k in range(n_pairs)]


def _warm_worker(name: str, key: str, params: dict, problem: tuple[int, int], dask_worker=None) -> tuple[float, int]:
    """On one worker (client.run): build the model, cache the clean-set predictions, and run
    the in-process run's warm-up shard; returns the seconds it took and the worker's torch threads."""
    from rig.compute.generate import _payload
    from stimuli.perturb import PerturbParams
    from stimuli.shards import solve_shard

    t = time.perf_counter()
    plugin = _payload(name, key, dask_worker)
    pp = PerturbParams(**params)
    model = plugin.model("cpu")
    cv = plugin.clean_values("cpu", pp)
    solve_shard(model, plugin.clean, [problem], [0.5], PerturbParams(restarts=2, steps=2), 3, "cpu", clean_values=cv)
    return time.perf_counter() - t, torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6, help="(image, site) pairs of the paper day (default 6)")
    ap.add_argument("--quick", action="store_true", help="2 pairs, 50 restarts")
    ap.add_argument("--per-shard", type=int, default=0, help="(image, site) pairs per shard (0 = auto)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    ap.add_argument("--inprocess-threads", type=int, default=1, help="torch threads of the in-process run")
    ap.add_argument("--dask-defaults", action="store_true",
                    help="run the LocalCluster with Dask's stock housekeeping instead of rig.compute.generate.QUIET_DASK")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from modelfit.store import load_fitted
    from rig.compute.generate import QUIET_DASK, DistributedRun, FittedModelFiles, relax_malloc
    from rig.config import ComputeConfig
    from stimuli.images import builtin_images
    from stimuli.perturb import PerturbParams, generate_perturbations

    n_pairs = 2 if args.quick else args.pairs
    params = PerturbParams(restarts=50) if args.quick else PerturbParams()
    clean = builtin_images(N_IMAGES, SIZE, 1)
    problems = problem_set(n_pairs)
    torch.set_num_threads(args.inprocess_threads)
    malloc = relax_malloc()   # the same allocator settings as the workers' (DayPayload.setup): like for like
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, torch threads "
          f"{torch.get_num_threads()} in-process, 1 per worker; worker malloc settings in this process too: {malloc}")
    print(f"problem set: {n_pairs} (image, site) pairs of the paper day's {N_SITES} x {N_IMAGES} x {len(EPSILONS)} "
          f"epsilons x 2 directions = {n_pairs * len(EPSILONS) * 2} problems, {params.restarts} restarts x "
          f"{params.steps} steps (pruning {params.prune}, early stop {params.early_stop}), max_batch_rows "
          f"{params.max_batch_rows}, {N_IMAGES} clean images at {SIZE} px, tiny backbone, {N_SITES} sites")
    with tempfile.TemporaryDirectory() as tmp:
        mpath = fitted_model_file(Path(tmp), SIZE, N_SITES)
        module = load_fitted(mpath).module()
        generate_perturbations(module, clean, problems[:1], [0.5], PerturbParams(restarts=2, steps=2))   # warm-up
        t, c = time.perf_counter(), time.process_time()
        single = generate_perturbations(module, clean, problems, EPSILONS, params, seed=3)
        t_in, cpu_in = time.perf_counter() - t, time.process_time() - c
        passes = int(single.budget_passes.sum())
        print(f"in-process: {t_in:.2f} s, {passes} passes, {passes / t_in:.1f} passes/s, "
              f"CPU {cpu_in:.2f} s; load average {os.getloadavg()[0]:.2f}")

        t = time.perf_counter()
        with dask.config.set({} if args.dask_defaults else QUIET_DASK), LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster, timeout=60) as client:
            client.wait_for_workers(args.workers, timeout=120)
            startup = time.perf_counter() - t
            cc = ComputeConfig(scheduler=cluster.scheduler_address, problems_per_shard=args.per_shard)
            source = FittedModelFiles.from_paths(mpath)
            procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
            t = time.perf_counter()
            with DistributedRun.open(client, source, clean, cc) as run:
                warm = client.run(_warm_worker, run.payload.name, run.payload.key, dataclasses.asdict(params),
                                  problems[0])
                t_once = time.perf_counter() - t
                shards = run.shards(len(problems), EPSILONS, params)
                cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
                t0_epoch = time.time()
                t, c = time.perf_counter(), time.process_time()
                sharded, results = run.generate(problems, EPSILONS, params, 3, "cpu", shards=shards)
                t_cl = time.perf_counter() - t
                cpu_main = time.process_time() - c
                cpu_workers = [sum(p.cpu_times()[:2]) - c0 for p, c0 in zip(procs, cpu0)]
            cpu_cl = cpu_main + sum(cpu_workers)
    compute = sum(r.seconds for r in results)
    last_end = {}
    for r in results:
        last_end[r.worker] = max(last_end.get(r.worker, 0.0), r.ended - t0_epoch)
    idle = sum(t_cl - e for e in last_end.values()) + t_cl * (args.workers - len(last_end))
    same = np.array_equal(single.pixels, sharded.pixels) and all(
        np.array_equal(getattr(single, c), getattr(sharded, c), equal_nan=c == "predicted_change")
        for c in single.COLUMNS)
    sizes = sorted({len(s) for s in shards})
    print(f"cluster start-up (not timed): {startup:.2f} s; payload + model build + clean predictions + warm-up "
          f"per worker (not timed): {', '.join(f'{w[0]:.2f}' for w in warm.values())} s, {t_once:.2f} s in all; "
          f"torch threads per worker: {', '.join(str(w[1]) for w in warm.values())}")
    print(f"{args.workers}-worker LocalCluster: {t_cl:.2f} s for {len(results)} shards of "
          f"{'/'.join(map(str, sizes))} pairs; shards' compute summed {compute:.2f} s "
          f"({compute / t_in:.2f}x the in-process time); workers idle at the end {idle:.2f} s in all")
    print(f"Dask housekeeping: {'stock defaults' if args.dask_defaults else 'QUIET_DASK ' + str(QUIET_DASK)}")
    print(f"identical to the in-process run bit for bit: {same}")
    print(f"CPU seconds: in-process {cpu_in:.2f}, cluster {cpu_cl:.2f} = this process (client, scheduler, nannies) "
          f"{cpu_main:.2f} + workers {' + '.join(f'{w:.2f}' for w in cpu_workers)}")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print(f"speedup={t_in / t_cl:.2f} overhead_fraction={(args.workers * t_cl - t_in) / t_in:.3f} "
          f"cpu_overhead_fraction={(cpu_cl - cpu_in) / cpu_in:.3f}")


if __name__ == "__main__":
    main()
