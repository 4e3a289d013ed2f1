"""The perturbation engine: targeted per-site L2 perturbations, batched across a whole day.

For every site ``i``, clean image ``x``, epsilon ``e`` and direction ``s`` it finds the
``delta`` with ``||delta||_2 <= e`` and ``x + delta`` in [0,1] (pixels in [0,1]) that
maximises ``s * (f_i(x + delta) - f_i(x))`` (spikes) under a differentiable model ``f``
(DESIGN sections 1 and 7). One (image, site, epsilon, direction) is a *problem*; each
problem runs ``restarts`` independent *rows*.

The optimiser, per row (the paper's refinements):

- start uniformly inside the ball (each row from its own seeded generator);
- a first phase (``first_phase_fraction`` of the steps) in a ball of radius
  ``first_phase_radius_factor * e``, then the final phase in radius ``e``, started from
  the exact projection of the first phase's best iterate; only final-phase iterates are
  candidates for the answer;
- normalised-gradient (L2 steepest ascent) steps from the phase's best iterate, exactly
  projected onto ball ∩ box (:mod:`stimuli.projection`); the step size starts at ``e``
  each phase and is multiplied by ``step_decay`` after every pass that makes no progress;
- the best iterate is kept with the value computed at exactly that ``delta``.

Beyond the paper (each switchable): *restart pruning* by successive halving (at each of
``prune_rounds`` checkpoints, after ``prune_after_fraction``, 2x, 3x ... that fraction of the
steps, only the best ``prune_keep_fraction`` of a problem's live restarts go on, ranked by
their current phase's best value; a pruned restart's final-phase best stays a candidate) and *early
stopping* (a final-phase row whose best improved by less than ``early_stop_tolerance``
(relative) over ``early_stop_patience`` passes stops).

Batching: rows of all problems share one batch of at most ``max_batch_rows`` rows; a row
that finishes, is pruned or parks frees its slot and the next row takes it at once, so
the batch stays full. Every row's computation depends only on itself (per-row seeds,
step sizes, radii), so results do not depend on how rows were batched.

Cost is counted in forward+backward passes of one row ("passes"); a problem's
``budget_passes`` is the sum over its restarts.

Code layout (after MadryLab ``robustness``' ``attack_steps``): the feasible set is
:class:`stimuli.projection.L2BoxSet` with its three verbs (``random_perturb``, ``step``,
``project``); a batch's per-row state is the dataclass :class:`_Rows`; the per-row steps of
one pass are plain functions (:func:`_start_rows`, :func:`_keep_best`,
:func:`_next_iterates`); :class:`_Search` runs the batch loop (``run``: fill the batch,
evaluate, keep the best, decide transitions, step, then retire, park and prune rows) and
keeps each problem's bookkeeping. A transform of the input gradient (before the step) belongs
in :meth:`_Search._evaluate`.

Entry points: :func:`solve_block` is the one solve-a-block function (a block's pairs expanded to
every epsilon and direction, solved, quantised to uint8, re-predicted, plus its random
controls): :func:`generate_perturbations` runs it on all problems, ``stimuli.shards.solve_shard``
on one shard. :func:`prepare_engine` resolves the device-dependent settings first
(:mod:`stimuli.modes`: precision, memory format, compilation, ``max_batch_rows = 0``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import typing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from modelfit.features import images_to_tensor
from modelfit.progressbars import bar
from stimuli.controls import random_stimuli
from stimuli.modes import EngineMode, fitting_batch_rows, resolve_mode
from stimuli.objective import SiteObjective
from stimuli.params import PerturbParams  # (public here too: stimuli.perturb.PerturbParams)
from stimuli.projection import L2BoxSet, host_syncs_are_free
from stimuli.quantize import quantize_perturbation
from stimuli.stimset import StimulusSet
from stimuli.transfer import wrap_objective


# ----------------------------------------------------------------------------- problems
@dataclass
class Solution:
    """The best perturbation found for one problem."""

    problem: int           # index into the problem arrays
    delta: torch.Tensor    # (3, H, W) float, pixels in [0,1] space, in ball ∩ box
    objective: float       # s * (f_site(x + delta) - f_site(x)), spikes (float32 model)
    passes: int            # forward+backward passes spent on this problem (all restarts)


def _row_seed(seed: int, image: int, site: int, epsilon: float, sign: int, restart: int) -> int:
    eps_key = int(np.float64(epsilon).view(np.uint64) % np.uint64(2**62))
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(image), int(site), eps_key, int(sign) + 1, int(restart)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % np.uint64(2**63))


@dataclass
class _Problems:
    """The problems of one :func:`iter_solutions` call, one entry per problem ``k``."""

    image: torch.Tensor      # (P,) long, index into the clean images
    site: torch.Tensor       # (P,) long
    eps: torch.Tensor        # (P,) float32 L2 radius (pixels in [0,1])
    sign: torch.Tensor       # (P,) long, +1 or -1
    f0: torch.Tensor         # (P,) float32, s * f_site(x) on the clean image (spikes)
    epsilon: Sequence[float] | np.ndarray  # the radii as given (float64), for the per-row seeds
    keys: list[tuple[int, int, float, int]] = dataclasses.field(init=False)   # host copy of (image, site, epsilon, sign) per problem

    def __post_init__(self) -> None:
        # read once here, not once per row from the device
        self.keys = list(zip(self.image.tolist(), self.site.tolist(), [float(e) for e in self.epsilon],
                             self.sign.tolist()))

    def __len__(self) -> int:
        return int(self.image.shape[0])


@dataclass
class _Rows:
    """The per-row state of a batch: one restart of one problem per row, tensors with one
    leading row dimension. A row's *anchor* is its current phase's best iterate (the point
    the next step starts from), ``anchor_val`` its value and ``anchor_grad`` its gradient."""

    problem: torch.Tensor      # (B,) long, index into the problems
    restart: torch.Tensor      # (B,) long
    site: torch.Tensor         # (B,) long
    sign: torch.Tensor         # (B,) float32, +1 or -1
    eps: torch.Tensor          # (B,) float32, the final phase's radius
    phase: torch.Tensor        # (B,) long, 1 (enlarged ball) or 2 (final ball)
    it: torch.Tensor           # (B,) long, passes done by this row
    stall: torch.Tensor        # (B,) long, consecutive passes without relative progress
    step: torch.Tensor         # (B,) float32, L2 step size
    anchor_val: torch.Tensor   # (B,) float32, s * (f(x + anchor) - f(x)); -inf before the phase's first pass
    rank_val: torch.Tensor     # (B,) float32, the best value after the last pass (pruning ranks by it)
    delta: torch.Tensor        # (B, 3, H, W) the iterate the next pass evaluates
    anchor: torch.Tensor       # (B, 3, H, W)
    anchor_grad: torch.Tensor  # (B, 3, H, W)
    x0: torch.Tensor           # (B, 3, H, W) the clean image, pixels in [0,1]
    lower: torch.Tensor        # (B, 3, H, W) -x0
    upper: torch.Tensor        # (B, 3, H, W) 1 - x0
    frozen: torch.Tensor       # (B,) bool: done or parked, waiting for the next host read (state kept)

    def __len__(self) -> int:
        return int(self.problem.shape[0])

    def take(self, idx: torch.Tensor) -> "_Rows":
        return _Rows(**{name: getattr(self, name)[idx] for name in _ROW_FIELDS})

    def where(self, mask: torch.Tensor) -> "_Rows":
        return self.take(mask.nonzero().squeeze(1))

    @staticmethod
    def cat(parts: Sequence[_Rows | None]) -> _Rows:
        kept = [p for p in parts if p is not None and len(p)]
        return _Rows(**{name: torch.cat([getattr(p, name) for p in kept]) for name in _ROW_FIELDS})

    def feasible(self, radius: torch.Tensor, idx: torch.Tensor | None = None) -> L2BoxSet:
        """Each row's (or rows ``idx``') ball of ``radius`` ∩ the pixel box; the box bounds
        were computed once, when the row started."""
        if idx is None:
            return L2BoxSet.from_bounds(self.lower, self.upper, radius)
        return L2BoxSet.from_bounds(self.lower[idx], self.upper[idx], radius)


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(_Rows))


# ----------------------------------------------------------------------------- one pass, per row
def _start_rows(problems: _Problems, jobs: list[tuple[int, int]], clean: torch.Tensor, params: PerturbParams,
                seed: int) -> _Rows:
    """Fresh rows for ``jobs`` = (problem, restart): a uniform start in the first phase's ball
    (each row from its own seeded generator, on the device where host reads are not free: a
    row's start is then drawn there, not on the host), projected onto ball ∩ box."""
    dev = clean.device
    pi = torch.tensor([j[0] for j in jobs], device=dev)
    ri = torch.tensor([j[1] for j in jobs], device=dev)
    b = len(jobs)
    e = problems.eps[pi]
    phase = torch.full((b,), 1 if params.first_phase_passes > 0 else 2, device=dev)
    radius = torch.where(phase == 1, e * params.first_phase_radius_factor, e)
    gen_dev = torch.device("cpu") if host_syncs_are_free(clean) else dev
    gens = [torch.Generator(device=gen_dev).manual_seed(_row_seed(seed, *problems.keys[p], r)) for p, r in jobs]
    x0 = clean[problems.image[pi]]
    box = L2BoxSet(x0, radius)
    delta = box.random_perturb(gens)
    z = torch.zeros(b, device=dev)
    return _Rows(problem=pi, restart=ri, site=problems.site[pi], sign=problems.sign[pi].float(), eps=e,
                 phase=phase, it=torch.zeros(b, dtype=torch.long, device=dev),
                 stall=torch.zeros(b, dtype=torch.long, device=dev), step=e.clone(),
                 anchor_val=z - math.inf, rank_val=z - math.inf, delta=delta, anchor=delta.clone(),
                 anchor_grad=torch.zeros_like(delta), x0=x0, lower=box.lower, upper=box.upper,
                 frozen=torch.zeros(b, dtype=torch.bool, device=dev))


def _keep_progress(rows: _Rows, progress: torch.Tensor, grad: torch.Tensor) -> None:
    """Rows that made progress take the iterate just evaluated (``rows.delta``, ``grad``) as
    their anchor. On CPU copies only the smaller side: when most rows progressed, the few that
    did not write their old anchor into the fresh tensors, which then become the anchors. On an
    accelerator one select (no host synchronisation to count the rows; the same values)."""
    if not host_syncs_are_free(progress):
        keep = progress.reshape((-1,) + (1,) * (rows.delta.dim() - 1))
        rows.anchor = torch.where(keep, rows.delta, rows.anchor)
        rows.anchor_grad = torch.where(keep, grad, rows.anchor_grad)
        return
    n_prog = int(progress.sum())
    if n_prog == 0:
        return
    if 2 * n_prog >= len(rows):
        back = (~progress).nonzero().squeeze(1)
        if len(back):
            rows.delta.index_copy_(0, back, rows.anchor.index_select(0, back))
            grad.index_copy_(0, back, rows.anchor_grad.index_select(0, back))
        rows.anchor, rows.anchor_grad = rows.delta, grad   # rows.delta is replaced before its next use
    else:
        fwd = progress.nonzero().squeeze(1)
        rows.anchor.index_copy_(0, fwd, rows.delta.index_select(0, fwd))
        rows.anchor_grad.index_copy_(0, fwd, grad.index_select(0, fwd))


def _keep_best(rows: _Rows, val: torch.Tensor, grad: torch.Tensor, params: PerturbParams,
               active: torch.Tensor | None = None) -> None:
    """After a pass with values ``val`` at ``rows.delta``: keep the phase's best iterate, adapt
    the step (decay without progress, optional growth with it) and count stalled passes.
    ``active``: rows whose state may change (None: all; frozen rows keep theirs)."""
    progress = val > rows.anchor_val
    if active is not None:
        progress = progress & active
    gain = torch.where(progress & torch.isfinite(rows.anchor_val), val - rows.anchor_val,
                       torch.where(progress, torch.full_like(val, math.inf), torch.zeros_like(val)))
    _keep_progress(rows, progress, grad)
    rows.anchor_val = torch.where(progress, val, rows.anchor_val)
    grown = torch.minimum(rows.step * params.step_growth, 2 * rows.eps * params.first_phase_radius_factor)
    step = torch.where(progress, grown if params.step_growth != 1 else rows.step, rows.step * params.step_decay)
    small = gain <= params.early_stop_tolerance * rows.anchor_val.abs().clamp_min(1e-12)
    stall = torch.where(small, rows.stall + 1, torch.zeros_like(rows.stall))
    if active is None:
        rows.step, rows.stall = step, stall
    else:
        rows.step, rows.stall = torch.where(active, step, rows.step), torch.where(active, stall, rows.stall)
    rows.rank_val = rows.anchor_val.clone()


def _next_iterates(rows: _Rows, switch: torch.Tensor, params: PerturbParams) -> torch.Tensor:
    """The next iterate of every row: an L2 step from its anchor, projected onto its phase's
    ball ∩ box. Rows in ``switch`` enter the final phase instead: they restart from the
    projection of their anchor onto the final ball, with step size ``e`` and no best yet."""
    radius = torch.where(rows.phase == 1, rows.eps * params.first_phase_radius_factor, rows.eps)
    box = rows.feasible(radius)
    nxt = box.project(box.step(rows.anchor, rows.anchor_grad, rows.step))
    if bool(switch.any()):
        sw = switch.nonzero().squeeze(1)
        nxt[sw] = rows.feasible(rows.eps[sw], sw).project(rows.anchor[sw])
        rows.phase[sw] = 2
        rows.step[sw] = rows.eps[sw]
        rows.anchor_val[sw] = -math.inf
        rows.stall[sw] = 0
    return nxt


# ----------------------------------------------------------------------------- the search
# On an accelerator the batch's done and parked rows are read by the host every READ_EVERY
# passes, not after every pass; in between they are frozen (evaluated, but their state and pass
# counts stay), so every row's trajectory, and so the answer, is the same as reading every pass.
READ_EVERY = 4


def _read_every(clean: torch.Tensor) -> int:
    """Passes between host reads of the batch's bookkeeping: 1 on CPU (reads are free there)."""
    return 1 if host_syncs_are_free(clean) else READ_EVERY


class _Search:
    """All problems of one :func:`iter_solutions` call: the batch loop and its bookkeeping.

    Per problem: its best final-phase iterate so far (``best_*``, the answer), the passes
    spent, and its ``outstanding`` restarts (not yet finished or pruned). Rows waiting for
    the rest of their problem at a pruning checkpoint sit in ``parked``; the survivors of a
    checkpoint queue in ``resumed``, restarts not yet started in ``fresh``.
    """

    def __init__(self, objective: SiteObjective, clean: torch.Tensor, problems: _Problems, params: PerturbParams,
                 seed: int) -> None:
        self.objective, self.clean, self.problems, self.params, self.seed = objective, clean, problems, params, seed
        n_prob, T = len(problems), params.steps
        self.at_checkpoint = torch.zeros(T + 1, dtype=torch.bool, device=clean.device)
        self.at_checkpoint[list(params.prune_checkpoints)] = True
        self.best_val = torch.full((n_prob,), -math.inf)
        self.best_restart = torch.full((n_prob,), params.restarts, dtype=torch.long)
        self.best_delta: dict[int, torch.Tensor] = {}
        self.passes = torch.zeros(n_prob, dtype=torch.long, device=clean.device)   # read when a problem ends
        self.outstanding = torch.full((n_prob,), params.restarts, dtype=torch.long)
        self.read_every = _read_every(clean)
        self.parked: dict[int, list[_Rows]] = {}
        self.resumed: deque[_Rows] = deque()
        self.fresh: deque[tuple[int, int]] = deque()
        self.bar = bar(total=n_prob, unit="problem", desc="perturbations", dynamic_ncols=True)
        self.t_start, self.row_passes = time.perf_counter(), 0

    def run(self) -> Iterator[Solution]:
        """Solve every problem; yield each :class:`Solution` as soon as its problem is done."""
        yield from self._queue_restarts()
        batch: _Rows | None = None
        n_pass = 0
        while True:
            batch = self._fill(batch)
            if batch is None or len(batch) == 0:
                break
            active = None if self.read_every == 1 else ~batch.frozen
            val, grad = self._evaluate(batch, active)
            _keep_best(batch, val, grad, self.params, active)
            switch, done, park = self._transitions(batch)
            if active is None:
                batch.delta = _next_iterates(batch, switch, self.params)
            else:
                nxt = _next_iterates(batch, switch & active, self.params)
                batch.delta = torch.where(active.reshape((-1,) + (1,) * (nxt.dim() - 1)), nxt, batch.delta)
                batch.frozen = batch.frozen | done | park
                n_pass += 1
                if n_pass % self.read_every:
                    continue
            if bool(done.any()):
                yield from self._retire(batch.where(done))
            if bool(park.any()):
                self._park(batch.where(park))
            self._prune()
            stay = ~(done | park)
            batch = batch.where(stay) if not bool(stay.all()) else batch
        self.bar.close()

    # ---- the steps of one loop
    def _queue_restarts(self) -> Iterator[Solution]:
        """Queue every restart of every problem; a problem with e = 0 is answered at once
        (the clean image, no passes)."""
        shape = self.clean.shape[1:]
        for p in range(len(self.problems)):
            if np.float32(self.problems.keys[p][2]) == 0:   # the float32 radius, read on the host
                self.best_val[p], self.best_delta[p], self.outstanding[p] = 0.0, torch.zeros(shape), 0
                yield self._finish(p)
            else:
                self.fresh.extend((p, r) for r in range(self.params.restarts))

    def _fill(self, batch: _Rows | None) -> _Rows | None:
        """Fill the batch's free slots: checkpoint survivors first, then fresh restarts."""
        free = self.params.max_batch_rows - (len(batch) if batch is not None else 0)
        add: list[_Rows] = []
        while free > 0 and self.resumed:
            r = self.resumed.popleft()
            if len(r) > free:
                self.resumed.appendleft(r.take(torch.arange(free, len(r), device=r.problem.device)))
                r = r.take(torch.arange(free, device=r.problem.device))
            add.append(r)
            free -= len(r)
        if free > 0 and self.fresh:
            jobs = [self.fresh.popleft() for _ in range(min(free, len(self.fresh)))]
            add.append(_start_rows(self.problems, jobs, self.clean, self.params, self.seed))
        return _Rows.cat([batch, *add]) if add else batch

    def _evaluate(self, rows: _Rows, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward+backward pass for every row: ``s * (f(x + delta) - f(x))`` and its gradient
        (the one place where a transform of the input gradient would go, before the step)."""
        val, grad = self.objective.value_and_grad(rows.x0 + rows.delta, rows.site, rows.sign)
        val = val - self.problems.f0[rows.problem]
        self.row_passes += len(rows)
        counted = torch.ones_like(rows.it) if active is None else active.long()   # frozen rows: not counted
        self.passes.index_add_(0, rows.problem, counted)
        rows.it += counted
        return val, grad

    def _transitions(self, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks after a pass: rows entering the final phase, rows done (final phase out of
        steps or stalled), rows parking at a checkpoint (unless their problem's last live restart)."""
        p = self.params
        switch = (rows.phase == 1) & (rows.it == p.first_phase_passes)
        stalled = (rows.stall >= p.early_stop_patience) if p.early_stop else torch.zeros_like(switch)
        done = (rows.phase == 2) & ((rows.it >= p.steps) | stalled)
        park = (~done & self.at_checkpoint[rows.it.clamp_max(p.steps)]
                & (self.outstanding.to(rows.problem.device)[rows.problem] > 1))
        return switch, done, park

    def _offer(self, rows: _Rows) -> None:
        """Final-phase bests of these rows become candidates for their problems' answers
        (ties go to the lower restart index)."""
        phases, probs = rows.phase.tolist(), rows.problem.tolist()
        vals, restarts = rows.anchor_val.tolist(), rows.restart.tolist()
        for k, (ph, p, v, r) in enumerate(zip(phases, probs, vals, restarts)):
            if ph != 2:
                continue
            if v > self.best_val[p] or (v == self.best_val[p] and r < self.best_restart[p]):
                self.best_val[p], self.best_restart[p] = v, r
                self.best_delta[p] = rows.anchor[k].detach().cpu().clone()

    def _retire(self, rows: _Rows) -> Iterator[Solution]:
        """Rows that are done: offer their bests; answer problems with no restart left."""
        self._offer(rows)
        for p in rows.problem.tolist():
            self.outstanding[p] -= 1
        for p in sorted(set(rows.problem.tolist())):
            if self.outstanding[p] == 0 and p not in self.parked:
                yield self._finish(p)

    def _park(self, rows: _Rows) -> None:
        """Rows at a checkpoint wait, per problem, for the problem's other live restarts."""
        for p in sorted(set(rows.problem.tolist())):
            self.parked.setdefault(p, []).append(rows.where(rows.problem == p))

    def _prune(self) -> None:
        """Successive halving: a problem whose every live restart has parked keeps its best
        ``kept_of`` restarts (by their phase's best value; ties to the lower restart), which
        queue to resume; the others are done, their final-phase bests offered."""
        for p in [p for p, lst in self.parked.items() if sum(len(x) for x in lst) == self.outstanding[p]]:
            grp = _Rows.cat(self.parked.pop(p))
            order = sorted(range(len(grp)), key=lambda k: (-float(grp.rank_val[k]), int(grp.restart[k])))
            keep = self.params.kept_of(len(grp))
            dev = grp.problem.device
            kept = torch.tensor(sorted(order[:keep]), device=dev, dtype=torch.long)
            gone = torch.tensor(sorted(order[keep:]), device=dev, dtype=torch.long)
            if len(gone):
                self._offer(grp.take(gone))
                self.outstanding[p] -= len(gone)
            survivors = grp.take(kept)
            survivors.frozen = torch.zeros_like(survivors.frozen)
            self.resumed.append(survivors)   # keep >= 1: the problem goes on

    def _finish(self, p: int) -> Solution:
        if not self.bar.disable:
            self.bar.update(1)
            el = time.perf_counter() - self.t_start
            self.bar.set_postfix(rows_per_s=f"{self.row_passes / el:.1f}" if el > 0 else "-", refresh=False)
        return Solution(p, self.best_delta.pop(p), float(self.best_val[p]), int(self.passes[p]))


def iter_solutions(objective: SiteObjective, clean: torch.Tensor, image: Sequence[int] | np.ndarray,
                   site: Sequence[int] | np.ndarray, epsilon: Sequence[float] | np.ndarray,
                   sign: Sequence[int] | np.ndarray, params: PerturbParams, seed: int = 0,
                   clean_values: torch.Tensor | None = None) -> Iterator[Solution]:
    """Solve problems ``k`` = (``image[k]``, ``site[k]``, ``epsilon[k]``, ``sign[k]``); yield each
    :class:`Solution` as soon as its problem is done (order not guaranteed).

    ``clean``: (N, 3, H, W) float pixels in [0,1] on the objective's device.
    ``clean_values``: optional (N, S) model predictions on the clean images.
    """
    params.validated()
    if params.max_batch_rows < 1:
        raise ValueError("max_batch_rows = 0 must be resolved to a batch first (stimuli.perturb.prepare_engine)")
    clean = clean.contiguous(memory_format=objective.mode.torch_format)   # the step's one layout
    dev = clean.device
    image_t = torch.as_tensor(np.asarray(image, dtype=np.int64), device=dev)
    site_t = torch.as_tensor(np.asarray(site, dtype=np.int64), device=dev)
    eps = torch.as_tensor(np.asarray(epsilon, dtype=np.float64), device=dev).float()
    sgn = torch.as_tensor(np.asarray(sign, dtype=np.int64), device=dev)
    if clean_values is None:
        clean_values = _clean_values(objective, clean, image_t, params.max_batch_rows)
    f0 = sgn.float() * clean_values[image_t, site_t].to(dev)   # s * f_site(x), per problem
    problems = _Problems(image=image_t, site=site_t, eps=eps, sign=sgn, f0=f0, epsilon=epsilon)
    # issue 19: transfer-oriented directions (stimuli.transfer); all options off -> the objective itself
    objective = wrap_objective(objective, params, seed)
    yield from _Search(objective, clean, problems, params, seed).run()


def _clean_values(objective: SiteObjective, clean: torch.Tensor, image: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, S) predictions on the clean images that ``image`` uses (others stay 0; not counted as passes)."""
    dev = clean.device
    n_prob = len(image)
    used = torch.unique(image) if n_prob else image
    values = torch.zeros(len(clean), objective.n_sites(clean[:1]) if n_prob else 0, device=dev)
    for i in range(0, len(used), batch):
        u = used[i:i + batch]
        values[u] = objective.predict_all(clean[u]).to(dev)
    return values


def solve(objective: SiteObjective, clean: torch.Tensor, image, site, epsilon, sign, params: PerturbParams,
          seed: int = 0) -> list[Solution]:
    """All :class:`Solution` s of :func:`iter_solutions`, in problem order."""
    out = sorted(iter_solutions(objective, clean, image, site, epsilon, sign, params, seed),
                 key=lambda s: s.problem)
    return out


# ----------------------------------------------------------------------------- validation
def validate_images(clean) -> np.ndarray:
    """``clean`` must be uint8 (N, H, W, 3), exactly as displayed."""
    if not isinstance(clean, np.ndarray):
        raise TypeError(f"clean images must be a numpy uint8 array (N, H, W, 3); got {type(clean).__name__}")
    if clean.dtype != np.uint8:
        hint = (" (values in [0,1]: convert with np.round(x * 255).astype(np.uint8))"
                if np.issubdtype(clean.dtype, np.floating) else "")
        lo, hi = (float(clean.min()), float(clean.max())) if clean.size else (0, 0)
        rng = f", values in [{lo:g}, {hi:g}]" + ("; images must lie in [0,1] (as floats) / 0..255 (as uint8)" if (lo < 0 or hi > 255) else "")
        raise TypeError(f"clean images must be uint8 0..255 as displayed; got dtype {clean.dtype}{rng}{hint}")
    if clean.ndim != 4 or clean.shape[-1] != 3 or len(clean) == 0:
        raise ValueError(f"clean images must have shape (N, H, W, 3) with N >= 1; got {clean.shape}")
    return clean


def validate_epsilons(epsilons) -> list[float]:
    eps = [float(e) for e in np.atleast_1d(np.asarray(epsilons, dtype=np.float64))]
    if not eps:
        raise ValueError("epsilons is empty; give at least one L2 norm >= 0 (pixels in [0,1])")
    for e in eps:
        if not (math.isfinite(e) and e >= 0):
            raise ValueError(f"epsilon {e!r} is impossible; every epsilon must be a finite L2 norm >= 0 (pixels in [0,1])")
    return eps


def validate_problems(problems, n_images: int, n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(problems, dtype=np.int64).reshape(-1, 2) if len(problems) else np.zeros((0, 2), np.int64)
    if arr.shape[0] != len(problems):
        raise ValueError("problems must be a list of (clean image index, site index) pairs")
    for k, (i, s) in enumerate(arr):
        if not 0 <= i < n_images:
            raise ValueError(f"problem {k}: clean image index {i} is out of range; there are {n_images} clean images (0..{n_images - 1})")
        if not 0 <= s < n_sites:
            raise ValueError(f"problem {k}: site index {s} is out of range; the model predicts {n_sites} sites (0..{n_sites - 1})")
    return arr[:, 0], arr[:, 1]


def _to_float(clean: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on ``device`` (modelfit's one converter)."""
    return images_to_tensor(clean).to(device).contiguous()


@dataclass
class Expanded:
    """Problems expanded to every epsilon in both directions: one entry per output row,
    problem-major, then epsilon, then direction (+1, -1)."""

    pair: np.ndarray       # index into the (image, site) pairs
    image: np.ndarray      # clean image index
    site: np.ndarray
    epsilon: np.ndarray    # L2 radius (pixels in [0,1]), float64
    epsilon_index: np.ndarray
    sign: np.ndarray       # +1 or -1

    def __len__(self) -> int:
        return len(self.pair)


def expand_problems(images: Sequence[int] | np.ndarray, sites: Sequence[int] | np.ndarray,
                    epsilons: Sequence[float] | np.ndarray) -> Expanded:
    """Every (image, site) pair at every epsilon, direction +1 then -1 (the engine's output order)."""
    img, site = np.asarray(images, dtype=np.int64), np.asarray(sites, dtype=np.int64)
    pi = np.repeat(np.arange(len(img)), len(epsilons) * 2)
    ei = np.tile(np.repeat(np.arange(len(epsilons)), 2), len(img))
    sg = np.tile([1, -1], len(img) * len(epsilons))
    return Expanded(pi, img[pi], site[pi], np.asarray(epsilons, dtype=np.float64)[ei], ei, sg)


# ----------------------------------------------------------------------------- one block of problems
def prepare_engine(model, x: torch.Tensor, params: PerturbParams, device: str = "cpu",
                   uncompiled_seconds: float | None = None) -> tuple[SiteObjective, PerturbParams]:
    """The objective to solve with and ``params`` resolved for ``device``: ``auto`` modes chosen
    (:func:`stimuli.modes.resolve_mode`) and ``max_batch_rows = 0`` measured
    (:func:`stimuli.modes.fitting_batch_rows`, once per process). ``x``: (N, 3, H, W) clean
    images in [0,1]."""
    params = resolve_mode(params.validated(), device, uncompiled_seconds)
    mode = EngineMode.of(params)
    if params.max_batch_rows == 0:
        probe = SiteObjective(model, device, dataclasses.replace(mode, compile=False))
        with probe.session():
            rows = fitting_batch_rows(probe, x.contiguous(memory_format=mode.torch_format))
        params = dataclasses.replace(params, max_batch_rows=rows)
    return SiteObjective(model, device, mode, batch_rows=params.max_batch_rows), params


@dataclass
class Block:
    """What :func:`solve_block` made: the targeted stimuli and the random controls (None when
    there are none; parents index the full clean set) and the passes spent."""

    targeted: StimulusSet | None
    controls: StimulusSet | None
    passes: int


def solve_block(objective: SiteObjective, clean: np.ndarray, clean_values: torch.Tensor,
                problems: Sequence[tuple[int, int]], epsilons: list[float], params: PerturbParams, seed: int) -> Block:
    """The stimuli of ``problems`` (any block of a day's (image, site) pairs: all of them in a
    single run, one shard on Dask): every pair at every epsilon in both directions, solved,
    quantised to uint8 and re-predicted, then its random controls.

    ``clean``: the day's full uint8 clean set (image indices are part of every seed);
    ``clean_values``: the (N, S) float32 predictions on it (:meth:`SiteObjective.predict_all_batched`
    in batches of ``max_batch_rows``); ``params`` resolved (:func:`prepare_engine`). Call inside
    ``objective.session()``. A pure function of its arguments: a block's stimuli are exactly
    those of the same problems in a larger block (row-separable models, bit for bit).
    """
    img, sites = validate_problems(list(problems), len(clean), clean_values.shape[1])
    ex = expand_problems(img, sites, epsilons)
    n_u, dev, b = len(ex), objective.device, params.max_batch_rows
    if n_u:  # one probe pass: a model with no gradient fails here, with its message
        objective.plain().value_and_grad(_to_float(clean[:1], dev), torch.tensor([int(ex.site[0])]), torch.ones(1))
    x = _to_float(clean, dev).contiguous(memory_format=objective.mode.torch_format)
    shown = np.empty((n_u,) + clean.shape[1:], dtype=np.uint8)
    eps_shown = np.zeros(n_u)
    budget = np.zeros(n_u, dtype=np.int64)
    with _HostWork(not host_syncs_are_free(x)) as host:
        n_ctrl = params.random_controls_per_image if len(img) else 0
        ctrl = host.submit(random_stimuli, clean, img, sites, epsilons, n_ctrl, seed) if n_ctrl else None
        quantised = {}
        for sol in iter_solutions(objective, x, ex.image, ex.site, ex.epsilon, ex.sign, params, seed, clean_values):
            k = sol.problem
            quantised[k] = host.submit(quantize_perturbation, clean[ex.image[k]], sol.delta.permute(1, 2, 0).numpy(),
                                       ex.epsilon[k])
            budget[k] = sol.passes
        for k, done in quantised.items():
            shown[k], eps_shown[k] = done.result()
        ctrl = ctrl.result() if ctrl is not None else None
    targeted = None
    if n_u:
        targeted = StimulusSet(shown, kind=np.array(["targeted"] * n_u, dtype=object), parent=np.full(n_u, -1),
                               site=ex.site, epsilon_requested=ex.epsilon, epsilon_shown=eps_shown,
                               direction=ex.sign, budget_passes=budget, epsilon_index=ex.epsilon_index,
                               predicted_change=_predicted_change(objective, clean, shown, ex.image, ex.site,
                                                                  clean_values, b),
                               epsilons=epsilons)
        targeted.parent = ex.image.copy()   # parents index the full clean set, which may be longer than this set
    controls = None
    if ctrl is not None:
        controls = _controls(objective, clean, img, sites, epsilons, params.random_controls_per_image, seed,
                             clean_values, b, ctrl)
    return Block(targeted, controls, int(budget.sum()))


class _HostWork:
    """Host-side work of a block (uint8 quantisation, the random controls: ~50-110 ms per 224 px
    stimulus): done at once on CPU, in a few threads beside the search on an accelerator, so the
    device does not wait for it. Pure functions: the results do not depend on which."""

    def __init__(self, threaded: bool) -> None:
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) if threaded else None

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def _controls(objective: SiteObjective | None, clean: np.ndarray, parents: np.ndarray, sites: np.ndarray | None,
              epsilons: list[float], n_per_image: int, seed: int, clean_values: torch.Tensor | None,
              batch: int, ctrl: StimulusSet | None = None) -> StimulusSet:
    """The model-free controls (:func:`stimuli.controls.random_stimuli`, or ``ctrl`` when already
    drawn), with their predicted change where there is a model and sites; parents index ``clean``."""
    ctrl = ctrl if ctrl is not None else random_stimuli(clean, parents, sites, epsilons, n_per_image, seed)
    if objective is not None and sites is not None and clean_values is not None and len(ctrl):
        ctrl.predicted_change = _predicted_change(objective, clean, ctrl.pixels, ctrl.parent, ctrl.site,
                                                  clean_values, batch)
    return ctrl


def _predicted_change(objective: SiteObjective, clean: np.ndarray, shown: np.ndarray, parents: np.ndarray,
                      sites: np.ndarray, clean_values: torch.Tensor, batch: int) -> np.ndarray:
    """``f_site(shown) - f_site(parent)`` (spikes, float32 model) in batches of ``batch``;
    exactly 0 where the shown image is its parent (not float noise)."""
    out = np.zeros(len(shown))
    base = clean_values[parents, sites]
    for i in range(0, len(shown), batch):
        xb = _to_float(shown[i:i + batch], objective.device)
        f = objective.predict(xb, torch.as_tensor(np.asarray(sites[i:i + batch]), device=xb.device))
        out[i:i + batch] = (f - base[i:i + batch].to(f.device)).double().cpu().numpy()
    same = np.array([np.array_equal(shown[k], clean[parents[k]]) for k in range(len(shown))], dtype=bool)
    return np.where(same, 0.0, out)


# ----------------------------------------------------------------------------- entry points
def generate_perturbations(model, clean: np.ndarray, problems: list[tuple[int, int]], epsilons: list[float],
                           params: PerturbParams | None = None, seed: int = 0, device: str = "cpu") -> StimulusSet:
    """Targeted perturbations of every problem at every epsilon in both directions: one block
    (:func:`solve_block`) holding every problem.

    ``model``: images (B,3,H,W) in [0,1] -> (B, S) predictions (spikes); a module exposing
    ``backbone``/``readout_weight``/``readout_bias`` takes the fast path
    (:mod:`stimuli.objective`). ``clean``: uint8 (N, H, W, 3). ``problems``: (clean image
    index, site index) pairs. ``epsilons``: L2 norms (pixels in [0,1]). ``params``' ``auto``
    settings and ``max_batch_rows = 0`` are resolved for ``device`` (:func:`prepare_engine`).

    Returns a :class:`StimulusSet`: the N clean images (kind "clean"), then per problem,
    per epsilon, direction +1 then -1, one "targeted" stimulus, then (if
    ``params.random_controls_per_image``) the model-free "random" controls per problem
    and epsilon. ``epsilon_shown <= epsilon_requested`` always; ``predicted_change`` is
    ``f_site(shown) - f_site(clean)`` recomputed on the shown uint8 image.
    """
    clean = validate_images(clean)
    eps_list = validate_epsilons(epsilons)
    x = _to_float(clean, device)
    objective, params = prepare_engine(model, x, params or PerturbParams(), device)
    with objective.session():
        clean_values = objective.predict_all_batched(x, params.max_batch_rows)
        block = solve_block(objective, clean, clean_values, problems, eps_list, params, seed)
    return join_with_clean(clean, [block.targeted, block.controls], eps_list)


def join_with_clean(clean: np.ndarray, parts: Sequence[StimulusSet | dict | None], epsilons: list[float]) -> StimulusSet:
    """The clean images (kind "clean") followed by ``parts`` (StimulusSets, or dicts of their
    ``pixels`` and columns; None skipped), whose parents index the clean prefix, on the
    epsilon grid ``epsilons``."""
    def col(p, c):
        return p[c] if isinstance(p, dict) else getattr(p, c)

    parts = [StimulusSet(clean)] + [p for p in parts if p is not None]
    cols = {c: np.concatenate([col(p, c) for p in parts]) for c in ("pixels",) + StimulusSet.COLUMNS}
    return StimulusSet(cols.pop("pixels"), **cols, epsilons=epsilons)


def random_controls(clean: np.ndarray, parents: Sequence[int], epsilons: list[float], n_per_image: int,
                    seed: int = 0, model=None, sites: Sequence[int] | None = None, device: str = "cpu") -> StimulusSet:
    """Model-free controls: ``n_per_image`` random directions on the e-sphere per parent and epsilon.

    Returns the N clean images (kind "clean") followed by the controls (kind "random",
    direction 0, budget 0), parents indexing the clean prefix. ``sites`` (one per parent)
    names the site each control is measured against; with a ``model`` and ``sites``,
    ``predicted_change = f_site(shown) - f_site(clean)`` (spikes), otherwise NaN.
    """
    clean = validate_images(clean)
    eps_list = validate_epsilons(epsilons)
    if int(n_per_image) != n_per_image or n_per_image < 0:
        raise ValueError(f"n_per_image = {n_per_image!r} is impossible; expected an integer >= 0")
    parent_idx = np.asarray(parents, dtype=np.int64).reshape(-1)
    if np.any((parent_idx < 0) | (parent_idx >= len(clean))):
        raise ValueError(f"parents must index the {len(clean)} clean images (0..{len(clean) - 1}); got {parent_idx.tolist()}")
    site_idx = None
    if sites is not None:
        site_idx = np.asarray(sites, dtype=np.int64).reshape(-1)
        if len(site_idx) != len(parent_idx):
            raise ValueError(f"sites must give one site per parent; got {len(site_idx)} sites for {len(parent_idx)} parents")
    if model is None or site_idx is None or not len(parent_idx) * len(eps_list) * n_per_image:
        return join_with_clean(clean, [_controls(None, clean, parent_idx, site_idx, eps_list, int(n_per_image), seed,
                                                 None, 64)], eps_list)
    objective = SiteObjective(model, device)
    with objective.session():
        cv = objective.predict_all_batched(_to_float(clean, device), 64)
        validate_problems(list(zip(parent_idx.tolist(), site_idx.tolist())), len(clean), cv.shape[1])
        ctrl = _controls(objective, clean, parent_idx, site_idx, eps_list, int(n_per_image), seed, cv, 64)
    return join_with_clean(clean, [ctrl], eps_list)
