"""Simulation only: the true sensitivity of each simulated site, by a white-box attack.

The simulated monkey's expected spike count in the window is a differentiable function
of the image (``sim``'s true rate module times the window's driven fraction, plus the
baseline), so the same perturbation engine that attacks the fitted model can attack the
ground truth directly. Its best achievable signed change ``s * (E[r(x+delta)] - E[r(x)])``
(after uint8 quantisation, spikes) is the ceiling the closed loop is measured against.

The white-box attack must be a real upper bound: a "fraction of the truth" above 1 would
mean the truth was underestimated. :func:`converged_whitebox` starts from at least the
loop's restarts and steps, then doubles BOTH (at least once) until doubling changes every
problem's answer by less than ``tolerance`` (2%, relative, with an absolute floor of
``ABS_FLOOR_SPIKES``) or ``max_doublings`` is reached, keeps the best answer per problem
over all runs, and reports how many problems converged. :func:`cached_whitebox` keeps the
answers per problem in a file, so each (clean image, site, epsilon) is attacked once per
experiment (the report and later days reuse it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from modelfit.features import images_to_tensor
from modelfit.files import atomic_path
from modelfit.imageid import sha1_of
from stimuli.params import TRANSFER_OFF
from stimuli.perturb import generate_perturbations

if TYPE_CHECKING:
    from sim.monkey import TrueRateModule


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
    def __init__(self, rates: TrueRateModule) -> None:
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
    restarts: int             # the largest budget any problem ran (restarts x steps)
    steps: int
    relative_change_on_doubling: float   # |sum(best) / sum(best before each problem's last doubling) - 1|
    history: list[dict]
    converged: np.ndarray    # (n_problems,) bool: every eps and direction moved < tolerance
    previous: np.ndarray     # (n_problems, n_eps, 2): the best before each problem's last doubling
    doublings: np.ndarray    # (n_problems,) doublings each problem ran (budget base * 2**k each)
    max_change: np.ndarray   # (n_problems,) largest relative change at its last doubling

    @property
    def n_converged(self) -> int:
        return int(np.sum(self.converged))


def whitebox(module: nn.Module, clean: np.ndarray, problems: list[tuple[int, int]], epsilons: list[float],
             params, seed: int) -> np.ndarray:
    """(n_problems, n_eps, 2) best signed true change (spikes) found with ``params``.

    The attack runs on ``module.drive_module()`` when the module has one (same optimum per
    problem, better gradients); the answer is always ``module``'s change on the shown uint8
    stimulus against its clean parent."""
    if not problems:
        return np.zeros((0, len(epsilons), 2))
    make_drive = getattr(module, "drive_module", None)
    target = make_drive() if callable(make_drive) else module
    # the white-box attack is plain gradient ascent on the truth: no transfer options (issue 19)
    plain = replace(params, random_controls_per_image=0, **TRANSFER_OFF)
    ss = generate_perturbations(target, clean, problems, epsilons, plain, seed=seed)
    t = np.flatnonzero(ss.kind == "targeted")
    values = []
    with torch.no_grad():
        for i in range(0, len(ss.pixels), 64):
            x = images_to_tensor(ss.pixels[i:i + 64])
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
                       params, seed: int = 0, tolerance: float = 0.02, max_doublings: int = 1) -> WhiteBox:
    """Double restarts AND steps until every problem's best change moves by < ``tolerance``.

    Every problem runs the budget ``params`` and then at least one doubling (2x restarts, 2x
    steps, an independent run); a problem whose answer still moved by ``tolerance`` or more
    doubles again (only the unconverged problems: a converged one is done), up to
    ``max_doublings``. Returns the best answer per problem over all its runs (each run is a
    valid lower bound on the true optimum), per problem whether its last doubling moved it
    by less than ``tolerance``, and the budgets. A problem's runs depend only on itself and its
    clean image's index (the engine's per-row seeds), not on which other problems share a call.
    """
    n = len(problems)
    history = [{"restarts": params.restarts, "steps": params.steps, "problems": n}]
    best = whitebox(module, clean, problems, epsilons, params, seed)
    history[0]["mean"] = float(best.mean()) if n else 0.0
    previous = best.copy()
    doublings = np.zeros(n, np.int64)
    change = np.full(n, np.inf)
    converged = np.zeros(n, bool)
    active = np.arange(n)
    cur = params
    for k in range(max(1, max_doublings)):
        if len(active) == 0:
            break
        cur = replace(cur, steps=cur.steps * 2, restarts=cur.restarts * 2)
        found = whitebox(module, clean, [problems[i] for i in active], epsilons, cur, seed + k + 1)
        new_best = np.maximum(best[active], found)   # every run is a valid lower bound: keep the best per problem
        per = per_problem_change(best[active], new_best, ABS_FLOOR_SPIKES)
        previous[active], best[active] = best[active], new_best
        doublings[active] = k + 1
        change[active] = per
        converged[active] = per < tolerance
        history.append({"restarts": cur.restarts, "steps": cur.steps, "problems": int(len(active)),
                        "mean": float(found.mean()), "problems_converged": int((per < tolerance).sum()),
                        "max_problem_change": float(per.max())})
        active = active[per >= tolerance]
    return _whitebox_of(best, previous, doublings, change, converged, epsilons, params, history)


def _whitebox_of(best, previous, doublings, change, converged, epsilons, params, history) -> WhiteBox:
    k = int(doublings.max()) if len(doublings) else 0
    prev_sum = float(previous.sum())
    rel = abs(float(best.sum()) / prev_sum - 1.0) if prev_sum > 0 else float("inf")
    return WhiteBox(best, np.asarray(epsilons, float), params.restarts * 2 ** k, params.steps * 2 ** k, rel, history,
                    converged, previous, doublings, change)


# ----------------------------------------------------------------------------- per-problem cache
CACHE_VERSION = 2


def problem_keys(clean: np.ndarray, problems: list[tuple[int, int]], epsilons: list[float]) -> list[list[str]]:
    """Per problem, per epsilon: ``sha1(clean parent's uint8 pixels)-HxW:site:eps`` -- what
    identifies a white-box answer whatever day, order or index the problem comes with."""
    digests = {}
    for i, _ in problems:
        if i not in digests:
            h, w = clean[i].shape[:2]
            digests[i] = f"{sha1_of(clean[i])}-{h}x{w}"
    return [[f"{digests[i]}:{int(s)}:{float(e)!r}" for e in epsilons] for i, s in problems]


def cached_whitebox(path: Path, key: dict, module: nn.Module, clean: np.ndarray, problems: list[tuple[int, int]],
                    epsilons: list[float], params, seed: int = 0, tolerance: float = 0.02, max_doublings: int = 1,
                    on_compute=None) -> WhiteBox:
    """:func:`converged_whitebox` with a per-problem cache in ``path`` (npz).

    ``key`` holds everything else the answers depend on (the simulated monkey's config, the
    count window, the budget and step rules, ...); with another key the file is started
    afresh. Rows are (problem, epsilon) pairs keyed by :func:`problem_keys`, so later days,
    the report and a resumed run compute only problems no earlier call has solved; a problem
    is solved at every epsilon of the call. ``on_compute(n_new)`` is called before computing.
    Written atomically (temporary file, then rename)."""
    key = dict(key, version=CACHE_VERSION, seed=seed, tolerance=tolerance, max_doublings=max_doublings,
               restarts=params.restarts, steps=params.steps)
    rows = _read_cache(path, key)
    keys = problem_keys(clean, problems, epsilons)
    todo = [j for j, ks in enumerate(keys) if any(k not in rows for k in ks)]
    history: list[dict] = []
    if todo:
        if on_compute is not None:
            on_compute(len(todo))
        wb = converged_whitebox(module, clean, [problems[j] for j in todo], epsilons, params, seed, tolerance,
                                max_doublings)
        history = wb.history
        for m, j in enumerate(todo):
            for e, k in enumerate(keys[j]):
                rows[k] = (wb.best[m, e], wb.previous[m, e], int(wb.doublings[m]), float(wb.max_change[m]),
                           bool(wb.converged[m]))
        _write_cache(path, key, rows)
    n, n_e = len(problems), len(epsilons)
    best, previous = np.zeros((n, n_e, 2)), np.zeros((n, n_e, 2))
    doublings, change, converged = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool)
    for j, ks in enumerate(keys):
        got = [rows[k] for k in ks]
        best[j], previous[j] = [g[0] for g in got], [g[1] for g in got]
        doublings[j] = min(g[2] for g in got)
        change[j] = max(g[3] for g in got)
        converged[j] = all(g[4] for g in got)
    summary = {"problems": n, "computed_now": len(todo), "from_cache": n - len(todo),
               "problems_converged": int(converged.sum()), "max_problem_change": float(change.max()) if n else 0.0,
               "runs_this_call": history}
    return _whitebox_of(best, previous, doublings, change, converged, epsilons, params, [summary])


def _read_cache(path: Path, key: dict) -> dict:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if "rows" not in z or json.loads(str(z["key"])) != key:
                return {}
            names = [str(k) for k in z["rows"]]
            return {k: (z["best"][i], z["previous"][i], int(z["doublings"][i]), float(z["max_change"][i]),
                        bool(z["converged"][i])) for i, k in enumerate(names)}
    except (OSError, ValueError, KeyError):
        return {}   # unreadable (e.g. an older format): recompute


def _write_cache(path: Path, key: dict, rows: dict) -> None:
    names = sorted(rows)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, key=json.dumps(key, sort_keys=True), rows=np.asarray(names, dtype=str),
                 best=np.asarray([rows[k][0] for k in names], float).reshape(-1, 2),
                 previous=np.asarray([rows[k][1] for k in names], float).reshape(-1, 2),
                 doublings=np.asarray([rows[k][2] for k in names], np.int64),
                 max_change=np.asarray([rows[k][3] for k in names], float),
                 converged=np.asarray([rows[k][4] for k in names], bool))
