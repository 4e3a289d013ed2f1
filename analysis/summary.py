"""Markdown summary of an experiment's numbers, each with its confidence interval."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from analysis.bootstrap import Estimate
from analysis.sensitivity import SensitivityCurve


def format_value(v) -> str:
    """One number for the summary: Estimate -> 'v [lo, hi] (95% CI, n=..)', 3-tuple -> 'v [lo, hi]'."""
    if isinstance(v, Estimate):
        n = f", n = {v.n}" if v.n else ""
        if np.isfinite(v.lo) and np.isfinite(v.hi) and not v.lo <= v.value <= v.hi:
            return f"{v.value:.3g} (no interval: the bootstrap interval [{v.lo:.3g}, {v.hi:.3g}] excludes the estimate)"
        return f"{v.value:.3g} [{v.lo:.3g}, {v.hi:.3g}] ({round(100 * v.level)}% CI{n})"
    if isinstance(v, tuple) and len(v) == 3 and all(isinstance(x, (int, float, np.number)) for x in v):
        return f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    if isinstance(v, np.ndarray):
        return ", ".join(format_value(x) for x in v.ravel().tolist())
    return str(v)


def curve_numbers(curve: SensitivityCurve) -> dict[str, Estimate]:
    """Population value per epsilon as {"ε = e (shown ε̄)": Estimate}, in the curve's units."""
    return {f"ε = {e:g} (mean shown {s:.3g})": curve.population_estimate(e)
            for e, s in zip(curve.epsilons, curve.epsilon_shown)}


def summary_lines(numbers: Mapping, depth: int) -> list[str]:
    lines: list[str] = []
    flat = [(k, v) for k, v in numbers.items() if not isinstance(v, Mapping)]
    if flat:
        lines += ["| quantity | value |", "| --- | --- |"]
        def cell(x) -> str:
            return str(x).replace("|", "\\|")  # a bare pipe would split the table cell
        lines += [f"| {cell(k)} | {cell(format_value(v))} |" for k, v in flat]
        lines.append("")
    for k, v in numbers.items():
        if isinstance(v, Mapping):
            lines += [f"{'#' * min(depth, 6)} {k}", ""]
            lines += summary_lines(v, depth + 1)
    return lines


def write_summary(path, numbers: Mapping, *, title: str = "itloop experiment summary",
                  notes: Sequence[str] = (), figures: Sequence = ()) -> Path:
    """Write a markdown summary.

    numbers: {name: value}; a value is an Estimate, a (value, lo, hi) tuple, a number, a
    string, or a nested mapping (becomes a subsection). Put units in the names.
    notes: paragraphs printed under the title. figures: PNG paths, embedded with links
    relative to the summary's folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for n in notes:
        lines += [n, ""]
    lines.append("Intervals: the headline quantities (targeted - random, floor-corrected magnitudes, fractions of the "
                 "truth) have 95% intervals with sites and images random (analysis/inference.py: over the site means, "
                 "Hall's skew-corrected t interval for means and Fieller's for the fraction, in the loop's design where "
                 "each site has its own images; otherwise BCa shape, random-effects variance, t quantile); so do the "
                 "population bands of the curves and the noise floor (the random-pair baseline's: the same two-level BCa "
                 "without the variance correction, wider); a site's band is a BCa interval over its images, and "
                 "predicted-vs-measured r a BCa interval resampling clean images.")
    lines.append("")
    lines += summary_lines(numbers, 2)
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = os.path.relpath(Path(f), path.parent)
            lines += [f"![{Path(f).stem}]({rel})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
