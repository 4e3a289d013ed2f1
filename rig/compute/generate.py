"""Where a day's perturbations are computed: in this process, or in shards on Dask distributed.

``[compute] scheduler``:

- ``"local"``: one :func:`stimuli.perturb.generate_perturbations` call in this process
  (the behaviour before sharding existed);
- ``"tcp://host:8786"``: a running Dask scheduler (``dask scheduler`` plus ``dask worker``
  processes, one per GPU);
- ``"slurm"``: a Dask cluster of SLURM jobs through ``dask-jobqueue`` (``slurm_*`` keys).

On Dask, the problem list is cut into shards of ``problems_per_shard`` (image, site) pairs,
or with ``problems_per_shard = 0`` (auto) into shards big enough to keep the engine's
batches full and as many per worker slot (:func:`stimuli.shards.auto_shards`). Each shard
is a task whose arguments are the model's and the images' sha256, the shard's problems, the
epsilons, the optimiser parameters and the seed; the model files and the clean images
themselves travel once per worker, inside a worker plugin (:class:`DayPayload`) that every
worker (also one started later, e.g. to replace a killed one) receives when it joins. The
model is built, and the clean set predicted, once per worker process. Task keys
are derived from the task's inputs, so a shard is never computed twice at once; a worker
that dies takes its running shards with it and the scheduler runs them again elsewhere;
:func:`stimuli.shards.merge_shards` refuses a result with a shard missing or duplicated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelfit.progressbars import bar, progress_bars
from rig.config import ComputeConfig
from rig.errors import UserError
from stimuli.cost import PassRate, RunSize, measure_pass_rate
from stimuli.modes import COMPILE_PAYS_AFTER_S
from stimuli.perturb import PerturbParams
from stimuli.shards import Shard, ShardResult, auto_shards, merge_shards, solve_shard, split_problems
from stimuli.stimset import StimulusSet

if TYPE_CHECKING:
    from distributed import Client
    from torch import nn

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the model, as files
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_fitted(data: bytes, name: str = "model"):
    """A :class:`modelfit.store.FittedModel` parsed from a fitted-model file's bytes (no file read)."""
    import io

    import h5py

    from modelfit.store import read_fitted_group

    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError as e:
        raise ValueError(f"{name!r} is not an HDF5 fitted-model file ({e})") from None
    with f:
        return read_fitted_group(f)


