"""The plan step's issue-23 stimuli: what each stimulus is, through a real plan file, and the budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rig.config import config_from_dict
from rig.errors import UserError
from rig.session.schedule import Schedule
from rig.steps.beyond import add_beyond_stimuli
from rig.steps.presentations import check_presentations, noise_sd
from rig.store.dayfile import write_plan
from rig.store.reader import read_day
from stimuli.perturb import PerturbParams, generate_perturbations
from tests.linear_model import LinearOnPixels

SIDE = 8


@pytest.fixture(scope="module")
def planned():
    rng = np.random.default_rng(0)
    pool = rng.integers(70, 186, (14, SIDE, SIDE, 3), dtype=np.uint8)   # interior pixels: little clipping
    model = LinearOnPixels(torch.from_numpy(rng.normal(0, 0.1, (3, 3 * SIDE * SIDE))).float())
    chosen = np.array([[0, 1, 2], [3, 4, 5]])                             # 2 target sites x 3 images
    problems = [(int(chosen[k, j]), int(site)) for k, site in enumerate((0, 2)) for j in range(3)]
    params = PerturbParams(restarts=2, steps=12, max_batch_rows=32)
    base = generate_perturbations(model, pool[:6], problems, [0.5, 1.0], params, seed=1)
    cfg = config_from_dict({"experiment": {"epsilons": [0.5, 1.0]},
                            "universal": {"enabled": True, "heldout_images": 2, "subspace_images": 1, "restarts": 2,
                                          "steps": 12, "subspace_k": [1, 2]},
                            "geometry": {"enabled": True, "steps_per_side": 2, "plane": True, "plane_steps_per_side": 1}})
    out, info = add_beyond_stimuli(cfg, base, model, chosen, np.array([0, 2]), pool, np.arange(6), params, seed=3)
    return cfg, base, out, info


def test_universal_subspace_and_line_stimuli_say_what_they_are(planned):
    _cfg, base, out, info = planned
    k = out.kind
    n_eps, n_sites = 2, 2
    assert len(out) > len(base) and np.array_equal(out.pixels[:len(base)], base.pixels)
    # one universal delta per (site, eps, direction), on 3 design + 2 held-out images
    assert (k == "universal").sum() == n_sites * n_eps * 2 * (3 + 2)
    assert (k == "universal_random").sum() == n_sites * n_eps * 1 * 2
    assert (k == "subspace").sum() == n_sites * n_eps * 2 * 1
    assert (k == "clean").sum() == 6 + n_sites * (2 + 1)                  # held-out and subspace images appended
    new = np.arange(len(base), len(out))
    assert np.all(k[out.parent[new[k[new] != "clean"]]] == "clean")
    derived = new[k[new] != "clean"]
    assert np.all(out.epsilon_shown[derived] <= out.epsilon_requested[derived] + 1e-12)
    for s in info["shared"]:
        rows = np.flatnonzero(out.shared_delta == s["id"])
        assert np.all(out.kind[rows] == s["kind"]) and np.all(out.site[rows] == s["site"])
        if s["kind"] == "universal":
            assert set(out.parent[rows[out.design_role[rows] == 1]]) == set(s["design"])
            assert set(out.parent[rows[out.design_role[rows] == 2]]) == set(s["heldout"])
            # a linear model: the mean predicted change on the design images is the solver's objective
            # (up to uint8 rounding), and held-out images move the same way
            d = rows[out.design_role[rows] == 1]
            assert s["direction"] * out.predicted_change[d].mean() == pytest.approx(s["objective"], rel=0.05)
            h = rows[out.design_role[rows] == 2]
            assert np.all(s["direction"] * out.predicted_change[h] > 0)
    held = {p for s in info["shared"] for p in s["heldout"]}
    assert not held & set(range(6))                                       # never a design image
    lines = np.flatnonzero(k == "line")
    assert len(info["lines"]) == n_sites and len(lines) == n_sites * (4 + 4 + 4)
    assert np.all(np.isfinite(out.coord_u[lines])) and np.all(out.epsilon_index[lines] == -1)
    u_line = lines[np.abs(out.coord_v[lines]) < 0.05]
    assert np.allclose(np.sort(np.unique(np.round(np.abs(out.coord_u[u_line]), 1))), [0.5, 1.0])
    sub = info["subspace"][0]
    assert len(sub["singular_values"]) == 3 and len(sub["heldout_fraction"]) == 2


def test_geometry_columns_round_trip_through_a_plan_file(planned, tmp_path):
    cfg, _, out, _ = planned
    sched = Schedule(np.arange(len(out)), 5, 0.2)
    path = write_plan(tmp_path / "day_001.plan.h5", cfg.to_toml(), 1, out, sched, attrs={"beyond_json": "{}"})
    back = read_day(path).stimuli
    for c in out.COLUMNS + out.GEOMETRY_COLUMNS:
        a, b = getattr(out, c), getattr(back, c)
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])
        else:
            assert list(a) == list(b), c


def test_a_plan_over_the_presentation_budget_is_refused_with_the_numbers(planned):
    _, _, out, _ = planned
    cfg = config_from_dict({"schedule": {"repeats": 4}, "budget": {"max_presentations": 100}})
    with pytest.raises(UserError, match=r"x schedule.repeats = 4 = [\d,]+ presentations \(clean \d+.*universal \d+") as e:
        check_presentations(cfg, out)
    assert "budget.max_presentations = 100" in str(e.value)
    ok = config_from_dict({"schedule": {"repeats": 4}, "budget": {"max_presentations": 4 * len(out)}})
    assert check_presentations(ok, out) == 4 * len(out)


def test_noise_sd_is_the_pooled_within_stimulus_sd():
    rng = np.random.default_rng(1)
    stim = np.repeat(np.arange(200), 10)
    counts = rng.normal(0, 2.0, (len(stim), 3)) + rng.normal(0, 5, (200, 3))[stim]
    valid = np.ones(len(stim), bool)
    assert noise_sd(counts, stim, valid, np.array([0, 2])) == pytest.approx(2.0, rel=0.05)


class _FakeDay:
    """The parts of a DayData that line_table reads: stimuli, presentations and counts
    (``reps`` (repeats, stimuli, channels): every presentation its own trial)."""

    def __init__(self, stimuli, reps):
        r, n, c = reps.shape
        self.stimuli = stimuli
        self.presentations = {"stim_index": np.tile(np.arange(n), r), "trial_index": np.arange(r * n),
                              "valid": np.ones(r * n, bool)}
        self.counts = reps.reshape(r * n, c)


@pytest.mark.parametrize("shape", ["linear", "saturating"])
def test_line_fits_cover_the_truth_of_a_linear_and_a_saturating_site(shape):
    """Responses r(t) = g(t) + Poisson noise on lines through 12 images; the IT fits' 95% CIs must
    contain the noise-free fit of g on the same points (the truth) about 95% of the time (12 lines)."""
    from rig.report.beyond import coverage, line_table
    from stimuli.stimset import StimulusSet

    rng = np.random.default_rng(7 if shape == "linear" else 8)
    t_line = np.array([-2, -4 / 3, -2 / 3, 2 / 3, 4 / 3, 2.0])
    n_lines, reps = 12, 16
    kinds, parents, coords, sd = [], [], [], []
    for _ in range(n_lines):
        kinds.append("clean")
        parents.append(-1)
        coords.append((np.nan, np.nan))
        sd.append(-1)
    for k in range(n_lines):
        for axis in (0, 1):
            for t in t_line:
                kinds.append("line")
                parents.append(k)
                coords.append((t, 0.0) if axis == 0 else (0.0, t))
                sd.append(k)
    coords = np.array(coords)
    n = len(kinds)
    st = StimulusSet(np.zeros((n, 2, 2, 3), np.uint8), kind=np.array(kinds, dtype=object), parent=parents,
                     site=np.where(np.array(parents) >= 0, 0, -1), shared_delta=sd, coord_u=coords[:, 0],
                     coord_v=coords[:, 1])
    tu = np.nan_to_num(coords[:, 0])
    tv = np.nan_to_num(coords[:, 1])
    image = np.where(np.array(parents) >= 0, parents, np.arange(n))
    base = 8 + 0.1 * image                     # each image its own clean response
    if shape == "linear":                      # built to be linear: zero curvature along both directions
        truth = base + 1.5 * tu + 0.2 * tv
    else:                                      # built to saturate: a sigmoid of the drive along u
        truth = 2 + 30 / (1 + np.exp(-(1.6 * tu - 0.5))) + 0.3 * tv
    counts = rng.poisson(np.broadcast_to(truth, (reps, n))).astype(np.float32)[..., None]
    info = {"lines": [{"id": k, "t_max": 2.0, "steps_per_side": 3, "plane_steps_per_side": 1} for k in range(n_lines)]}
    rows = line_table(_FakeDay(st, counts), info, {"it": counts.mean(0), "truth": truth[:, None]}, seed=0)
    cov = coverage(rows)
    for what in ("slope", "curvature"):
        inside, total = cov[what]
        assert total == 2 * n_lines and inside >= total - 4, (what, cov)   # 95 % nominal: ~1 miss in 24
    if shape == "linear":
        assert all(abs(r["truth_u"][1]) < 1e-9 and abs(r["truth_v"][1]) < 1e-9 for r in rows)
    else:
        assert all(abs(r["truth_u"][1]) > 1.0 for r in rows)                 # the sigmoid bends the designed line


def test_universal_problems_that_cannot_end_in_time_are_refused(planned):
    from rig.steps.beyond import _check_universal_deadline

    _, base, _, _ = planned
    rng = np.random.default_rng(0)
    model = LinearOnPixels(torch.from_numpy(rng.normal(0, 0.1, (3, 3 * SIDE * SIDE))).float())
    params = PerturbParams(restarts=2, steps=12, max_batch_rows=32)
    said = []
    cfg = config_from_dict({"experiment": {"epsilons": [0.5, 1.0]}, "universal": {"enabled": True},
                            "compute": {"max_hours": 1e-9}})
    with pytest.raises(UserError, match=r"refusing to generate: [\d,]+ passes"):
        _check_universal_deadline(cfg, model, base, np.array([0, 2]), params, 3, said.append)
    assert any("universal cost: 8 problems" in s for s in said)
    cfg = config_from_dict({"experiment": {"epsilons": [0.5, 1.0]}, "universal": {"enabled": True},
                            "compute": {"max_hours": 100.0}})
    _check_universal_deadline(cfg, model, base, np.array([0, 2]), params, 3, said.append)


def test_whitebox_universal_doubles_its_budget_and_reports_convergence():
    from rig.report.beyond import _best_universal
    from stimuli.objective import SiteObjective

    rng = np.random.default_rng(2)
    w = torch.from_numpy(rng.normal(0, 0.1, (2, 3 * SIDE * SIDE))).float()
    x = torch.from_numpy(rng.uniform(0.3, 0.7, (3, 3, SIDE, SIDE))).float()
    obj = SiteObjective(LinearOnPixels(w), use_split=False)          # the generic path, as on the true counts
    with obj.session():
        sol, change = _best_universal(obj, x, 1, 0.5, -1, PerturbParams(restarts=2, steps=10, prune=False), seed=0)
    assert sol.objective == pytest.approx(0.5 * float(w[1].norm()), rel=1e-3)   # a linear site's optimum
    assert 0 <= change < 0.02                                                    # converged on doubling


def test_expected_stimuli_match_the_plan_and_refuse_before_any_compute(planned):
    from rig.steps.presentations import check_expected_presentations, expected_stimuli

    cfg, _, out, _ = planned
    cfg = config_from_dict({**{k: v for k, v in cfg.to_dict().items() if k in ("experiment", "universal", "geometry")},
                            "experiment": {"epsilons": [0.5, 1.0], "images_per_site": 3}})
    want = expected_stimuli(cfg, n_clean=6, n_sites=2)
    kinds, counts = np.unique(np.asarray(out.kind, str), return_counts=True)
    assert want == dict(zip(kinds.tolist(), counts.tolist()))
    small = config_from_dict({**{k: v for k, v in cfg.to_dict().items() if k in ("experiment", "universal", "geometry")},
                              "budget": {"max_presentations": 10 * len(out) - 1}, "schedule": {"repeats": 10}})
    with pytest.raises(UserError, match=rf"{len(out)} stimuli x schedule.repeats = 10 = {10 * len(out):,} presentations"):
        check_expected_presentations(small, 6, 2)
