"""The feasible set of a perturbation: an L2 ball intersected with the pixel box.

For a clean image ``x`` (pixels in [0,1]) and a radius ``r`` (L2 norm in that space) the
set is ``C = {delta : ||delta||_2 <= r  and  0 <= x + delta <= 1}``. One
:class:`L2BoxSet` holds a whole batch of rows, each with its own clean image and its own
radius, and offers the three verbs the optimiser needs (after MadryLab ``robustness``'s
``attack_steps``): :meth:`~L2BoxSet.project`, :meth:`~L2BoxSet.step` and
:meth:`~L2BoxSet.random_perturb`. Everything is vectorised over rows; nothing loops
over the batch in Python.

The projection is exact, not "renormalise then clip". Because the box contains 0, the
KKT conditions give ``P(v) = clip(t * v, -x, 1 - x)`` with ``t = 1 / (1 + lambda)`` in
(0, 1]: ``t = 1`` when clipping alone lands inside the ball, otherwise the ``t`` at which
``||clip(t v)|| = r``. That norm is continuous and non-decreasing in ``t``, so ``t`` is
found by bisection, then finished exactly: on the final bracket the set of clipped
coordinates is fixed, and ``t^2 * sum_free v^2 + sum_clipped bound^2 = r^2`` is solved
in closed form.
"""
from __future__ import annotations

import math

import torch

BISECTION_STEPS = 30  # on the clipped coordinates only, then an exact finish


def host_syncs_are_free(t: torch.Tensor) -> bool:
    """True on CPU: reading a tensor's value on the host costs nothing there. On an accelerator
    every read (``bool(t.any())``, ``int(...)``) waits for the device's queue, so the engine
    avoids the reads it can do without (with the same results)."""
    return t.device.type == "cpu"


