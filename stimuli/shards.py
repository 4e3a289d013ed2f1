"""A day's perturbation problems in shards: the pure shard function, the split and the merge.

A *problem* here is one (clean image index, site index) pair of
:func:`stimuli.perturb.generate_perturbations`; it expands to every epsilon in both
directions (and its random controls). A *shard* is a contiguous block of the problem list.

:func:`solve_shard` runs the engine (:func:`stimuli.perturb.iter_solutions`) on the **full**
clean image set and the shard's problems only, with the day's seed, and assembles the
stimuli exactly as :func:`stimuli.perturb.generate_perturbations` does. The engine seeds every restart from (seed, image index,
site, epsilon, direction, restart) and every random control from (seed, parent, site,
epsilon, draw), and computes the clean predictions over the full image set in the same
batches, so a shard's stimuli are exactly the single run's stimuli for those problems,
provided the model evaluates each row independently of the other rows in its batch
(true bit for bit for row-separable models; for convolution networks on CPU the engine's
own guarantee is agreement to float rounding, about 1e-5 relative; see the README).

:func:`merge_shards` puts the pieces back in the single run's order: the clean images,
then every targeted stimulus problem-major (epsilon, then direction +1, -1), then every
random control, and refuses a set of pieces with a shard missing or duplicated.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stimuli.perturb import (
    PerturbParams,
    _to_float,
    join_with_clean,
    prepare_engine,
    solve_block,
    validate_epsilons,
    validate_images,
)
from stimuli.stimset import StimulusSet


@dataclass(frozen=True)
class Shard:
    """Problems ``start:stop`` of the day's problem list; ``index`` counts shards from 0."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def split_problems(n_problems: int, problems_per_shard: int) -> list[Shard]:
    """Contiguous shards of at most ``problems_per_shard`` problems each, covering all of them in order."""
    if int(problems_per_shard) != problems_per_shard or problems_per_shard < 1:
        raise ValueError(f"problems_per_shard = {problems_per_shard!r} is impossible; expected an integer >= 1")
    if n_problems < 0:
        raise ValueError(f"n_problems = {n_problems} is impossible; expected >= 0")
    k = int(problems_per_shard)
    return [Shard(i, a, min(a + k, n_problems)) for i, a in enumerate(range(0, n_problems, k))]


