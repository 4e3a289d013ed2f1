"""Synthetic stimulus sets with known ground truth for the analysis tests (numpy only)."""
from __future__ import annotations

import numpy as np


def provenance(rows: list[dict], epsilons) -> dict[str, np.ndarray]:
    """Provenance columns (as in stimuli.stimset.StimulusSet) from a list of row dicts; a
    perturbed row names its planned epsilon by ``ei``, its row of ``epsilons`` (the grid)."""
    return {"epsilons": np.asarray(epsilons, dtype=float),
            "epsilon_index": np.array([r.get("ei", -1) for r in rows], dtype=np.int64),
            "kind": np.array([r["kind"] for r in rows], dtype=object),
            "parent": np.array([r["parent"] for r in rows], dtype=np.int64),
            "site": np.array([r["site"] for r in rows], dtype=np.int64),
            "epsilon_requested": np.array([r["eps"] for r in rows], dtype=float),
            "epsilon_shown": np.array([r["eps"] * 0.995 for r in rows], dtype=float),
            "direction": np.array([r["dir"] for r in rows], dtype=np.int64),
            "predicted_change": np.array([r["pred"] for r in rows], dtype=float)}


def closed_loop_day(n_sites=4, n_images=30, epsilons=(0.5, 1.0, 2.0), n_channels=None, gain=1.0,
                    model_gain=1.5, seed=0):
    """A day: per site ``n_images`` clean images, targeted +/- stimuli at each epsilon and one
    random-direction control (site -1) per image and epsilon.

    True rates (spikes per window): clean ~ U(2, 8); a targeted stimulus moves its site by
    ``direction * gain * eps`` (floored at 0.05) and no other channel; random controls move nothing.
    Returns (prov, rates (n_stimuli, n_channels), model_predictions (n_stimuli, n_channels)).
    """
    rng = np.random.default_rng(seed)
    n_channels = n_channels or n_sites
    rows, rates = [], []
    for s in range(n_sites):
        for _ in range(n_images):
            base = rng.uniform(2, 8, size=n_channels)
            p = len(rows)
            rows.append(dict(kind="clean", parent=-1, site=-1, eps=0.0, dir=0, pred=np.nan))
            rates.append(base)
            for ei, e in enumerate(epsilons):
                for d in (1, -1):
                    r = base.copy()
                    r[s] = max(r[s] + d * gain * e, 0.05)
                    rows.append(dict(kind="targeted", parent=p, site=s, eps=e, ei=ei, dir=d, pred=d * model_gain * e))
                    rates.append(r)
                rows.append(dict(kind="random", parent=p, site=-1, eps=e, ei=ei, dir=0, pred=np.nan))
                rates.append(base.copy())
    prov = provenance(rows, epsilons)
    rates = np.array(rates)
    model = rates.copy()
    tgt = prov["kind"] == "targeted"
    model[tgt, prov["site"][tgt]] = model[prov["parent"][tgt], prov["site"][tgt]] + prov["predicted_change"][tgt]
    return prov, rates, model


def poisson_repeats(rates: np.ndarray, n_repeats: int, seed: int = 0, missing: float = 0.0) -> np.ndarray:
    """(n_repeats, n_stimuli, n_channels) Poisson spike counts; a fraction ``missing`` of
    presentations (all channels) set to NaN, keeping at least 2 per stimulus."""
    rng = np.random.default_rng(seed)
    reps = rng.poisson(np.broadcast_to(rates, (n_repeats,) + rates.shape)).astype(float)
    if missing:
        drop = rng.random(reps.shape[:2]) < missing
        drop[:2] = False
        reps[drop] = np.nan
    return reps


def example_images(k=3, size=64, seed=0):
    """k smooth synthetic RGB images (uint8) and small structured perturbations of them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clean, pert = [], []
    for i in range(k):
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx * (i + 1) + c / 3) + yy * 3) for c in range(3)], -1)
        blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.02)[..., None] * rng.uniform(-0.3, 0.3, 3)
        c8 = np.clip((img + blob) * 255, 0, 255).astype(np.uint8)
        delta = 0.03 * np.sign(np.sin(20 * xx + 13 * yy * (i + 1)))[..., None] * np.array([1, -0.5, 0.3])
        clean.append(c8)
        pert.append(np.clip(c8 / 255 + delta, 0, 1).__mul__(255).round().astype(np.uint8))
    return np.array(clean), np.array(pert)


def test_synthetic_provenance_is_a_valid_stimulus_set_and_analysis_accepts_it():
    """The synthetic columns are exactly StimulusSet's, so analysis runs on a real StimulusSet."""
    from analysis.sensitivity import sensitivity_curve
    from stimuli.stimset import StimulusSet

    prov, rates, _ = closed_loop_day(n_sites=2, n_images=4, epsilons=(1.0,))
    cols = {k: v for k, v in prov.items()}
    sset = StimulusSet(np.zeros((len(rates), 2, 2, 3), np.uint8), **cols)
    assert set(cols) == set(StimulusSet.COLUMNS) - {"budget_passes"} | {"epsilons"}
    a = sensitivity_curve(rates, sset, normalise=False, n_boot=50)
    b = sensitivity_curve(rates, prov, normalise=False, n_boot=50)
    np.testing.assert_allclose(a.population, b.population)
    np.testing.assert_allclose(a.population, [1.0])  # noise-free: |gain * eps| = 1 spike
