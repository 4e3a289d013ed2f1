"""``day_DDD.analysis.json``: the headline numbers, the figure data and the identity of what they
were computed from, so ``itloop report`` draws a day without recomputing it.

A day's analysis is *current* when its stored identity equals :func:`analysis_identity` now:
the analysis code's version (:data:`ANALYSIS_VERSION`, bumped with every change to what an
analysis computes), the bootstrap size, and the identity of every input: the day file
(its UUID ``identifier``, ``committed_trials``, ``completed_utc`` and byte size), the
screening day file (sigma and the random-pair baseline come from it) and the designing
model file (sha256 recorded in the day file, checked against the file's size on disk).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from analysis.baselines import SiteLevel
from analysis.bootstrap import Estimate
from analysis.inference import DayHeadline
from analysis.sensitivity import PredictedVsMeasured, SensitivityCurve
from modelfit.scores import (
    PREDICTIVITY_DEFINITIONS,
    brain_score_predictivity,
    noise_ceiled_predictivity,
)
from rig.paths import day_path

ANALYSIS_VERSION = 6   # 3: floor-corrected magnitudes, two-level BCa, figure data, identity; 4: site slots;
#   5: variance-corrected two-level intervals, MOVER difference, trial-aware floor correction;
#   6: no percentile bootstrap: BCa site bands, two-level curve/baseline bands, r resampling parents


def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def est_json(e: Estimate | None) -> dict | None:
    """{"value", "lo", "hi", "n"} (None for a missing value or bound)."""
    if e is None:
        return None
    return {"value": _f(e.value), "lo": _f(e.lo), "hi": _f(e.hi), "n": int(e.n)}


def est_from_json(v: dict | None, level: float = 0.95) -> Estimate:
    nan = float("nan")
    if not v:
        return Estimate(nan, nan, nan, level, 0)
    g = (lambda k: nan if v.get(k) is None else float(v[k]))
    return Estimate(g("value"), g("lo"), g("hi"), level, int(v.get("n", 0)))


def headline_numbers(h: DayHeadline, eps: list[float]) -> dict:
    """The floor-corrected headline of one day, per epsilon of ``eps`` (None where absent)."""
    idx = {float(e): k for k, e in enumerate(h.epsilons)}

    def per_eps(values, conv=est_json):
        return [conv(values[idx[e]]) if e in idx else None for e in eps]

    return {
        "floor_corrected_targeted": per_eps(h.targeted_rms),
        "floor_corrected_random": per_eps(h.random_rms),
        "targeted_minus_random": per_eps(h.difference),
        "random_above_floor_p": per_eps(h.random_p, _f),
        "random_above_floor_p_holm": per_eps(h.random_p_holm, _f),
        "targeted_over_random": per_eps(h.ratio, lambda r: est_json(r.estimate)),
        "targeted_over_random_text": per_eps(h.ratio, lambda r: r.text()),
        "headline_units": {"n_sites": h.n_sites, "n_images": h.n_images, "interval": interval_wording(h.n_sites, h.nested)},
    }


FEW_SITES = 8   # below this many sites a population interval can under-cover (README, Statistics)


def interval_wording(n_sites: int, nested: bool = True) -> str:
    """How the day's headline intervals were made, for the report (``analysis.inference.day_headline``)."""
    from analysis.inference import MIN_UNITS

    if n_sites < MIN_UNITS:
        return (f"95% over images, BCa shape with the random-effects variance and a t quantile; the {n_sites} sites "
                f"are held fixed (fewer than {MIN_UNITS})")
    text = ("95%, sites and images random: over the site means, Hall's skew-corrected t interval (means) and "
            "Fieller's (fraction of the truth)" if nested else
            "95%, sites and images random: BCa shape (scipy.stats.bootstrap, sites and images resampled), "
            "width from the random-effects variance with a t quantile")
    text += "; targeted - random by MOVER"
    if n_sites < FEW_SITES:
        text += (f"; from only {n_sites} sites these can under-cover where sites differ a lot "
                 "(README, Statistics: coverage by day size)")
    return text


def predictivity_numbers(scores: dict) -> dict:
    """Median r, r / sqrt(ceiling) and r^2 / ceiling of the designing model, with definitions."""
    r, c = scores.get("cv_r"), scores.get("ceiling")
    if r is None or c is None:
        return {}
    r, c = np.asarray(r, float), np.asarray(c, float)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = {"r": np.nanmedian(r), "r / sqrt(ceiling)": np.nanmedian(brain_score_predictivity(r, c)),
                    "r^2 / ceiling": np.nanmedian(noise_ceiled_predictivity(r, c)), "ceiling": np.nanmedian(c)}
    out: dict[str, object] = {k: _f(v) for k, v in vals.items()}
    out["definitions"] = dict(PREDICTIVITY_DEFINITIONS, ceiling="split-half reliability of the recorded responses, "
                              "Spearman-Brown corrected (a ceiling for r^2)")
    if "cv_r_ungrouped" in scores:
        out["r, ungrouped shuffle splits (leaky, for reference)"] = _f(np.nanmedian(scores["cv_r_ungrouped"]))
    return out


