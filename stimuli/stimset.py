"""A stimulus set: uint8 pixels plus one provenance row per stimulus.

Pixels are exactly what is displayed: ``(n, H, W, 3)`` uint8, RGB. A model sees them as
``pixels / 255`` in [0,1]; every epsilon is an L2 norm in that space.

Provenance columns (one entry per stimulus):

- ``kind``: ``"clean"``, ``"targeted"`` (model-designed) or ``"random"`` (model-free control)
- ``parent``: index (into this set) of the clean image it was made from; -1 for clean images
- ``site``: the channel index the perturbation targets; -1 for none
- ``epsilon_requested`` / ``epsilon_shown``: L2 norm asked for / actually displayed (after uint8)
- ``direction``: +1 (drive the site up), -1 (down), 0 (none)
- ``predicted_change``: f_site(shown) - f_site(parent) under the designing model (spikes); NaN if none
- ``budget_passes``: forward+backward passes the optimiser spent on it
- ``epsilon_index``: row of :attr:`StimulusSet.epsilons` (the planned grid) it was made at;
  -1 for clean images. Where >= 0, ``epsilon_requested == epsilons[epsilon_index]`` exactly:
  the analysis groups by this index and labels with the stored grid value.

``epsilons`` (not a per-stimulus column): the planned L2 norms, in the order the plan gave them.

Beyond the paper (issue 23), the kinds ``"universal"`` (one model-designed delta shared by
many images), ``"universal_random"`` (a model-free shared delta of the same norm),
``"subspace"`` (along a site's top singular direction of its designs) and ``"line"`` (a
point ``x + a u + b v`` on a line or plane through a clean image), with
:attr:`StimulusSet.GEOMETRY_COLUMNS` (defaults for every other stimulus):

- ``shared_delta``: id of the shared perturbation or line/plane it belongs to; -1 for none
- ``design_role``: 1 the shared delta was designed on this image's parent, 2 held out, 0 none
- ``coord_u`` / ``coord_v``: the shown perturbation's coordinates (L2 norm, pixels in [0,1])
  along the designed direction ``u`` and a random direction ``v`` orthogonal to it; NaN for none

``source`` (optional, not a provenance column; None if unknown): per stimulus, where its
pixels came from (a builtin photograph crop ``package:photo.jpg#crop<i>``, a file name, a
texture's name). Day 0 stores it for the clean set (``/stimuli/source``); a derived
stimulus's source is its clean parent's. Cross-validation groups crops of one photograph.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelfit.imageid import sha1_of  # the one image sha1 (re-exported: stimuli.stimset.sha1_of)

KINDS = ("clean", "targeted", "random", "universal", "universal_random", "subspace", "line")


def check_epsilon_index(index: np.ndarray, requested: np.ndarray, epsilons: np.ndarray) -> None:
    """``index`` must point into ``epsilons`` (or be -1) and agree exactly with ``requested``."""
    if np.any((index < -1) | (index >= len(epsilons))):
        raise ValueError(f"StimulusSet.epsilon_index points outside the planned grid epsilons={epsilons.tolist()} "
                         "(-1 = none); pass the grid the stimuli were made at as epsilons=")
    has = index >= 0
    if np.any(requested[has] != epsilons[index[has]]):
        raise ValueError("StimulusSet.epsilon_requested differs from epsilons[epsilon_index]; "
                         "the index must name the planned epsilon each stimulus was made at")


_COLUMN_DTYPES: dict[str, type] = {
    "shared_delta": np.int64, "design_role": np.int8, "coord_u": np.float64, "coord_v": np.float64,
    "parent": np.int64, "site": np.int64, "epsilon_requested": np.float64, "epsilon_shown": np.float64,
    "direction": np.int8, "predicted_change": np.float64, "budget_passes": np.int64, "epsilon_index": np.int64}


def _column_defaults(n: int) -> dict[str, np.ndarray]:
    """Each provenance column's value for ``n`` stimuli when it is not given."""
    return {"kind": np.array(["clean"] * n, dtype=object), "parent": np.full(n, -1),
            "site": np.full(n, -1), "epsilon_requested": np.zeros(n), "epsilon_shown": np.zeros(n),
            "direction": np.zeros(n), "predicted_change": np.full(n, np.nan),
            "budget_passes": np.zeros(n), "epsilon_index": np.full(n, -1), "shared_delta": np.full(n, -1),
            "design_role": np.zeros(n), "coord_u": np.full(n, np.nan), "coord_v": np.full(n, np.nan)}


