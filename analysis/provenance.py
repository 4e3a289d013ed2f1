"""Stimulus provenance columns -> (perturbed stimulus, clean parent, site) pairs.

Provenance is what ``stimuli.stimset.StimulusSet`` stores per stimulus; any object with
those attributes, or a mapping with those keys, is accepted (analysis never imports
``stimuli``). Columns used here, one entry per stimulus:

- ``kind``: "clean" | "targeted" | "random"
- ``parent``: index of the clean parent in the same set, -1 for none
- ``site``: channel index the stimulus targets, -1 for none (model-free controls may be -1)
- ``epsilon_requested`` / ``epsilon_shown``: L2 norm, pixels in [0,1]
- ``epsilon_index``: row of the planned grid ``epsilons`` the stimulus was made at (-1: none)
- ``direction``: +1 / -1 / 0
- ``predicted_change``: f_site(shown) - f_site(parent) under the designing model, spikes

and, once per set, ``epsilons``: the planned grid (L2 norms). Stimuli are grouped by
``epsilon_index`` and labelled with ``epsilons[epsilon_index]``; no epsilon is ever matched
by rounding.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

PAIR_COLUMNS = ("kind", "parent", "site", "epsilon_requested", "epsilon_shown", "direction", "predicted_change",
                "epsilon_index")


def provenance_columns(prov, needed: tuple[str, ...] = PAIR_COLUMNS) -> dict[str, np.ndarray]:
    """Pull the ``needed`` columns out of a StimulusSet-like object or a mapping, as numpy arrays."""
    cols = {}
    for name in needed:
        if isinstance(prov, Mapping):
            if name not in prov:
                raise ValueError(f"provenance is missing column {name!r}; pass a StimulusSet or a dict "
                                 f"with keys {needed}")
            v = prov[name]
        else:
            if not hasattr(prov, name):
                raise TypeError(f"provenance object {type(prov).__name__} has no attribute {name!r}; pass a "
                                f"StimulusSet or a dict with keys {needed}")
            v = getattr(prov, name)
        cols[name] = np.asarray(v)
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"provenance columns have different lengths {lengths}; each needs one entry per stimulus")
    return cols


def check_responses(responses: np.ndarray, n_stimuli: int, name: str = "responses") -> np.ndarray:
    """``responses`` must be (n_stimuli, n_channels) floats (spikes; NaN = not measured)."""
    r = np.asarray(responses, dtype=float)
    if r.ndim != 2 or r.shape[0] != n_stimuli:
        raise ValueError(f"{name} must have shape (n_stimuli={n_stimuli}, n_channels); got {r.shape}. "
                         "Pass mean spike counts per stimulus (rows in stimulus-set order) per channel.")
    return r


def planned_epsilons(prov) -> np.ndarray:
    """The planned grid ``epsilons`` (n_eps,) L2 norms, from the attribute or mapping key."""
    grid = prov.get("epsilons") if isinstance(prov, Mapping) else getattr(prov, "epsilons", None)
    if grid is None:
        raise ValueError("provenance has no planned epsilon grid; pass a StimulusSet or a dict with key 'epsilons' "
                         "(the L2 norms that 'epsilon_index' points into)")
    return np.asarray(grid, dtype=float).reshape(-1)


@dataclass(frozen=True)
class Pairs:
    """One row per (perturbed stimulus, site it counts for). All arrays (n_pairs,).

    ``stimulus``/``parent``: row indices into the stimulus set; ``site``: channel index;
    ``epsilon_index``: row of ``epsilons`` (the planned grid, (n_eps,)); ``epsilon``: requested
    L2 norm (= ``epsilons[epsilon_index]``); ``epsilon_shown``: displayed L2 norm (pixels in [0,1]);
    ``direction``: +1/-1/0; ``predicted_change``: designing model's predicted change, spikes.
    """

    stimulus: np.ndarray
    parent: np.ndarray
    site: np.ndarray
    epsilon: np.ndarray
    epsilon_shown: np.ndarray
    direction: np.ndarray
    predicted_change: np.ndarray
    epsilon_index: np.ndarray
    epsilons: np.ndarray

    def __len__(self) -> int:
        return len(self.stimulus)

    def change(self, responses: np.ndarray) -> np.ndarray:
        """Measured ``r_site(stimulus) - r_site(parent)`` per pair, (n_pairs,), spikes (NaN if unmeasured)."""
        return responses[self.stimulus, self.site] - responses[self.parent, self.site]


def targeted_sites(prov) -> np.ndarray:
    """Sorted channel indices targeted by at least one "targeted" stimulus."""
    c = provenance_columns(prov, ("kind", "site"))
    s = c["site"][(c["kind"] == "targeted") & (c["site"] >= 0)]
    return np.unique(s.astype(np.int64))


def perturbation_pairs(prov, kind: str = "targeted", sites: np.ndarray | None = None) -> Pairs:
    """Pairs of perturbed stimuli of ``kind`` with their clean parents.

    A stimulus with ``site >= 0`` counts only for that site. A stimulus with ``site == -1``
    (a model-free control not tied to a site) counts for every site in ``sites``
    (default: the sites targeted in this set). Only sites in ``sites`` are kept.
    """
    if kind not in ("targeted", "random"):
        raise ValueError(f"kind must be 'targeted' or 'random' (perturbed stimuli); got {kind!r}")
    c = provenance_columns(prov)
    sites = targeted_sites(prov) if sites is None else np.unique(np.asarray(sites, dtype=np.int64))
    grid = planned_epsilons(prov)
    rows = np.flatnonzero((c["kind"] == kind) & (c["parent"] >= 0))
    if np.any((c["epsilon_index"][rows] < 0) | (c["epsilon_index"][rows] >= len(grid))):
        raise ValueError(f"some {kind} stimuli have an epsilon_index outside the planned grid "
                         f"epsilons={grid.tolist()}; every perturbed stimulus names the row it was made at")
    if np.any(c["kind"][c["parent"][rows]] != "clean"):
        raise ValueError(f"some {kind} stimuli have a parent that is not a clean image; parents must be clean")
    own = rows[c["site"][rows] >= 0]
    own = own[np.isin(c["site"][own], sites)]
    shared = rows[c["site"][rows] < 0]
    stim = np.concatenate([own, np.repeat(shared, len(sites))]).astype(np.int64)
    site = np.concatenate([c["site"][own], np.tile(sites, len(shared))]).astype(np.int64)
    return Pairs(stimulus=stim, parent=c["parent"][stim].astype(np.int64), site=site,
                 epsilon=c["epsilon_requested"][stim].astype(float),
                 epsilon_shown=c["epsilon_shown"][stim].astype(float),
                 direction=c["direction"][stim].astype(np.int64),
                 predicted_change=c["predicted_change"][stim].astype(float),
                 epsilon_index=c["epsilon_index"][stim].astype(np.int64), epsilons=grid)