def split_evenly(n_problems: int, n_shards: int) -> list[Shard]:
    """``n_shards`` contiguous shards (fewer if there are fewer problems) whose sizes differ by at most one."""
    if int(n_shards) != n_shards or n_shards < 1:
        raise ValueError(f"n_shards = {n_shards!r} is impossible; expected an integer >= 1")
    if n_problems < 0:
        raise ValueError(f"n_problems = {n_problems} is impossible; expected >= 0")
    k = min(int(n_shards), n_problems)
    edges = [n_problems * i // k for i in range(k + 1)] if k else [0]
    return [Shard(i, a, b) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]


# A shard's engine batch drains at its end (its last restarts run on with the batch part
# empty): at most about max_batch_rows x steps row-slots, whatever the shard's size. A shard
# of at least TAIL_FACTOR times that many passes keeps the waste under 1 / TAIL_FACTOR.
TAIL_FACTOR = 20


def auto_shards(n_problems: int, epsilons: Sequence[float], params: PerturbParams, slots: int) -> list[Shard]:
    """The day's shards when ``compute.problems_per_shard = 0`` (auto), for ``slots`` workers running at once.

    Each shard gets at least ``TAIL_FACTOR * max_batch_rows * steps`` passes' worth of (image, site)
    pairs (:func:`stimuli.cost.passes_per_problem`, both directions at every epsilon > 0), so
    the engine's batches stay full for all but a few percent of a shard's passes, and the
    number of shards is a multiple of ``slots`` (as many rounds as that allows, at least one
    shard per slot while there are pairs), with sizes differing by at most one pair, so every
    slot gets the same work and none waits at the end.
    """
    from stimuli.cost import passes_per_problem

    params = params.validated()
    slots = max(1, int(slots))
    live = sum(1 for e in epsilons if float(e) > 0)
    per_pair = max(1, 2 * live * passes_per_problem(params))
    min_pairs = max(1, -(-TAIL_FACTOR * params.max_batch_rows * params.steps // per_pair))
    rounds = max(1, n_problems // (slots * min_pairs))
    return split_evenly(n_problems, slots * rounds)


@dataclass
class ShardResult:
    """What one shard produced: its targeted stimuli and random controls, each as a dict of
    arrays (``pixels`` plus every :attr:`StimulusSet.COLUMNS`; parents index the full clean
    set), the passes it spent, how long it took (seconds), when it ended (Unix time, seconds)
    and where it ran (host:pid)."""

    index: int
    targeted: dict[str, np.ndarray] | None
    controls: dict[str, np.ndarray] | None
    passes: int
    seconds: float
    worker: str = ""
    ended: float = 0.0
    model_loads: int = 0    # times the process that ran it had built the model (set by the distributed runner)


def _columns(ss: StimulusSet | None) -> dict[str, np.ndarray] | None:
    return None if ss is None else {"pixels": ss.pixels, **{c: getattr(ss, c) for c in StimulusSet.COLUMNS}}


def clean_predictions(model, clean: np.ndarray, params: PerturbParams, device: str = "cpu") -> torch.Tensor:
    """(N, S) float32 predictions (spikes) on the day's full uint8 clean set, computed exactly as
    :func:`stimuli.perturb.generate_perturbations` computes them (batches of ``max_batch_rows``
    over the full set), so a worker can compute them once per day and hand them to every shard
    it runs (:func:`solve_shard`'s ``clean_values``)."""
    clean = validate_images(clean)
    x = _to_float(clean, device)
    objective, params = prepare_engine(model, x, params, device)
    with objective.session():
        return objective.predict_all_batched(x, params.max_batch_rows)


def solve_shard(model, clean: np.ndarray, problems: Sequence[tuple[int, int]], epsilons: Sequence[float],
                params: PerturbParams, seed: int, device: str = "cpu", index: int = 0,
                clean_values: torch.Tensor | None = None) -> ShardResult:
    """The stimuli of ``problems`` (a block of the day's list) as the single run makes them: the
    engine's own :func:`stimuli.perturb.solve_block` on this block.

    ``clean``: the day's full uint8 clean set (N, H, W, 3), never a subset (image indices
    are part of every seed). ``epsilons``: L2 norms (pixels in [0,1]). Pure: the result is a
    function of (model, clean, problems, epsilons, params, seed) only. ``clean_values``: the
    (N, S) output of :func:`clean_predictions` for this model, clean set and params (computed
    here when None; a worker passes its cached copy).
    """
    t = time.perf_counter()
    clean = validate_images(clean)
    eps_list = validate_epsilons(epsilons)
    x = _to_float(clean, device)
    objective, params = prepare_engine(model, x, params, device)
    with objective.session():
        if clean_values is None:
            clean_values = objective.predict_all_batched(x, params.max_batch_rows)
        elif tuple(clean_values.shape[:1]) != (len(clean),):
            raise ValueError(f"clean_values has {clean_values.shape[0]} rows for {len(clean)} clean images")
        block = solve_block(objective, clean, clean_values, problems, eps_list, params, seed)
    return ShardResult(index, _columns(block.targeted), _columns(block.controls), block.passes,
                       time.perf_counter() - t, f"{socket.gethostname()}:{os.getpid()}", time.time())


def merge_shards(clean: np.ndarray, results: Sequence[ShardResult], n_shards: int,
                 epsilons: Sequence[float]) -> StimulusSet:
    """The single run's :class:`StimulusSet` from its ``n_shards`` pieces (any order);
    ``epsilons``: the grid every shard was solved on (their ``epsilon_index`` points into it).

    Raises ValueError naming the shards that are missing or appear more than once.
    """
    seen = [r.index for r in results]
    missing = sorted(set(range(n_shards)) - set(seen))
    dup = sorted({i for i in seen if seen.count(i) > 1})
    extra = sorted(set(seen) - set(range(n_shards)))
    if missing or dup or extra:
        raise ValueError(f"cannot merge shards: missing {missing}, duplicated {dup}, unknown {extra} "
                         f"(expected each of 0..{n_shards - 1} exactly once)")
    ordered = sorted(results, key=lambda r: r.index)
    return join_with_clean(clean, [r.targeted for r in ordered] + [r.controls for r in ordered],
                           validate_epsilons(epsilons))


def solve_in_shards(model, clean: np.ndarray, problems: Sequence[tuple[int, int]], epsilons: Sequence[float],
                    params: PerturbParams, seed: int, problems_per_shard: int, device: str = "cpu") -> StimulusSet:
    """Every shard in this process, one after the other, merged (the reference for the distributed path)."""
    shards = split_problems(len(problems), problems_per_shard)
    results = [solve_shard(model, clean, problems[s.start:s.stop], epsilons, params, seed, device, s.index)
               for s in shards]
    return merge_shards(clean, results, len(shards), epsilons)
