"""Eye calibration maths: target grids, the raw -> degrees fit, validation errors, storage.

A calibration shows targets at known positions (degrees from the screen centre, x right,
y up), takes the tracker's raw coordinates while the eye rests on each, and fits

    affine:       deg = A @ [1, rx, ry]
    second order: deg = A @ [1, rx, ry, rx*ry, rx^2, ry^2]

by least squares, per output axis. The map is plain numbers (JSON), stored with the day
file and reusable on later days (``CalibrationMap.load``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelfit.files import write_atomic

MODELS = {"affine": 3, "quadratic": 6}


def calibration_targets(n_points: int, spread_deg: float) -> np.ndarray:
    """(n, 2) target positions in degrees: 5 (centre + 4 corners) or 9 (3 x 3 grid)."""
    s = float(spread_deg)
    if not s > 0:
        raise ValueError(f"spread_deg = {spread_deg}: expected degrees > 0")
    if n_points == 5:
        return np.array([[0, 0], [-s, s], [s, s], [-s, -s], [s, -s]], dtype=float)
    if n_points == 9:
        g = np.array([-s, 0.0, s])
        return np.array([[0, 0]] + [[x, y] for y in g[::-1] for x in g if (x, y) != (0, 0)], dtype=float)
    raise ValueError(f"n_points = {n_points}: a calibration has 5 or 9 points")


def _design(raw: np.ndarray, model: str) -> np.ndarray:
    raw = np.asarray(raw, float).reshape(-1, 2)
    rx, ry = raw[:, 0], raw[:, 1]
    cols = [np.ones_like(rx), rx, ry]
    if model == "quadratic":
        cols += [rx * ry, rx ** 2, ry ** 2]
    elif model != "affine":
        raise ValueError(f"calibration model {model!r}: expected one of {', '.join(MODELS)}")
    return np.stack(cols, axis=1)


@dataclass
class CalibrationMap:
    """raw tracker coordinates -> degrees; ``coef`` is (n_terms, 2)."""

    model: str
    coef: np.ndarray
    targets_deg: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    error_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))   # validation error per target, deg
    created_utc: str = ""

    def __call__(self, raw_xy: np.ndarray) -> np.ndarray:
        return _design(raw_xy, self.model) @ self.coef

    def to_dict(self) -> dict:
        return {"model": self.model, "coef": np.asarray(self.coef).tolist(),
                "targets_deg": np.asarray(self.targets_deg).tolist(), "error_deg": np.asarray(self.error_deg).tolist(),
                "created_utc": self.created_utc}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationMap":
        model = str(d["model"])
        coef = np.asarray(d["coef"], float)
        if model not in MODELS or coef.shape != (MODELS[model], 2):
            raise ValueError(f"calibration map: model {model!r} with coefficients {coef.shape} is not valid")
        return cls(model, coef, np.asarray(d.get("targets_deg", []), float).reshape(-1, 2),
                   np.asarray(d.get("error_deg", []), float), str(d.get("created_utc", "")))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        write_atomic(p, json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationMap":
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"calibration file {p} cannot be used ({exc}); run a new calibration") from None


def fit_calibration(raw: np.ndarray, targets_deg: np.ndarray, model: str = "affine") -> CalibrationMap:
    """Least-squares map from raw samples (n, 2) to their targets (n, 2) in degrees.

    Several samples per target may be passed (rows repeat the target). The validation
    error (per distinct target: distance between the mapped mean raw position and the
    target, degrees) is stored in ``error_deg``.
    """
    raw = np.asarray(raw, float).reshape(-1, 2)
    tgt = np.asarray(targets_deg, float).reshape(-1, 2)
    if len(raw) != len(tgt):
        raise ValueError(f"{len(raw)} raw samples but {len(tgt)} targets")
    ok = np.isfinite(raw).all(axis=1) & np.isfinite(tgt).all(axis=1)
    raw, tgt = raw[ok], tgt[ok]
    uniq = np.unique(tgt, axis=0)
    if len(uniq) < MODELS.get(model, 99):
        raise ValueError(f"a {model} calibration needs at least {MODELS.get(model)} distinct targets; got {len(uniq)}")
    coef, *_ = np.linalg.lstsq(_design(raw, model), tgt, rcond=None)
    cmap = CalibrationMap(model, coef, uniq)
    cmap.error_deg = validation_errors(cmap, raw, tgt)[1]
    return cmap


def validation_errors(cmap: CalibrationMap, raw: np.ndarray, targets_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets (m, 2), error per target in degrees): mapped mean raw gaze vs the target."""
    raw = np.asarray(raw, float).reshape(-1, 2)
    tgt = np.asarray(targets_deg, float).reshape(-1, 2)
    uniq = np.unique(tgt, axis=0)
    err = np.empty(len(uniq))
    for i, t in enumerate(uniq):
        sel = (tgt == t).all(axis=1)
        err[i] = float(np.linalg.norm(cmap(raw[sel]).mean(axis=0) - t))
    return uniq, err


def format_validation(targets: np.ndarray, err: np.ndarray) -> str:
    """One line per target: position and error in degrees."""
    lines = [f"  target ({x:+6.2f}, {y:+6.2f}) deg: error {e:.3f} deg" for (x, y), e in zip(targets, err)]
    return "\n".join(lines + [f"  mean error {np.mean(err):.3f} deg, max {np.max(err):.3f} deg"])
