"""Simulation only: the true sensitivity of each simulated site, by a white-box attack.

The simulated monkey's expected spike count in the window is a differentiable function
of the image (``sim``'s true rate module times the window's driven fraction, plus the
baseline), so the same perturbation engine that attacks the fitted model can attack the
ground truth directly. Its best achievable signed change ``s * (E[r(x+delta)] - E[r(x)])``
(after uint8 quantisation, spikes) is the ceiling the closed loop is measured against.

The white-box attack must be a real upper bound: a "fraction of the truth" above 1 would
mean the truth was underestimated. :func:`converged_whitebox` starts from at least the
loop's restarts and steps, then doubles BOTH until doubling changes every problem's
answer by less than ``tolerance`` (2%, relative, with an absolute floor of
``ABS_FLOOR_SPIKES``) or ``max_doublings`` is reached, keeps the best answer per problem
over all runs, and reports how many problems converged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from stimuli.perturb import generate_perturbations


class TrueCountModule(nn.Module):
    """Images (B,3,H,W) in [0,1] -> expected spikes (B, C) in the count window."""

    def __init__(self, monkey, window_s: tuple[float, float], on_s: float):
        super().__init__()
        self.rates = monkey.true_rate_module()
        ones = np.ones((1, monkey.n_channels))
        base = monkey.expected_counts(0 * ones, window_s, on_s)[0]           # counts at rate 0
        slope = monkey.expected_counts(ones, window_s, on_s)[0] - base       # counts per Hz
        self.register_buffer("slope", torch.as_tensor(slope, dtype=torch.float32))
        self.register_buffer("base", torch.as_tensor(base, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base + self.slope * self.rates(x)

    def drive_module(self) -> nn.Module:
        """The sites' drives before the saturating nonlinearity: each site's count is a strictly
        increasing function of its own drive, so attacking the drive has the same optimum per
        problem without the sigmoid's vanishing gradients near floor and ceiling."""
        return _Drive(self.rates).eval()


class _Drive(nn.Module):
    def __init__(self, rates: nn.Module) -> None:
        super().__init__()
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rates.drive(x)


ABS_FLOOR_SPIKES = 0.05   # changes below this many expected spikes count as converged


@dataclass
class WhiteBox:
    """Best signed true change per (problem, epsilon, direction), spikes."""

    best: np.ndarray          # (n_problems, n_eps, 2): directions +1, -1
    epsilons: np.ndarray
    restarts: int
    steps: int
    relative_change_on_doubling: float   # |mean(2B) / mean(B) - 1| at the budget returned
    history: list[dict]
    converged: np.ndarray | None = None  # (n_problems,) bool: every eps and direction moved < tolerance

    @property
    def n_converged(self) -> int:
        return int(np.sum(self.converged)) if self.converged is not None else 0


def whitebox(module: nn.Module, clean: np.ndarray, problems: list[tuple[int, int]], epsilons: list[float],
             params, seed: int, progress: bool) -> np.ndarray:
    """(n_problems, n_eps, 2) best signed true change (spikes) found with ``params``.

    The attack runs on ``module.drive_module()`` when the module has one (same optimum per
    problem, better gradients); the answer is always ``module``'s change on the shown uint8
    stimulus against its clean parent."""
    target = module.drive_module() if hasattr(module, "drive_module") else module
    ss = generate_perturbations(target, clean, problems, epsilons, replace(params, random_controls_per_image=0),
                                seed=seed, progress=progress)
    t = np.flatnonzero(ss.kind == "targeted")
    values = []
    with torch.no_grad():
        for i in range(0, len(ss.pixels), 64):
            x = torch.from_numpy(ss.pixels[i:i + 64]).permute(0, 3, 1, 2).float().div(255.0)
            values.append(module(x).double().numpy())
    values = np.concatenate(values)
    site = ss.site[t]
    change = (values[t, site] - values[ss.parent[t], site]) * ss.direction[t]
    return change.reshape(len(problems), len(epsilons), 2)


def per_problem_change(before: np.ndarray, after: np.ndarray, floor: float = ABS_FLOOR_SPIKES) -> np.ndarray:
    """(n_problems,) largest relative change over epsilons and directions, |after - before| /
    max(|before|, |after|, floor): a problem whose answer moves by < ``floor`` spikes has converged."""
    denom = np.maximum(np.maximum(np.abs(before), np.abs(after)), floor)
    return (np.abs(after - before) / denom).reshape(len(before), -1).max(axis=1)


def converged_whitebox(module: nn.Module, clean: np.ndarray, problems: list[tuple[int, int]], epsilons: list[float],
                       params, seed: int = 0, tolerance: float = 0.02, max_doublings: int = 1,
                       progress: bool = True) -> WhiteBox:
    """Double restarts AND steps until every problem's best change moves by < ``tolerance``.

    Returns the best answer per problem over all budgets (each run is a valid lower bound
    on the true optimum), the last budget and, per problem, whether its last doubling
    moved it by less than ``tolerance``.
    """
    history = []
    cur = params
    found = whitebox(module, clean, problems, epsilons, cur, seed, progress)
    best = found
    history.append({"restarts": cur.restarts, "steps": cur.steps, "mean": float(found.mean())})
    change = float("inf")
    converged = np.zeros(len(problems), bool)
    for k in range(max_doublings):
        nxt = replace(cur, steps=cur.steps * 2, restarts=cur.restarts * 2)
        found2 = whitebox(module, clean, problems, epsilons, nxt, seed + k + 1, progress)
        # the answer at budget 4B (2x restarts, 2x steps) against the answer at B, each from its own run
        change = abs(found2.mean() / found.mean() - 1.0) if found.mean() > 0 else float("inf")
        new_best = np.maximum(best, found2)   # every run is a valid lower bound: keep the best per problem
        per = per_problem_change(best, new_best)
        converged = per < tolerance
        history.append({"restarts": nxt.restarts, "steps": nxt.steps, "mean": float(found2.mean()),
                        "relative_change": change, "problems_converged": int(converged.sum()),
                        "problems": len(problems), "max_problem_change": float(per.max()) if len(per) else 0.0})
        best = new_best
        found, cur = found2, nxt
        if converged.all():
            break
    return WhiteBox(best, np.asarray(epsilons, float), cur.restarts, cur.steps, change, history, converged)


def load_or_compute(path: Path, key: dict, compute) -> WhiteBox:
    """Cache a WhiteBox result in ``path`` (npz + json key); recompute if the key differs."""
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) == key:
                return WhiteBox(z["best"], z["epsilons"], int(z["restarts"]), int(z["steps"]),
                                float(z["relative_change_on_doubling"]), json.loads(str(z["history"])),
                                z["converged"] if "converged" in z else None)
    wb = compute()
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, best=wb.best, epsilons=wb.epsilons, restarts=wb.restarts, steps=wb.steps,
             relative_change_on_doubling=wb.relative_change_on_doubling, history=json.dumps(wb.history),
             converged=wb.converged if wb.converged is not None else np.zeros(0, bool), key=json.dumps(key))
    os.replace(tmp, path)
    return wb
