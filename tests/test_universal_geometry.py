"""Site-universal perturbations, the subspace of designs and response geometry, against known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis.geometry import (
    fit_line,
    grid_means,
    noise_free_fit,
    presentations_for_halfwidth,
)
from analysis.universal import (
    images_for_mean_change,
    participation_ratio,
    presentations_for_mean_change,
    signed_change,
)
from stimuli.geometry import (
    designed_directions,
    line_coordinates,
    orthogonal_direction,
    plane_coordinates,
    plane_stimuli,
    principal_directions,
    subspace_fractions,
)
from stimuli.objective import SiteObjective
from stimuli.params import PerturbParams
from stimuli.universal import (
    random_shared_delta,
    shared_delta_stimuli,
    solve_universal,
    universal_passes,
)
from tests.linear_model import LinearOnPixels

H = 6  # images 3 x 6 x 6


class _Quadratic(nn.Module):
    """f(x) = w . x + 0.5 (q . x)^2 (one site): curvature along unit u is (q . u)^2."""

    def __init__(self, w: torch.Tensor, q: torch.Tensor) -> None:
        super().__init__()
        self.w, self.q = w, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        return (z @ self.w + 0.5 * (z @ self.q) ** 2)[:, None]


FAST = PerturbParams(restarts=3, steps=30, prune=False, early_stop=False, max_batch_rows=64)


def _images(rng, n, saturated):
    x = rng.uniform(0.3, 0.7, (n, 3, H, H))
    x.reshape(n, -1)[:, saturated[0]] = 1.0    # pixels at the top of the box in every image
    x.reshape(n, -1)[:, saturated[1]] = 0.0    # ... and at the bottom
    return torch.from_numpy(x).float()


def test_linear_universal_optimum_is_the_clipped_mean_gradient():
    """f linear: the mean gain over images is w . delta on coordinates where every image can move
    and 0 where every image sits on the box edge it would be pushed into, so the optimum is
    e * w_free / ||w_free|| (the mean clip-masked gradient) with value e * ||w_free||."""
    rng = np.random.default_rng(0)
    d = 3 * H * H
    w = torch.from_numpy(rng.normal(0, 1, (2, d))).float()
    up = np.flatnonzero(w[0].numpy() > 0)[:10]        # w pushes these up; every image is at 1 there
    down = np.flatnonzero(w[0].numpy() < 0)[:10]      # w pushes these down; every image is at 0 there
    x = _images(rng, 5, (up, down))
    obj = SiteObjective(LinearOnPixels(w))
    e = 0.4                                            # small: no interior pixel reaches the box
    with obj.session():
        for sign in (1, -1):
            sol = solve_universal(obj, x, site=0, epsilon=e, sign=sign, params=FAST, seed=3)
            free = w[0].clone().double()
            # +1: w pushes `up` above 1 and `down` below 0 in every image; -1 moves both inward
            blocked = np.concatenate([up, down]) if sign > 0 else np.zeros(0, np.int64)
            free[blocked] = 0
            want = sign * e * free / free.norm()
            got = sol.delta.double().reshape(-1)
            assert float(got.norm()) <= e + 1e-5
            cos = float(got @ want) / (float(got.norm()) * e)
            assert cos > 0.999, cos
            assert sol.objective == pytest.approx(e * float(free.norm()), rel=2e-3)
            if len(blocked):
                assert float(got[blocked].abs().max()) < 0.02 * e
    assert sol.passes == universal_passes(5, FAST) == 3 * 30 * 5


def test_universal_matches_slow_ascent_where_the_box_binds_per_image():
    """Images whose box binds in different pixels: the objective is concave but has no closed
    form; the solver must match a slow float64 projected ascent on the same objective."""
    rng = np.random.default_rng(1)
    d = 3 * H * H
    w = torch.from_numpy(rng.normal(0, 1, (1, d))).float()
    x = torch.from_numpy(rng.choice([0.02, 0.98], size=(4, 3, H, H))).float()   # the box binds differently per image
    obj = SiteObjective(LinearOnPixels(w))
    e = 1.5
    with obj.session():
        sol = solve_universal(obj, x, 0, e, 1, PerturbParams(restarts=4, steps=60, prune=False, max_batch_rows=64), seed=0)
    # reference: the concave objective mean_j w . (clip(x_j + delta) - x_j), maximised coordinate-wise by
    # water-filling: gain per coordinate is w_p * mean_j min(max(delta_p, -x_jp), 1 - x_jp)
    xd, wd = x.double().reshape(4, -1), w[0].double()

    def value(delta):
        return float((((xd + delta).clamp(0, 1) - xd) @ wd).mean())

    assert value(sol.delta.double().reshape(-1)) == pytest.approx(sol.objective, rel=1e-4)
    g = torch.zeros(d, dtype=torch.float64)
    best = 0.0
    for _ in range(400):                       # plain projected ascent with a tiny step, float64
        inside = ((xd + g > 0) & (xd + g < 1)).double().mean(0)
        g = g + 0.01 * wd * inside
        n = float(g.norm())
        g = g * min(1.0, e / n) if n > 0 else g
        best = max(best, value(g))
    assert sol.objective >= best - 1e-3 * abs(best)


def test_random_shared_delta_and_shared_stimuli_keep_the_ball_and_box():
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    clean[0] = 255
    d = random_shared_delta((8, 8, 3), 0.7, seed=5)
    assert np.linalg.norm(d) == pytest.approx(0.7)
    assert np.array_equal(d, random_shared_delta((8, 8, 3), 0.7, seed=5))
    shown, eps = shared_delta_stimuli(clean, [0, 1, 2], d, 0.7)
    assert shown.dtype == np.uint8 and np.all(eps <= 0.7)
    assert eps[1] > 0.6 and eps[0] < eps[1]      # image 0 is white: the box eats half the delta


def test_subspace_of_designs_with_known_structure():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(50, 2)))[0].T            # a 2-d subspace of R^50
    rows = rng.normal(size=(12, 2)) @ basis
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    s, _vt = principal_directions(rows)
    assert np.sum(s > 1e-9) == 2
    assert participation_ratio(s) <= 2 + 1e-9
    frac = subspace_fractions(rows, [1, 2, 5])
    np.testing.assert_allclose(frac[:, 1], 1.0, atol=1e-9)          # every held-out design lies in the others' top-2
    assert np.all(frac[:, 0] < 1.0)
    shared = np.tile(basis[0], (6, 1))                               # one shared direction
    s1, vt1 = principal_directions(shared)
    assert participation_ratio(s1) == pytest.approx(1.0)
    assert float(vt1[0] @ basis[0]) == pytest.approx(1.0)           # sign: the way the designs point
    shown = np.full((2, 2, 2, 3), 100, np.uint8)
    parents = np.full((2, 2, 2, 3), 90, np.uint8)
    dirs = designed_directions(shown, parents, np.array([1, -1]))
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    np.testing.assert_allclose(dirs[0], -dirs[1])


def test_quadratic_response_curvature_is_recovered_on_the_plane():
    """f(x) = w . x + 0.5 (q . x)^2: along a unit u through x0 the slope is w.u + (q.x0)(q.u) and
    the curvature (q.u)^2; the fit on the shown (uint8) points recovers both."""
    rng = np.random.default_rng(4)
    side = 16
    clean = rng.integers(100, 156, (side, side, 3), dtype=np.uint8)
    n = clean.size
    w = torch.from_numpy(rng.normal(0, 0.05, n)).float()
    q = torch.from_numpy(rng.normal(0, 0.05, n)).float()
    wd, qd = w.double().numpy(), q.double().numpy()
    u_chw = wd / np.linalg.norm(wd) + qd / np.linalg.norm(qd)   # the model reads pixels in (3, H, W) order
    u = np.transpose((u_chw / np.linalg.norm(u_chw)).reshape(3, side, side), (1, 2, 0))
    v = orthogonal_direction(u, seed=1)
    assert abs(float(np.sum(u * v))) < 1e-12
    lines = np.concatenate([np.stack([line_coordinates(2.0, 4), np.zeros(8)], 1),
                            np.stack([np.zeros(8), line_coordinates(2.0, 4)], 1)])
    coords = np.concatenate([lines, plane_coordinates(2.0, 2, skip=lines)])   # the lines already hold the axis points
    shown, got, eps = plane_stimuli(clean, u, v, coords)
    assert np.all(eps <= np.hypot(coords[:, 0], coords[:, 1]) + 1e-12)
    assert np.max(np.abs(got - coords)) < 0.1    # uint8 rounding (and the box at the corners) moves points a little
    model = _Quadratic(w, q)
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([clean[None], shown])).permute(0, 3, 1, 2).float() / 255
        f = model(x)[:, 0].double().numpy()
    u_chw = np.transpose(u, (2, 0, 1)).reshape(-1)
    x0_chw = np.transpose(clean.astype(np.float64) / 255, (2, 0, 1)).reshape(-1)
    slope_true = wd @ u_chw + (qd @ x0_chw) * (qd @ u_chw)
    curv_true = (qd @ u_chw) ** 2
    on_u = np.concatenate([[True], coords[:, 1] == 0])
    t = np.concatenate([[0.0], got[:, 0]])[on_u]
    b, c = noise_free_fit(t, f[on_u])
    assert b == pytest.approx(slope_true, rel=0.01)
    assert c == pytest.approx(curv_true, rel=0.02)
    _av, _bv, grid = grid_means(np.concatenate([[[0, 0]], coords]), f)
    assert grid.shape == (9, 9) and np.isfinite(grid).sum() == 1 + 16 + 16
    full = plane_coordinates(2.0, 2)
    assert len(full) == 24 and not np.any(np.all(full == 0, axis=1))           # 5 x 5 grid without the centre


def test_fit_line_cis_cover_a_known_quadratic():
    rng = np.random.default_rng(5)
    t_lv = np.concatenate([[0.0], line_coordinates(2.0, 3)])
    covered_b = covered_c = 0
    for rep in range(40):
        t = np.repeat(t_lv, 12)
        y = 5 + 1.5 * t + 0.5 * 0.8 * t ** 2 + rng.normal(0, 1.0, len(t))
        fit = fit_line(t, y, n_boot=400, seed=rep)
        covered_b += fit.slope.lo <= 1.5 <= fit.slope.hi
        covered_c += fit.curvature.lo <= 0.8 <= fit.curvature.hi
    assert covered_b >= 34 and covered_c >= 34     # nominal 95 %: 38 of 40 expected
    r_b, r_c = presentations_for_halfwidth(t_lv, 1.0, 0.2)
    assert r_b > 0 and r_c > r_b                   # curvature needs more repeats than slope


def test_budget_formulas():
    assert presentations_for_mean_change(noise_sd=2.0, image_sd=0.0, n_images=8, halfwidth=0.5) == \
        int(np.ceil(2 * 4.0 * 1.959963984540054 ** 2 / (8 * 0.25)))
    assert presentations_for_mean_change(2.0, image_sd=3.0, n_images=4, halfwidth=0.5) is None
    assert images_for_mean_change(3.0, 0.5) == int(np.ceil((1.959963984540054 * 3 / 0.5) ** 2))
    est = signed_change(np.array([3.0, 5.0, 4.0]), np.array([1.0, 1.0, 1.0]), -1, n_boot=200)
    assert est.value == pytest.approx(-3.0) and est.lo <= -3.0 <= est.hi


def test_trial_clusters_keep_shared_gain_noise_in_the_ci():
    """Each trial shows every point of the line under one gain g ~ 1 + N(0, 0.3): the gain moves
    all points together, so only resampling whole trials gives CIs that cover the slope."""
    rng = np.random.default_rng(6)
    t_lv = np.concatenate([[0.0], line_coordinates(2.0, 3)])
    hit_cluster = hit_iid = 0
    for rep in range(40):
        trials = 16
        t = np.tile(t_lv, trials)
        trial = np.repeat(np.arange(trials), len(t_lv))
        g = 1 + rng.normal(0, 0.3, trials)[trial]
        y = g * (5 + 3.0 * t) + rng.normal(0, 0.3, len(t))
        fc = fit_line(t, y, n_boot=300, seed=rep, clusters=trial)
        fi = fit_line(t, y, n_boot=300, seed=rep)
        hit_cluster += fc.slope.lo <= 3.0 <= fc.slope.hi
        hit_iid += fi.slope.lo <= 3.0 <= fi.slope.hi
    assert hit_cluster >= 34 and hit_iid < hit_cluster
