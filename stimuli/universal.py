"""Site-universal perturbations: one ``delta`` per (site, epsilon, direction) for many images.

For a site ``i``, a design set of clean images ``x_1..x_N`` (pixels in [0,1]), a radius
``e`` (L2 norm, same space) and a direction ``s``::

    delta* = argmax_delta  (1/N) sum_j s * (f_i(clip(x_j + delta)) - f_i(x_j))
             subject to ||delta||_2 <= e  (and -1 <= delta <= 1, which changes nothing)

``clip`` is the pixel box [0,1], applied per image, so the image each stimulus shows is
``clip(x_j + delta)``, whose own perturbation ``clip(x_j + delta) - x_j`` has norm <= e.
The optimiser has the per-image engine's refinements (:mod:`stimuli.perturb`): restarts
from uniform starts in the ball, a first phase in the ball of radius
``first_phase_radius_factor * e``, normalised-gradient steps with the exact projection
(:func:`stimuli.projection.project_ball_box`), step ``e`` decayed by ``step_decay`` after a
pass without progress, the best final-phase iterate kept, and restart pruning (one
checkpoint: the best ``prune_keep_fraction`` of the restarts go on). One *row* of a pass is
one (restart, design image); the rows of a restart share its ``delta``, and its gradient is
the mean over its rows of ``s * grad f_i`` masked where the box clips (the derivative of
``clip``). A pass over one row costs one forward+backward pass, as in the engine.

The shown stimuli are quantised to uint8 exactly like per-image stimuli
(:func:`stimuli.quantize.quantize_perturbation`), so ``epsilon_shown <= e`` always.
:func:`shared_delta_stimuli` shows any shared direction (a universal ``delta``, a random one
of the same norm, a subspace direction) on a list of images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stimuli.objective import SiteObjective
from stimuli.params import PerturbParams
from stimuli.projection import project_ball_box
from stimuli.quantize import quantize_perturbation


@dataclass
class UniversalSolution:
    """The best shared perturbation found for one (site, epsilon, direction)."""

    delta: torch.Tensor   # (3, H, W) float, pixels in [0,1] space, ||delta|| <= epsilon
    objective: float      # mean over design images of s * (f(clip(x + delta)) - f(x)), spikes
    passes: int           # forward+backward passes of one row (restart x design image)
    per_restart: np.ndarray  # (restarts,) final value of each restart that was not pruned (NaN if pruned), spikes


def universal_passes(n_design: int, params: PerturbParams) -> int:
    """Passes of one (site, epsilon > 0, direction) universal problem: restarts x steps x
    design images, minus what the single pruning checkpoint removes (an exact count)."""
    params.validated()
    cut = _prune_pass(params)
    if cut is None:
        return params.restarts * params.steps * n_design
    return n_design * (params.restarts * cut + params.kept_of(params.restarts) * (params.steps - cut))


def _prune_pass(params: PerturbParams) -> int | None:
    checkpoints = params.prune_checkpoints
    return checkpoints[0] if checkpoints else None


def _seeded_starts(shape: tuple[int, ...], radius: float, n: int, seed: int) -> torch.Tensor:
    """``n`` points uniform in the L2 ball of ``radius`` (Gaussian direction, radius r U^(1/d))."""
    gen = torch.Generator().manual_seed(int(seed))
    d = torch.randn((n,) + tuple(shape), generator=gen, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    dim = int(np.prod(shape))
    r = radius * u.pow(1.0 / dim)
    d = d * (r / d.reshape(n, -1).norm(dim=1).clamp_min(1e-30)).reshape((n,) + (1,) * len(shape))
    return d.float()


def _mean_value_and_grad(objective: SiteObjective, clean: torch.Tensor, deltas: torch.Tensor, site: int, sign: int,
                         batch_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per restart: mean over images of ``s * f_site(clip(x_j + delta_r))`` (R,) and its gradient
    with respect to ``delta_r`` (R, 3, H, W) (zero where the box clips)."""
    n_img, n_r = clean.shape[0], deltas.shape[0]
    vals = torch.zeros(n_r, dtype=torch.float64)
    grads = torch.zeros_like(deltas)
    rows = [(r, j) for r in range(n_r) for j in range(n_img)]
    for k in range(0, len(rows), batch_rows):
        chunk = rows[k:k + batch_rows]
        ri = torch.tensor([c[0] for c in chunk])
        ji = torch.tensor([c[1] for c in chunk])
        v = clean[ji] + deltas[ri]
        n = len(chunk)
        val, g = objective.value_and_grad(v.clamp(0.0, 1.0), torch.full((n,), site, dtype=torch.long),
                                          torch.full((n,), float(sign)))
        g = g.to(deltas.device)
        # the clip's one-sided derivative in the ascent direction: a pixel on the box edge
        # counts only when the gradient points back inside
        moves = ((v > 0) | (g > 0)) & ((v < 1) | (g < 0))
        vals.index_add_(0, ri, val.double().cpu())
        grads.index_add_(0, ri, g * moves.to(g.dtype))
    return (vals / n_img).float(), grads / n_img