@dataclass
class FittedModelFiles:
    """A model source as files: a fitted model (``itloop model fit`` output) and its backbone
    weights file, as bytes, read once (:meth:`from_paths`) and shipped as they are to Dask workers.

    ``weights`` is None for a randomly initialised backbone (built from its seed). The
    sha256 of each file is checked again where the model is built. :meth:`fitted` (the
    parsed file) and :meth:`build` (the torch module, per device) are made once per process.
    """

    fitted_bytes: bytes
    weights: bytes | None
    fitted_sha256: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        self.fitted_sha256 = _sha256(self.fitted_bytes)
        self.weights_sha256 = _sha256(self.weights) if self.weights is not None else "random-init"
        self._parsed = None
        self._built: dict[str, object] = {}

    def __getstate__(self) -> dict:
        # what travels: the bytes and their digests, never a parsed or built model
        return {k: getattr(self, k) for k in ("fitted_bytes", "weights", "fitted_sha256", "weights_sha256")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._parsed, self._built = None, {}

    @property
    def sha256(self) -> str:
        """One digest naming the exact model (fitted file + weights file)."""
        return _sha256(f"{self.fitted_sha256}:{self.weights_sha256}".encode())

    @classmethod
    def from_paths(cls, model_path: str | os.PathLike, weights: str | os.PathLike | None = None) -> FittedModelFiles:
        """Read ``model_path`` and the weights file it was fitted with (``weights`` if it moved), each once."""
        data = Path(model_path).read_bytes()
        fitted = _read_fitted(data, str(model_path))
        if fitted.random_init:
            out = cls(data, None)
        else:
            wpath = str(weights) if weights else fitted.weights_path
            if not wpath or not Path(wpath).is_file():
                raise UserError(f"model {model_path}: its weights file {wpath!r} does not exist; pass the weights "
                                "file (model.weights / --weights)")
            wbytes = Path(wpath).read_bytes()
            if _sha256(wbytes) != fitted.weights_sha256:
                raise UserError(f"weights file {wpath} is not the one {model_path} was fitted with (sha256 differs); "
                                "pass the original weights file")
            out = cls(data, wbytes)
        out._parsed = fitted
        return out

    def fitted(self):
        """The fitted model (:class:`modelfit.store.FittedModel`: readout, sites, scores), parsed once."""
        if self._parsed is None:
            self._parsed = _read_fitted(self.fitted_bytes)
        return self._parsed

    def build(self, device: str = "cpu"):
        """The images -> (B, S) torch module on ``device``, built once per process from the bytes
        (checked against their sha256)."""
        if device in self._built:
            return self._built[device]
        if _sha256(self.fitted_bytes) != self.fitted_sha256 or (
                self.weights is not None and _sha256(self.weights) != self.weights_sha256):
            raise ValueError("model bytes do not match their sha256; the payload was corrupted in transit")
        with tempfile.TemporaryDirectory(prefix="itloop-model-") as tmp:
            wpath = None
            if self.weights is not None:   # the backbone loads its weights from a file
                wpath = Path(tmp) / "weights.pt"
                wpath.write_bytes(self.weights)
            self._built[device] = self.fitted().module(weights=wpath, device=device)
        return self._built[device]


@dataclass
class InMemoryModel:
    """A model source that is already a torch module in this process (tests, benchmarks,
    notebooks). It travels to Dask workers pickled; ``sha256`` names its weights."""

    module: nn.Module

    @property
    def sha256(self) -> str:
        import io

        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, buf)
        return _sha256(type(self.module).__qualname__.encode() + buf.getvalue())

    def build(self, device: str = "cpu"):
        return self.module.to(device)


ModelSource = FittedModelFiles | InMemoryModel


