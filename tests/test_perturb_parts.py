"""Projection, quantisation, random controls, parameters and bad inputs of the perturbation engine."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from stimuli.perturb import PerturbParams, generate_perturbations, random_controls
from stimuli.projection import L2BoxSet, project_ball_box
from stimuli.quantize import quantize_perturbation, shown_epsilon


def _brute_projection(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, r: float) -> np.ndarray:
    """Independent reference: clip(v/(1+lam)) with lam from scalar bisection in float64 (KKT)."""
    d = np.clip(v, lo, hi)
    if np.linalg.norm(d) <= r:
        return d
    a, b = 0.0, 1.0
    while np.linalg.norm(np.clip(v / (1 + b), lo, hi)) > r:
        b *= 2
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if np.linalg.norm(np.clip(v / (1 + m), lo, hi)) > r else (a, m)
    return np.clip(v / (1 + b), lo, hi)


def test_projection_is_exact_and_beats_renorm_then_clip():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 3, 5, 5))
    x[:4] = np.where(x[:4] > 0.5, 0.98, 0.02)              # the box binds hard in these rows
    v = rng.normal(0, 0.4, x.shape)
    r = rng.uniform(0.05, 3.0, 12)
    r[0] = 0.0
    got = project_ball_box(torch.from_numpy(v), torch.from_numpy(-x), torch.from_numpy(1 - x), torch.from_numpy(r)).numpy()
    worse = 0
    for k in range(12):
        want = _brute_projection(v[k], -x[k], 1 - x[k], r[k])
        np.testing.assert_allclose(got[k], want, atol=1e-9)
        assert np.linalg.norm(got[k]) <= r[k] + 1e-12
        assert np.all(x[k] + got[k] >= -1e-15) and np.all(x[k] + got[k] <= 1 + 1e-15)
        naive = np.clip(v[k] * min(1, r[k] / max(np.linalg.norm(v[k]), 1e-30)), -x[k], 1 - x[k])
        assert np.linalg.norm(v[k] - got[k]) <= np.linalg.norm(v[k] - naive) + 1e-12
        worse += np.linalg.norm(v[k] - naive) > np.linalg.norm(v[k] - got[k]) + 1e-6
    assert worse >= 3  # renorm-then-clip is really not the projection where the box binds


def test_feasible_set_verbs():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 4, 4)
    r = torch.tensor([0.0, 0.1, 0.5, 1.0, 4.0])
    box = L2BoxSet(x, r)
    start = box.random_perturb([torch.Generator().manual_seed(k) for k in range(5)])
    assert torch.all(start.flatten(1).norm(dim=1) <= r * (1 + 1e-6))
    assert float((x + start).min()) >= 0 and float((x + start).max()) <= 1
    again = box.random_perturb([torch.Generator().manual_seed(k) for k in range(5)])
    assert torch.equal(start, again)
    g = torch.randn_like(x)
    g[1] = 0
    moved = box.step(start, g, torch.full((5,), 0.3))
    step = (moved - start).flatten(1).norm(dim=1)
    torch.testing.assert_close(step[[0, 2, 3, 4]], torch.full((4,), 0.3))
    assert float(step[1]) == 0.0  # zero gradient: no move


def test_quantisation_stays_in_ball_and_box_and_keeps_most_of_the_budget():
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    clean[:4] = 255
    x = clean / 255.0
    for e in (0.01, 0.2, 1.0, 3.0):
        v = rng.normal(0, 1, clean.shape)
        d = project_ball_box(torch.from_numpy(v * 10)[None], torch.from_numpy(-x)[None], torch.from_numpy(1 - x)[None],
                             torch.tensor([e], dtype=torch.float64))[0].numpy()
        shown, eps = quantize_perturbation(clean, d, e)
        assert shown.dtype == np.uint8 and eps <= e
        assert eps == pytest.approx(shown_epsilon(clean, shown), abs=0)
        plain = np.clip(np.rint(clean + d * 255), 0, 255)
        assert np.sqrt(((plain - clean) ** 2).sum()) / 255 > e or e == 0.01  # plain rounding overshoots
        if e >= 0.2:
            assert eps > 0.9 * e
            # the shown perturbation still points where delta points
            k = shown.astype(float) - clean
            assert (k * d).sum() / (np.linalg.norm(k) * np.linalg.norm(d)) > 0.8


def test_random_controls_lie_on_the_sphere_with_bookkeeping():
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 256, (3, 12, 12, 3)).astype(np.uint8)

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.randn(2, 3 * 12 * 12, generator=torch.Generator().manual_seed(0))

        def forward(self, x):
            return x.flatten(1) @ self.w.T

    model = Lin()
    ss = random_controls(clean, [0, 2], [0.0, 0.5, 2.0], 2, seed=3, model=model, sites=[1, 0])
    assert len(ss) == 3 + 2 * 3 * 2
    ctrl = np.flatnonzero(ss.kind == "random")
    with torch.no_grad():
        f = model(torch.from_numpy(ss.pixels).permute(0, 3, 1, 2).float() / 255).double().numpy()
    for k in ctrl:
        e = ss.epsilon_requested[k]
        assert ss.epsilon_shown[k] <= e and (e == 0 or ss.epsilon_shown[k] > 0.9 * e)
        assert ss.direction[k] == 0 and ss.budget_passes[k] == 0
        assert ss.predicted_change[k] == pytest.approx(f[k, ss.site[k]] - f[ss.parent[k], ss.site[k]], abs=1e-4)
    same_draw = random_controls(clean, [0, 2], [0.0, 0.5, 2.0], 2, seed=3, sites=[1, 0])  # no model: no prediction
    assert np.array_equal(same_draw.pixels, ss.pixels) and np.all(np.isnan(same_draw.predicted_change[ctrl]))


def test_params_mirror_the_config_section():
    from rig.config import PerturbConfig

    cfg = PerturbConfig()
    p = PerturbParams(**dataclasses.asdict(cfg))
    assert PerturbParams.from_config_section(cfg) == p
    assert {f.name for f in dataclasses.fields(cfg)} <= {f.name for f in dataclasses.fields(PerturbParams)}
    with pytest.raises(ValueError, match="step_decay"):
        PerturbParams(step_decay=1.5).validated()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


GOOD = np.zeros((2, 8, 8, 3), dtype=np.uint8) + 100


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(epsilons=[-0.5]), ValueError, "epsilon -0.5 is impossible"),
    (dict(epsilons=[float("nan")]), ValueError, "epsilon nan is impossible"),
    (dict(clean=GOOD / 255.0), TypeError, "uint8.*np.round"),
    (dict(clean=GOOD.astype(np.float32) * 3 - 10), TypeError, "must lie in \\[0,1\\]"),
    (dict(clean=GOOD[..., :1]), ValueError, "shape \\(N, H, W, 3\\)"),
    (dict(problems=[(0, 4)]), ValueError, "site index 4 is out of range; the model predicts 4 sites"),
    (dict(problems=[(5, 0)]), ValueError, "clean image index 5 is out of range"),
])
def test_bad_inputs_get_one_clear_message(kwargs, error, pattern):
    args = dict(model=Tiny(), clean=GOOD, problems=[(0, 1)], epsilons=[0.5])
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        generate_perturbations(params=PerturbParams(restarts=1, steps=2), **args)


def test_a_model_without_gradient_is_refused():
    class Detached(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                return x.mean((2, 3))

    with pytest.raises(ValueError, match="no gradient"):
        generate_perturbations(Detached(), GOOD, [(0, 1)], [0.5], PerturbParams(restarts=1, steps=2))


def test_model_state_is_restored():
    m = Tiny()
    m.train()
    generate_perturbations(m, GOOD, [(0, 1)], [0.5], PerturbParams(restarts=2, steps=3))
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_a_single_problem_on_a_late_image_is_generated():
    """Parents index the clean set: one problem on image 5 of 6 gives 6 clean + 2 targeted (+ its random controls)."""
    import torch

    from stimuli.perturb import PerturbParams, generate_perturbations

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    clean = np.random.default_rng(0).integers(40, 200, (6, 8, 8, 3), dtype=np.uint8)
    out = generate_perturbations(lin, clean, [(5, 0)], [0.5], PerturbParams(restarts=2, steps=3), seed=0)
    targeted = out.kind == "targeted"
    assert (out.kind == "clean").sum() == 6 and targeted.sum() == 2
    assert (out.parent[out.kind != "clean"] == 5).all() and (out.parent[out.kind == "clean"] == -1).all()


def test_engine_uint8_to_float_is_the_shared_conversion():
    """The engine converts on the device (uint8 travels first) but with the same arithmetic as
    modelfit.features.images_to_tensor: float32(pixel) / 255, (N, 3, H, W), bit for bit."""
    from modelfit.features import images_to_tensor
    from stimuli import perturb, shards

    px = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    px[0, 0, 0] = (0, 255, 128)
    ref = images_to_tensor(px)
    assert ref.dtype == torch.float32 and ref.shape == (3, 3, 5, 7) and float(ref.max()) <= 1.0
    for conv in (perturb._to_float, shards._to_float):
        assert torch.equal(conv(px, "cpu"), ref)