def useful_box(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` (3, H, W): ``-max_j x_j`` and ``1 - min_j x_j`` per pixel. A shared
    ``delta`` beyond them moves no design image further (every image clips there), so the
    optimum lies inside, and projecting onto it never loses objective while it stops norm
    being spent where no image can use it."""
    return -clean.amax(0), 1.0 - clean.amin(0)


def _project(v: torch.Tensor, radius: float, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Exact projection of each row onto ``{||d|| <= radius} ∩ [lower, upper]``."""
    lo, hi = (b.expand_as(v) for b in box)
    return project_ball_box(v, lo, hi, torch.full((v.shape[0],), float(radius)))


@dataclass
class _State:
    """Per-restart optimiser state of one phase: the best iterate (anchor), its value and
    gradient, the step size and the iterate the next pass evaluates."""

    anchor: torch.Tensor
    value: torch.Tensor
    grad: torch.Tensor
    step: torch.Tensor
    delta: torch.Tensor

    @classmethod
    def start(cls, start: torch.Tensor, radius: float, step: float, box) -> _State:
        d = _project(start, radius, box)
        n = d.shape[0]
        return cls(d.clone(), torch.full((n,), -math.inf), torch.zeros_like(d), torch.full((n,), float(step)), d)

    def take(self, idx: torch.Tensor) -> _State:
        return _State(self.anchor[idx], self.value[idx], self.grad[idx], self.step[idx], self.delta[idx])


def _run(objective, clean, state: _State, radius: float, passes: int, site: int, sign: int,
         params: PerturbParams) -> _State:
    """``passes`` normalised-gradient passes of every restart in ``state`` (ball of ``radius``)."""
    for _ in range(passes):
        val, grad = _mean_value_and_grad(objective, clean, state.delta, site, sign, params.max_batch_rows)
        progress = val > state.value
        m = progress[:, None, None, None]
        state.anchor = torch.where(m, state.delta, state.anchor)
        state.grad = torch.where(m, grad, state.grad)
        state.value = torch.where(progress, val, state.value)
        state.step = torch.where(progress, state.step, state.step * params.step_decay)
        gn = state.grad.reshape(len(state.step), -1).norm(dim=1).clamp_min(1e-30)
        state.delta = _project(state.anchor + state.grad * (state.step / gn)[:, None, None, None], radius,
                               useful_box(clean))
    return state


def solve_universal(objective: SiteObjective, clean: torch.Tensor, site: int, epsilon: float, sign: int,
                    params: PerturbParams, seed: int = 0) -> UniversalSolution:
    """The shared ``delta`` of one (site, epsilon, direction) over the design images ``clean``
    ((N, 3, H, W) float pixels in [0,1]); ``objective`` must be inside its ``session()``.

    Restarts run side by side; at the pruning checkpoint (``params.prune_checkpoints[0]``) only
    the best ``params.kept_of(restarts)`` go on, ranked by their current phase's best. Every
    phase's step starts at ``epsilon``. Values are the float32 model's, spikes.
    """
    params.validated()
    shape = tuple(clean.shape[1:])
    n_img, n_r = clean.shape[0], params.restarts
    if epsilon == 0:
        return UniversalSolution(torch.zeros(shape), 0.0, 0, np.zeros(n_r))
    f0 = float(objective.predict(clean, torch.full((n_img,), site, dtype=torch.long)).double().mean()) * sign
    p1, r1 = params.first_phase_passes, epsilon * params.first_phase_radius_factor
    box = useful_box(clean)
    st = _State.start(_seeded_starts(shape, r1 if p1 else epsilon, n_r, seed).to(clean.device),
                      r1 if p1 else epsilon, epsilon, box)
    cut = _prune_pass(params)
    alive = torch.arange(n_r)
    done = 0
    for phase_end, radius in ((p1, r1), (params.steps, float(epsilon))):
        if radius == epsilon and p1:   # the final phase starts from the first phase's best, projected
            st = _State.start(st.anchor, epsilon, epsilon, box)
        if cut is not None and done < cut < phase_end:
            st = _run(objective, clean, st, radius, cut - done, site, sign, params)
            keep = torch.argsort(-st.value, stable=True)[:params.kept_of(len(alive))].sort().values
            alive, st, done = alive[keep], st.take(keep), cut
        st = _run(objective, clean, st, radius, phase_end - done, site, sign, params)
        done = phase_end
    per_restart = np.full(n_r, np.nan)
    per_restart[alive.numpy()] = st.value.double().numpy() - f0
    k = int(torch.argmax(st.value))     # ties: the lowest surviving restart
    passes = universal_passes(n_img, params)
    return UniversalSolution(st.anchor[k].detach().cpu().clone(), float(st.value[k]) - f0, passes, per_restart)


def random_shared_delta(shape: tuple[int, ...], epsilon: float, seed: int) -> np.ndarray:
    """A model-free shared perturbation: a Gaussian direction of L2 norm ``epsilon`` (float64,
    pixels in [0,1] space, ``shape`` like one image ``(H, W, 3)``)."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 23]))
    u = g.standard_normal(shape)
    return u * (float(epsilon) / float(np.linalg.norm(u)))


def shared_delta_stimuli(clean: np.ndarray, parents: Sequence[int], delta: np.ndarray,
                         epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """``clip(x_j + delta)`` for each parent ``j``, quantised to uint8 within ``epsilon``.

    ``clean``: uint8 (N, H, W, 3); ``delta``: (H, W, 3) float, pixels in [0,1] space, norm <=
    ``epsilon`` (a longer one is projected onto the ball first). Returns the shown pixels
    (len(parents), H, W, 3) uint8 and each one's shown epsilon (<= ``epsilon``).
    """
    d = np.asarray(delta, np.float64)
    n = float(np.linalg.norm(d))
    if n > epsilon > 0:
        d = d * (epsilon / n)
    shown = np.empty((len(parents),) + clean.shape[1:], np.uint8)
    eps = np.zeros(len(parents))
    for k, p in enumerate(parents):
        x = clean[int(p)].astype(np.float64) / 255.0
        shown[k], eps[k] = quantize_perturbation(clean[int(p)], np.clip(x + d, 0.0, 1.0) - x, epsilon)
    return shown, eps