def _nhwc(t: torch.Tensor) -> bool:
    """True for a 4-d tensor stored channels_last (and not also plainly contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, n) view of ``t`` in its memory order (channels_last: NHWC order), never a copy of a
    dense tensor: the projection then runs in the layout the step runs in."""
    if _nhwc(t):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _unflat(f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_flat` for a tensor shaped and laid out like ``like``."""
    if _nhwc(like):
        b, c, h, w = like.shape
        return f.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return f.reshape(like.shape)


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s memory format (channels_last or contiguous); no copy when it already is."""
    return t.contiguous(memory_format=torch.channels_last if _nhwc(like) else torch.contiguous_format)


def _row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row scalars (B,) broadcast against (B, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _changed_coordinates(v: torch.Tensor, clipped: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` where ``clipped != v`` (2-D, row-major order, like ``nonzero``).

    Clipping is usually sparse, so blocks of ``block`` coordinates are first screened with
    two fast float reductions and only the blocks that changed are searched.
    """
    b, n = v.shape
    diff = v - clipped                                   # exactly 0 where unchanged (finite values)
    if n % block:
        rows, cols = diff.nonzero(as_tuple=True)
        return rows, cols
    blocks = diff.view(b * (n // block), block)
    hit = ((blocks.amax(1) != 0) | (blocks.amin(1) != 0)).nonzero().squeeze(1)
    sub = blocks[hit].nonzero()
    flat = hit[sub[:, 0]] * block + sub[:, 1]
    return torch.div(flat, n, rounding_mode="floor"), flat % n


def project_ball_box(v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                     radius: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of each row of ``v`` onto ``{||d|| <= radius} ∩ [lower, upper]``.

    ``v, lower, upper``: (B, ...) with ``lower <= 0 <= upper``; ``radius``: (B,) >= 0.
    Returns a tensor like ``v``; every row's norm is <= its radius (to float rounding,
    then enforced by a final shrink toward 0, which stays in the box).

    Only coordinates that already clip at ``t = 1`` (``v_j`` beyond the box) can clip
    for any ``t <= 1``, so the bisection runs on those alone, packed into a dense
    ``(B, K)`` block, with every other coordinate summarised by one sum of squares per
    row. The candidates are found by screening blocks with float reductions, not with a
    full-size ``nonzero``. Cost: a few passes over the full tensor plus at most
    ``BISECTION_STEPS`` passes over ``(B, K)``, cheap when the box binds in few pixels.
    """
    b = v.shape[0]
    v = same_layout(v, lower)                            # one memory order for the three flats
    vf, lo, hi = _flat(v), _flat(lower), _flat(same_layout(upper, lower))
    r2 = radius.to(vf.dtype).reshape(b).pow(2)
    clipped = torch.clamp(vf, lo, hi)
    n2_clip = torch.linalg.vector_norm(clipped, dim=1).pow(2)
    need = n2_clip > r2
    if not bool(need.any()):
        return _unflat(clipped, v)
    vnorm2 = torch.linalg.vector_norm(vf, dim=1).pow(2)
    ri, ci = _changed_coordinates(vf, clipped)           # clipped at t = 1
    cnt = torch.bincount(ri, minlength=b)
    k = int(cnt.max()) if len(ri) else 0
    pos = torch.arange(len(ri), device=v.device) - (torch.cumsum(cnt, 0) - cnt)[ri]
    cv2 = torch.zeros(b, max(k, 1), dtype=vf.dtype, device=v.device)
    cb2 = torch.zeros_like(cv2)
    cv2[ri, pos] = vf[ri, ci].pow(2)
    cb2[ri, pos] = clipped[ri, ci].pow(2)
    tau = torch.where(cv2 > 0, (cb2 / cv2.clamp_min(1e-38)).sqrt(), torch.full_like(cv2, math.inf))
    free2 = (n2_clip - cb2.sum(1)).clamp_min(0)         # squares of coordinates that never clip

    # bracket: at t_lo = r/||v|| the unclipped norm is r, so the clipped one is <= r
    t_lo = (r2 / vnorm2.clamp_min(1e-30)).sqrt().clamp(max=1.0)
    t_hi = torch.ones_like(t_lo)
    check_fixed_point = host_syncs_are_free(v)           # elsewhere all steps run (same result, no read)
    for _ in range(BISECTION_STEPS if k else 0):
        t = (t_lo + t_hi).mul_(0.5)
        t2 = t * t                                       # norm^2 at t: t^2 * free + clipped terms
        n2 = torch.where(tau <= t[:, None], cb2, t2[:, None] * cv2).sum(1).add_(t2 * free2)
        inside = n2 <= r2
        new_lo, new_hi = torch.where(inside, t, t_lo), torch.where(inside, t_hi, t)
        if check_fixed_point and torch.equal(new_lo, t_lo) and torch.equal(new_hi, t_hi):
            break                                        # a fixed point in float: later steps change nothing
        t_lo, t_hi = new_lo, new_hi
    # exact finish: with the clipped set of t_hi fixed, t^2 * A + C = r^2 on the bracket
    clip_hi = tau <= t_hi[:, None]
    c2 = torch.where(clip_hi, cb2, torch.zeros_like(cb2)).sum(1)
    a2 = free2 + torch.where(clip_hi, torch.zeros_like(cv2), cv2).sum(1)
    t_exact = ((r2 - c2).clamp_min(0) / a2.clamp_min(1e-30)).sqrt()
    ok = (a2 > 0) & (t_exact >= t_lo) & (t_exact <= t_hi)
    t_fin = torch.where(need, torch.where(ok, t_exact, t_lo), torch.ones_like(t_lo))
    d = torch.clamp(vf * t_fin[:, None], lo, hi)
    # guarantee the ball to float rounding: shrinking toward 0 keeps the box
    dn2 = torch.linalg.vector_norm(d, dim=1).pow(2)
    over = dn2 > r2
    if bool(over.any()):
        d = d * torch.where(over, (r2 / dn2.clamp_min(1e-30)).sqrt(), torch.ones_like(dn2))[:, None]
    return _unflat(d, v)


def l2_step(delta: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
    """``delta + step_size * grad / ||grad||`` per row (a new tensor; rows with zero gradient stay)."""
    gn = _flat(grad).norm(dim=1)
    scale = torch.where(gn > 0, step_size.to(grad.dtype) / gn.clamp_min(1e-30), torch.zeros_like(gn))
    return (grad * _row(scale, grad)).add_(delta)


class L2BoxSet:
    """Rows of ``{delta : ||delta||_2 <= radius_k, 0 <= x_k + delta <= 1}``.

    ``clean``: (B, C, H, W) float pixels in [0,1]; ``radius``: (B,) L2 norms (same space).
    The box bounds ``lower = -clean`` and ``upper = 1 - clean`` are computed once, here;
    :meth:`from_bounds` reuses bounds already computed (an optimiser's rows keep theirs).
    """

    def __init__(self, clean: torch.Tensor, radius: torch.Tensor) -> None:
        self.lower = -clean
        self.upper = 1.0 - clean
        self.radius = radius.to(clean.dtype).reshape(clean.shape[0])

    @classmethod
    def from_bounds(cls, lower: torch.Tensor, upper: torch.Tensor, radius: torch.Tensor) -> "L2BoxSet":
        """The set with bounds ``lower = -clean`` and ``upper = 1 - clean`` (B, C, H, W) given."""
        box = cls.__new__(cls)
        box.lower, box.upper = lower, upper
        box.radius = radius.to(lower.dtype).reshape(lower.shape[0])
        return box

    @property
    def clean(self) -> torch.Tensor:
        return -self.lower

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Exact projection of each row onto its ball ∩ box."""
        return project_ball_box(delta, self.lower, self.upper, self.radius)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        """L2 steepest ascent: ``delta + step_size * grad / ||grad||`` per row (not projected).

        Rows whose gradient is zero do not move.
        """
        return l2_step(delta, grad, step_size)

    def random_perturb(self, generators: list[torch.Generator]) -> torch.Tensor:
        """A start drawn uniformly from each row's ball (one generator per row), then projected.

        Uniform in the n-ball: Gaussian direction, radius ``r * U^(1/n)``. Drawing each row
        from its own generator makes a row's start independent of how rows are batched.
        """
        like = self.lower
        b, n = like.shape[0], like[0].numel()
        dirs, us = [], []
        for g in generators:   # each on its generator's device
            dirs.append(torch.randn(like.shape[1:], generator=g, dtype=torch.float32, device=g.device))
            us.append(torch.rand((), generator=g, dtype=torch.float64, device=g.device))
        d = same_layout(torch.stack(dirs).to(like.device, like.dtype), like)
        u = torch.stack(us).to(like.device)
        rad = (self.radius.double() * u.pow(1.0 / n)).to(like.dtype)
        dn = _flat(d).norm(dim=1).clamp_min(1e-30)
        d = d * _row(rad / dn, d)
        return self.project(d[:b])