def images_sha256(clean: np.ndarray) -> str:
    """sha256 of a uint8 image array's shape and bytes."""
    h = hashlib.sha256(repr(clean.shape).encode())
    h.update(np.ascontiguousarray(clean).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- worker side
if TYPE_CHECKING:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
else:
    try:  # a base class only; the distributed path imports the rest when it is used
        from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
    except ImportError:  # pragma: no cover - dask is a dependency; keep "local" working without it
        _WorkerPlugin = object


def relax_malloc() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` in a worker (its nanny's pre-spawn default):
    with it glibc returns and re-faults every freed tensor buffer, which nearly doubled the
    CPU time of a shard here (DESIGN section 7 saw the same 2.4x). Sets the trim threshold
    to 1 GiB and the mmap threshold to 32 MiB through ``mallopt``; True when it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


# Dask's own housekeeping (distributed 2026.8.0, distributed.yaml): every server (scheduler,
# nanny, worker) wakes its event loop every 20 ms (admin.tick) and samples psutil every 500 ms
# (admin.system-monitor); a nanny checks its worker's memory every 100 ms
# (worker.memory.monitor-interval); a worker samples the stack of the executing task every
# 10 ms (worker.profile, read only by the dashboard's profile page), taking the GIL from the
# engine. Measured idle on a 2-worker LocalCluster on the 2-core development VM: 10.8 % of one
# core at the defaults (the process holding scheduler and nannies 4.7 %, each worker 3.1 %),
# 1.5 % with QUIET_DASK: on 2 cores that is ~5 % of the machine taken from the shards.
QUIET_DASK = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def quiet_dask_env() -> dict[str, str]:
    """:data:`QUIET_DASK` as environment variables (``DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s``,
    ...), for processes started elsewhere: ``dask scheduler`` / ``dask worker`` and SLURM jobs."""
    return {"DASK_" + "__".join(k.replace("-", "_").upper().split(".")): str(v) for k, v in QUIET_DASK.items()}


# what a payload does to a running worker that was started without QUIET_DASK: the profiler
# stops, the other callbacks slow down to QUIET_DASK's intervals (ms); restored on teardown
_PROFILER_CALLBACKS = ("profile", "profile-cycle")
_SLOWER_CALLBACKS = {"tick": 1000, "monitor": 5000, "memory_monitor": 1000}


def quiet_worker(worker) -> list[tuple]:
    """Stop ``worker``'s statistical profiler and slow its tick, system and memory monitors to
    :data:`QUIET_DASK`'s intervals; returns what to undo, for :func:`restore_worker`."""
    undo = []
    pcs = getattr(worker, "periodic_callbacks", {})
    for name in _PROFILER_CALLBACKS:
        pc = pcs.get(name)
        if pc is not None and pc.is_running():
            pc.stop()
            undo.append((pc, None))
    for name, ms in _SLOWER_CALLBACKS.items():
        pc = pcs.get(name)
        if pc is not None and pc.callback_time < ms:
            undo.append((pc, pc.callback_time))
            pc.callback_time = ms
    return undo


def restore_worker(undo: list[tuple]) -> None:
    """Undo :func:`quiet_worker`: restart what it stopped, put back the intervals it changed."""
    for pc, ms in undo:
        if ms is None:
            pc.start()
        else:
            pc.callback_time = ms


class DayPayload(_WorkerPlugin):
    """What every worker of a run needs once: the model source and the clean images.

    ``source``: a :data:`ModelSource` (anything with ``sha256`` and ``build(device)``).
    The built model is cached per device for the worker's life (``loads`` counts builds),
    and so are the model's predictions on the clean set (:func:`stimuli.shards.clean_predictions`,
    per device and batch settings), which every shard needs: they are computed once per
    worker, not once per shard. While registered, the worker's statistical profiler is paused
    and its housekeeping slowed (:func:`quiet_worker`).
    """

    idempotent = True

    def __init__(self, source, clean: np.ndarray) -> None:
        self.source = source
        self.clean = np.ascontiguousarray(clean)
        self.key = _sha256(f"{source.sha256}:{images_sha256(self.clean)}".encode())
        self.name = f"itloop-day-{self.key[:20]}"
        self._models: dict[str, object] = {}
        self._clean_values: dict[tuple, object] = {}
        self._paused: list = []
        self.loads = 0

    def __getstate__(self) -> dict:
        # what travels: the source and the images, never a worker's built model or caches
        return {"source": self.source, "clean": self.clean, "key": self.key, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._models, self._clean_values, self._paused, self.loads = {}, {}, [], 0

    def setup(self, worker=None) -> None:
        self._models, self._clean_values, self.loads = {}, {}, 0
        relax_malloc()
        progress_bars(False)   # a worker draws no bars: the controller's shard bar tells the progress
        if worker is not None:
            self._paused = quiet_worker(worker)

    def teardown(self, worker=None) -> None:
        self._models.clear()
        self._clean_values.clear()
        if getattr(getattr(worker, "status", None), "name", "") == "running":
            restore_worker(self._paused)
        self._paused = []

    def model(self, device: str):
        if device not in self._models:
            self._models[device] = self.source.build(device)
            self.loads += 1
        return self._models[device]

    def clean_values(self, device: str, params: PerturbParams):
        """(N, S) predictions on the clean set for ``device`` and ``params``' batch settings (cached)."""
        from stimuli.shards import clean_predictions

        key = (device, params.max_batch_rows)   # predictions run the model as given, in float32
        if key not in self._clean_values:
            self._clean_values[key] = clean_predictions(self.model(device), self.clean, params, device)
        return self._clean_values[key]


def _payload(name: str, key: str, worker=None) -> DayPayload:
    """This worker's registered payload ``name`` (``worker``: given inside ``client.run``, else the task's worker)."""
    from distributed import get_worker

    plugin = (worker or get_worker()).plugins.get(name)
    if not isinstance(plugin, DayPayload) or plugin.key != key:
        raise RuntimeError(f"worker has no payload {name} with key {key[:16]}; it was not registered")
    return plugin


def _run_shard(name: str, key: str, index: int, problems: list[tuple[int, int]], epsilons: list[float],
               params: dict, seed: int, device: str, torch_threads: int) -> ShardResult:
    """One shard on a worker: a pure function of (model sha256 + images sha256 = ``key``, problems, epsilons, params, seed)."""
    import torch

    plugin = _payload(name, key)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    pp = PerturbParams(**params)
    res = solve_shard(plugin.model(device), plugin.clean, problems, epsilons, pp, seed, device, index,
                      clean_values=plugin.clean_values(device, pp))
    res.model_loads = plugin.loads
    return res


def _run_probe(name: str, key: str, sites: list[int], params: dict, device: str, batches: int,
               torch_threads: int) -> PassRate:
    import torch

    plugin = _payload(name, key)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    return measure_pass_rate(plugin.model(device), plugin.clean, sites, PerturbParams(**params), device, batches)


# ----------------------------------------------------------------------------- clusters
def slurm_cluster_kwargs(cc: ComputeConfig) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` from ``[compute]``: one Dask worker per
    SLURM job, running one shard at a time (``cores=1``: one task thread) on ``slurm_cores``
    booked CPUs (``job_cpu``; torch uses them, see :func:`shard_torch_threads`)."""
    extra = [f"--gres=gpu:{cc.slurm_gpus}"] if cc.slurm_gpus else []
    kw = dict(cores=1, job_cpu=cc.slurm_cores, processes=1, memory=cc.slurm_memory, walltime=cc.slurm_walltime,
              job_name="itloop", job_extra_directives=extra + list(cc.slurm_job_extra),
              job_script_prologue=[f"export {k}={v}" for k, v in quiet_dask_env().items()])
    if cc.slurm_queue:
        kw["queue"] = cc.slurm_queue
    if cc.slurm_account:
        kw["account"] = cc.slurm_account
    if cc.slurm_interface:
        kw["interface"] = cc.slurm_interface
    return kw


def shard_torch_threads(cc: ComputeConfig) -> int:
    """torch threads per shard: ``torch_threads``, or on SLURM (when 0) the job's ``slurm_cores``; 0 = leave as is."""
    if cc.torch_threads:
        return cc.torch_threads
    return cc.slurm_cores if cc.scheduler == "slurm" else 0


def make_slurm_cluster(cc: ComputeConfig, **extra):
    """A ``dask_jobqueue.SLURMCluster`` (no job submitted yet; ``scale(jobs=...)`` submits)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**{**slurm_cluster_kwargs(cc), **extra})


@contextlib.contextmanager
def dask_client(cc: ComputeConfig) -> Iterator:
    """A ``distributed.Client`` on ``compute.scheduler`` with at least one worker; closed after."""
    from distributed import Client

    cluster = None
    try:
        if cc.scheduler == "slurm":
            cluster = make_slurm_cluster(cc)
            cluster.scale(jobs=cc.slurm_jobs)
            client = Client(cluster, timeout=cc.connect_timeout_s)
        else:
            client = Client(cc.scheduler, timeout=cc.connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise UserError(f"compute.scheduler = {cc.scheduler!r}: no Dask scheduler answered within "
                        f"{cc.connect_timeout_s:g} s ({exc}); start one (`dask scheduler` and `dask worker ADDRESS`) "
                        "or set compute.scheduler = \"local\"") from None
    try:
        try:
            client.wait_for_workers(1, timeout=cc.connect_timeout_s)
        except TimeoutError:
            raise UserError(f"compute.scheduler = {cc.scheduler!r}: no Dask worker joined within "
                            f"{cc.connect_timeout_s:g} s (compute.connect_timeout_s); start workers or raise the "
                            "timeout") from None
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_slots(client) -> int:
    """Shards the cluster runs at once: the sum of its workers' threads."""
    return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values()))


