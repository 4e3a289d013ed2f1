"""Was a unit there, at a steady rate, through the whole session? Pure functions over spike times.

Per unit, over the session ``[start_s, stop_s)``:

- ``presence_ratio``: the fraction of ``n_bins`` equal bins holding at least one spike
  (a unit lost, or found, part-way through the session scores well below 1);
- ``rate_drift``: (rate in the last third - rate in the first third) / mean rate, signed
  (+1: the rate rose by the whole mean rate between the session's start and end);
- ``drift_p``: the chance of a first-vs-last-third difference at least this large at a
  constant rate (two-sided binomial test on the two thirds' spike counts);
- ``stable``: ``presence_ratio >= min_presence`` and not (``|rate_drift| > max_drift``
  and ``drift_p < alpha``): a drift is flagged only when it is both large and beyond
  Poisson noise.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

MIN_PRESENCE = 0.9
MAX_DRIFT = 0.5
ALPHA = 0.01


def unit_stability(spike_times_s: list[np.ndarray], start_s: float, stop_s: float, n_bins: int = 20,
                   min_presence: float = MIN_PRESENCE, max_drift: float = MAX_DRIFT,
                   alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """Per unit: ``rate_hz``, ``presence_ratio``, ``rate_drift``, ``drift_p`` and ``stable`` (see the module).

    ``spike_times_s``: one array of spike times (s) per unit; spikes outside the session
    are ignored. A unit with no spike in the session: presence 0, drift NaN, unstable.
    """
    if not (np.isfinite(start_s) and np.isfinite(stop_s) and stop_s > start_s):
        raise ValueError(f"session [{start_s}, {stop_s}) s is empty")
    edges = np.linspace(start_s, stop_s, n_bins + 1)
    thirds = np.linspace(start_s, stop_s, 4)
    n = len(spike_times_s)
    rate, presence = np.zeros(n), np.zeros(n)
    drift, p = np.full(n, np.nan), np.full(n, np.nan)
    for u, t in enumerate(spike_times_s):
        t = np.asarray(t, float)
        per_bin = np.histogram(t, bins=edges)[0]
        total = int(per_bin.sum())
        rate[u] = total / (stop_s - start_s)
        presence[u] = float(np.mean(per_bin > 0))
        first, _, last = np.histogram(t, bins=thirds)[0]
        if total:
            drift[u] = (last - first) / (total / 3.0)
            p[u] = binomtest(int(last), int(first + last), 0.5).pvalue if first + last else 1.0
    with np.errstate(invalid="ignore"):
        drifting = (np.abs(drift) > max_drift) & (p < alpha)
        stable = (presence >= min_presence) & ~drifting & np.isfinite(drift)
    return {"rate_hz": rate, "presence_ratio": presence, "rate_drift": drift, "drift_p": p, "stable": stable}