@dataclass(init=False)
class StimulusSet:
    """Pixels and provenance columns (see the module docstring). Every column is optional when
    built (array-like, one entry per stimulus; the defaults describe clean images) and is an
    array of its column's dtype afterwards."""

    pixels: np.ndarray
    kind: np.ndarray
    parent: np.ndarray
    site: np.ndarray
    epsilon_requested: np.ndarray
    epsilon_shown: np.ndarray
    direction: np.ndarray
    predicted_change: np.ndarray
    budget_passes: np.ndarray
    epsilon_index: np.ndarray
    epsilons: np.ndarray   # the planned grid, (n_eps,)
    shared_delta: np.ndarray
    design_role: np.ndarray
    coord_u: np.ndarray
    coord_v: np.ndarray
    source: np.ndarray | None  # per stimulus (str, an object array), where its pixels came from (see the module docstring)

    COLUMNS = ("kind", "parent", "site", "epsilon_requested", "epsilon_shown", "direction",
               "predicted_change", "budget_passes", "epsilon_index")
    GEOMETRY_COLUMNS = ("shared_delta", "design_role", "coord_u", "coord_v")
    _DTYPES = _COLUMN_DTYPES

    def __init__(self, pixels: npt.ArrayLike, kind: npt.ArrayLike | None = None, parent: npt.ArrayLike | None = None,
                 site: npt.ArrayLike | None = None, epsilon_requested: npt.ArrayLike | None = None,
                 epsilon_shown: npt.ArrayLike | None = None, direction: npt.ArrayLike | None = None,
                 predicted_change: npt.ArrayLike | None = None, budget_passes: npt.ArrayLike | None = None,
                 epsilon_index: npt.ArrayLike | None = None, epsilons: npt.ArrayLike | None = None,
                 shared_delta: npt.ArrayLike | None = None, design_role: npt.ArrayLike | None = None,
                 coord_u: npt.ArrayLike | None = None, coord_v: npt.ArrayLike | None = None,
                 source: Iterable[object] | None = None) -> None:
        px = np.asarray(pixels)
        if px.dtype != np.uint8 or px.ndim != 4 or px.shape[-1] != 3:
            raise ValueError(f"StimulusSet.pixels must be uint8 of shape (n, H, W, 3); got {px.dtype} {px.shape}")
        self.pixels = px
        n = len(px)
        given = {"kind": kind, "parent": parent, "site": site, "epsilon_requested": epsilon_requested,
                 "epsilon_shown": epsilon_shown, "direction": direction, "predicted_change": predicted_change,
                 "budget_passes": budget_passes, "epsilon_index": epsilon_index, "shared_delta": shared_delta,
                 "design_role": design_role, "coord_u": coord_u, "coord_v": coord_v}
        defaults = _column_defaults(n)
        for col in self.COLUMNS + self.GEOMETRY_COLUMNS:
            value = given[col]
            v = defaults[col] if value is None else np.asarray(value)
            v = v.astype(object) if col == "kind" else v.astype(self._DTYPES[col])
            if len(v) != n:
                raise ValueError(f"StimulusSet.{col} has {len(v)} entries for {n} images")
            setattr(self, col, v)
        bad = sorted(set(self.kind) - set(KINDS))
        if bad:
            raise ValueError(f"StimulusSet.kind has unknown values {bad}; expected {KINDS}")
        if np.any((self.parent >= n) | (self.parent < -1)):
            raise ValueError("StimulusSet.parent points outside the set")
        self.epsilons = np.zeros(0) if epsilons is None else np.asarray(epsilons, np.float64).reshape(-1)
        check_epsilon_index(self.epsilon_index, self.epsilon_requested, self.epsilons)
        self.source = None
        if source is not None:
            self.source = np.array([str(s) for s in source], dtype=object)
            if len(self.source) != n:
                raise ValueError(f"StimulusSet.source has {len(self.source)} entries for {n} images")
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def ids(self) -> list[str]:
        """sha1 of each stimulus's displayed pixels."""
        if self._ids is None:
            self._ids = [sha1_of(p) for p in self.pixels]
        return self._ids

    @property
    def is_clean(self) -> np.ndarray:
        return self.kind == "clean"