# ----------------------------------------------------------------------------- the distributed run
@dataclass
class DistributedRun:
    """A registered payload on a cluster: probe it, then generate every shard through it."""

    client: Client
    payload: DayPayload
    cc: ComputeConfig

    @classmethod
    @contextlib.contextmanager
    def open(cls, client, source, clean: np.ndarray, cc: ComputeConfig) -> Iterator["DistributedRun"]:
        payload = DayPayload(source, clean)
        client.register_plugin(payload, name=payload.name)
        try:
            yield cls(client, payload, cc)
        finally:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(payload.name)

    def slots(self) -> int:
        """Shards the cluster runs at once (on SLURM at least the jobs booked, which join over time)."""
        slots = worker_slots(self.client)
        return max(slots, self.cc.slurm_jobs) if self.cc.scheduler == "slurm" else slots

    def shards(self, n_problems: int, epsilons: Sequence[float], params: PerturbParams) -> list[Shard]:
        """The day's shards: ``problems_per_shard`` pairs each, or (0 = auto) :func:`stimuli.shards.auto_shards`."""
        if self.cc.problems_per_shard == 0:
            return auto_shards(n_problems, epsilons, params, self.slots())
        return split_problems(n_problems, self.cc.problems_per_shard)

    def probe(self, sites: Sequence[int], params: PerturbParams, device: str) -> PassRate:
        """Passes/s and peak memory of one worker (a task on one of them)."""
        fut = self.client.submit(_run_probe, self.payload.name, self.payload.key, [int(s) for s in sites],
                                 dataclasses.asdict(params), device, self.cc.probe_batches, shard_torch_threads(self.cc),
                                 pure=False)
        return fut.result()

    def generate(self, problems: Sequence[tuple[int, int]], epsilons: Sequence[float], params: PerturbParams,
                 seed: int, device: str, expected_passes: int | None = None,
                 max_resubmits: int = 2, shards: Sequence[Shard] | None = None) -> tuple[StimulusSet, list[ShardResult]]:
        """Every shard on the cluster, merged in the single run's order; returns (stimuli, shard results).

        ``shards``: the split of ``problems`` to use (default :meth:`shards`)."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        problems = [(int(i), int(s)) for i, s in problems]
        eps = [float(e) for e in epsilons]
        shards = list(shards) if shards is not None else self.shards(len(problems), eps, params)
        pdict = dataclasses.asdict(params)

        def submit(sh, attempt: int):
            token = _sha256(repr((self.payload.key, problems[sh.start:sh.stop], eps, sorted(pdict.items()), seed,
                                  device, attempt)).encode())
            return self.client.submit(_run_shard, self.payload.name, self.payload.key, sh.index,
                                      problems[sh.start:sh.stop], eps, pdict, int(seed), device,
                                      shard_torch_threads(self.cc), key=f"itloop-shard-{sh.index}-{token[:24]}")

        futures = {submit(sh, 0): (sh, 0) for sh in shards}
        results: dict[int, ShardResult] = {}
        shard_bar = _Progress(len(shards), expected_passes)
        ac = as_completed(list(futures))
        for fut in ac:
            sh, attempt = futures.pop(fut)
            try:
                res = fut.result()
            except KilledWorker:
                if attempt >= max_resubmits:
                    raise UserError(f"shard {sh.index}: every worker that ran it died ({attempt + 1} rounds of the "
                                    "scheduler's allowed failures); out of memory? lower perturb.max_batch_rows or "
                                    "compute.problems_per_shard") from None
                new = submit(sh, attempt + 1)
                futures[new] = (sh, attempt + 1)
                ac.add(new)
                continue
            if res.index in results:
                raise RuntimeError(f"shard {res.index} came back twice")
            results[res.index] = res
            shard_bar.update(res)
        shard_bar.close()
        return merge_shards(self.payload.clean, list(results.values()), len(shards), eps), list(results.values())


class _Progress:
    """Shards done, passes/s and ETA on one line (stderr)."""

    def __init__(self, total: int, expected_passes: int | None) -> None:
        self.total, self.expected = total, expected_passes
        self.done, self.passes, self.t0 = 0, 0, time.perf_counter()
        self.bar = bar(total=total, unit="shard", desc="shards", dynamic_ncols=True, file=sys.stderr)

    def update(self, res: ShardResult) -> None:
        self.done += 1
        self.passes += res.passes
        if self.bar.disable:
            return
        el = time.perf_counter() - self.t0
        rate = self.passes / el if el > 0 else 0.0
        post = {"passes_per_s": f"{rate:.1f}"}
        if self.expected and rate > 0:
            left = max(self.expected - self.passes, 0) / rate
            post["eta"] = time.strftime("%H:%M:%S", time.gmtime(left))
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- one entry point
def generate_stimuli(cc: ComputeConfig, clean: np.ndarray, problems: Sequence[tuple[int, int]],
                     epsilons: Sequence[float], params: PerturbParams, seed: int, device: str, *,
                     source: ModelSource, report: Callable[[str], None] | None = log.info) -> tuple[StimulusSet, PerturbParams]:
    """Measure, estimate, check the deadline, then generate (in-process or on Dask, per ``cc.scheduler``).

    ``source``: the model (:class:`FittedModelFiles` or :class:`InMemoryModel`), built once in
    this process (``"local"``) or once per Dask worker. ``params``' ``auto`` modes and
    ``max_batch_rows = 0`` are resolved on the device that runs the engine (compile ``auto``
    from the measured uncompiled rate: on CUDA where the run is long enough to repay it). ``report``:
    where the cost lines go (default: this module's logger; None = nowhere). Returns the stimuli and the resolved params (what
    the plan records). Raises :class:`rig.errors.UserError` when the run could not end before
    the deadline.
    """
    from rig.compute.budget import Estimate, check_deadline
    from stimuli.cost import engine_state_bytes, run_passes
    from stimuli.modes import resolve_mode
    from stimuli.perturb import generate_perturbations

    problems = [(int(i), int(s)) for i, s in problems]
    sites = sorted({s for _, s in problems}) or [0]
    auto_compile = params.compile == "auto"
    probe_params = dataclasses.replace(params, compile="off") if auto_compile else params

    def estimate(rate: PassRate, workers: int, clean_evaluations: int) -> tuple[RunSize, PerturbParams]:
        run = rate.params
        if run is None:
            raise ValueError("a cost estimate needs the PassRate's measured params (stimuli.cost.measure_pass_rate)")
        size = run_passes(len(problems), len(clean), epsilons, run, clean_evaluations)
        est = Estimate(size, rate, workers, rate.peak_bytes + engine_state_bytes(run, clean.shape[1:], len(clean),
                                                                              size.stimuli))
        if auto_compile:
            run = resolve_mode(dataclasses.replace(run, compile="auto"), device, est.seconds)
        if report is not None:
            for line in est.lines():
                report(line)
            if params.max_batch_rows == 0:
                report(f"cost: max_batch_rows = 0 -> {run.max_batch_rows} rows (as large as fits on {rate.device}, "
                       "measured once per process)")
            if auto_compile:
                report(f"cost: compile = auto -> {run.compile} (the run takes {est.seconds:.0f} s uncompiled; "
                       f"compiling pays from {COMPILE_PAYS_AFTER_S:.0f} s on CUDA, never on CPU)")
        check_deadline(est, cc)
        return size, run

    if cc.scheduler == "local":
        model = source.build(device)
        run = probe_params
        if problems:
            _, run = estimate(measure_pass_rate(model, clean, sites, probe_params, device, cc.probe_batches), 1, 1)
        return generate_perturbations(model, clean, problems, list(epsilons), run, seed=seed, device=device), run
    with dask_client(cc) as client, DistributedRun.open(client, source, clean, cc) as dist:
        workers = dist.slots()
        expected, run = None, probe_params
        if problems:
            # each worker predicts the clean set once (cached for all the shards it runs)
            size, run = estimate(dist.probe(sites, probe_params, device), workers, workers)
            expected = size.passes
        run = resolve_mode(run, device) if not run.resolved else run
        shards = dist.shards(len(problems), epsilons, run)
        if report is not None:
            sizes = "/".join(str(n) for n in sorted({len(s) for s in shards}))
            how = "auto" if cc.problems_per_shard == 0 else "compute.problems_per_shard"
            report(f"compute: {len(problems)} (image, site) pairs in {len(shards)} shards on {cc.scheduler} "
                   f"({sizes} pairs each, {how}; {workers} worker slot(s) now)")
        ss, _ = dist.generate(problems, epsilons, run, seed, device, expected_passes=expected, shards=shards)
        return ss, run