# --------------------------------------------------------------------------- identity
def _day_identity(path: Path) -> dict | None:
    import h5py

    if not path.exists():
        return None
    with h5py.File(path, "r") as h5:
        a = h5.attrs
        ident: dict[str, str | int] = {k: str(a[k]) for k in ("identifier", "committed_trials", "completed_utc", "status") if k in a}
    ident["bytes"] = path.stat().st_size
    return ident


def analysis_identity(folder: str | Path, day: int, n_boot: int) -> dict:
    """What the analysis of ``day`` depends on, as JSON-ready values (see the module docstring)."""
    import h5py

    folder = Path(folder)
    path = day_path(folder, day)
    model: dict[str, str] = {}
    with h5py.File(path, "r") as h5:
        if "model" in h5:
            g = h5["model"].attrs
            model = {k: str(g[k]) for k in ("model_file", "model_sha256") if k in g}
    mfile = folder / model["model_file"] if model.get("model_file") else None
    size = {"bytes": mfile.stat().st_size if mfile.exists() else None} if mfile is not None else {}
    return {"analysis_version": ANALYSIS_VERSION, "n_boot": int(n_boot), "day": _day_identity(path),
            "screening_day": _day_identity(day_path(folder, 0)), "model": {**model, **size}}


def analysis_path(folder: str | Path, day: int) -> Path:
    return Path(folder) / f"day_{day:03d}.analysis.json"


def read_current(folder: str | Path, day: int, n_boot: int) -> dict | None:
    """The stored analysis of ``day`` if it is current (its identity matches now), else None."""
    p = analysis_path(folder, day)
    if not p.exists():
        return None
    try:
        stored = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("identity") != analysis_identity(folder, day, n_boot):
        return None
    return stored


# --------------------------------------------------------------------------- figure data
def curve_json(c: SensitivityCurve | None) -> dict | None:
    """The arrays a figure draws of a curve (no bootstrap replicates)."""
    if c is None:
        return None
    keys = ("epsilons", "epsilon_shown", "sites", "site_mean", "site_lo", "site_hi", "n_images", "population",
            "population_lo", "population_hi", "sigma", "epsilon_index")
    out = {k: np.asarray(getattr(c, k)).tolist() for k in keys}
    out.update(normalised=c.normalised, estimator=c.estimator, kind=c.kind, level=c.level)
    return _nan_to_none(out)


def curve_from_json(v: dict | None) -> SensitivityCurve | None:
    if not v:
        return None
    arr = {k: np.asarray(_none_to_nan(x), dtype=np.int64 if k in ("sites", "n_images", "epsilon_index") else float)
           for k, x in v.items() if isinstance(x, list)}
    return SensitivityCurve(normalised=v["normalised"], estimator=v["estimator"], kind=v["kind"], level=v["level"], **arr)


def required_curve_from_json(v: dict) -> SensitivityCurve:
    """:func:`curve_from_json` of a curve every analysis has (targeted, signed)."""
    curve = curve_from_json(v)
    if curve is None:
        raise ValueError("an analysis.json without its targeted or signed curve: re-run `itloop day analyze`")
    return curve


def site_level_json(s: SiteLevel) -> dict:
    return _nan_to_none({"sites": s.sites.tolist(), "value": np.asarray(s.value).tolist(),
                         "lo": np.asarray(s.lo).tolist(), "hi": np.asarray(s.hi).tolist(),
                         "population": est_json(s.population), "normalised": s.normalised})


def site_level_from_json(v: dict) -> SiteLevel:
    a = {k: np.asarray(_none_to_nan(v[k]), float) for k in ("value", "lo", "hi")}
    return SiteLevel(np.asarray(v["sites"], np.int64), a["value"], a["lo"], a["hi"], est_from_json(v["population"]),
                     v["normalised"])


def pvm_json(p: PredictedVsMeasured) -> dict:
    return _nan_to_none({"predicted": p.predicted.tolist(), "measured": p.measured.tolist(), "site": p.site.tolist(),
                         "epsilon": p.epsilon.tolist(), "stimulus": p.stimulus.tolist(), "r": est_json(p.r),
                         "r_by_epsilon": [[float(e), est_json(v)] for e, v in p.r_by_epsilon.items()],
                         "epsilon_index": p.epsilon_index.tolist(), "epsilons": np.asarray(p.epsilons).tolist()})


def pvm_from_json(v: dict) -> PredictedVsMeasured:
    f = {k: np.asarray(_none_to_nan(v[k]), float) for k in ("predicted", "measured", "epsilon", "epsilons")}
    return PredictedVsMeasured(f["predicted"], f["measured"], np.asarray(v["site"], np.int64), f["epsilon"],
                               np.asarray(v["stimulus"], np.int64), est_from_json(v["r"]),
                               {float(e): est_from_json(x) for e, x in v["r_by_epsilon"]},
                               np.asarray(v["epsilon_index"], np.int64), f["epsilons"])


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return float("nan") if x is None else x
