"""Engine modes (precision, memory format, compilation, batch from memory) against known answers.

The scripted objective is linear but runs through a convolution (a full-image kernel), so the
memory format and the network's dtype really matter: ``f(x) = R (conv(x)) + b`` is
``w_eff . x + b`` with ``w_eff = R W`` and a known optimum over ball ∩ box
(:func:`tests.test_perturb_engine.linear_optimum`). Every mode's deltas are re-scored in float64
with ``w_eff`` and must reach the fp32 engine's mean objective within 1 % (issue 21), and stay
feasible before and after uint8 quantisation.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from stimuli.modes import EngineMode, fitting_batch_rows, resolve_mode
from stimuli.objective import SiteObjective
from stimuli.perturb import PerturbParams, generate_perturbations, prepare_engine, solve
from stimuli.quantize import shown_epsilon
from tests.test_perturb_engine import linear_optimum

H = 8
N_SITES = 3


class ConvLinear(nn.Module):
    """A linear map through a convolution: backbone = full-image conv + flatten (D features),
    readout ``(S, D)`` (the split fast path)."""

    def __init__(self, d: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(3, d, H, bias=True), nn.Flatten())
        with torch.no_grad():
            self.backbone[0].weight.copy_(torch.randn(d, 3, H, H, generator=g))
            self.backbone[0].bias.copy_(torch.randn(d, generator=g))
        self.readout_weight = torch.randn(N_SITES, d, generator=g) / d ** 0.5
        self.readout_bias = torch.randn(N_SITES, generator=g)

    def w_eff(self) -> np.ndarray:
        """(S, 3*H*H) float64: f(x) = w_eff . flatten(x) + const."""
        w = self.backbone[0].weight.detach().double().reshape(self.backbone[0].weight.shape[0], -1)
        return (self.readout_weight.double() @ w).numpy()

    def forward(self, x):
        return self.backbone(x) @ self.readout_weight.T + self.readout_bias


def _clean(n: int, seed: int) -> np.ndarray:
    c = np.random.default_rng(seed).integers(0, 256, (n, H, H, 3)).astype(np.uint8)
    c[-1] = np.where(c[-1] > 128, 250, 5).astype(np.uint8)   # the box binds early here
    return c


def _problems(n_img: int):
    img, site, e, s = [], [], [], []
    for i in range(n_img):
        for j in range(N_SITES):
            for ee in (0.3, 1.5):
                for sg in (1, -1):
                    img.append(i)
                    site.append(j)
                    e.append(ee)
                    s.append(sg)
    return img, site, e, s


PARAMS = {"restarts": 3, "steps": 40, "prune": False, "early_stop": False, "max_batch_rows": 16,
          "step_growth": 1.25, "random_controls_per_image": 0}


def _solve(model, clean, mode: dict):
    x = torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255
    img, site, e, s = _problems(len(clean))
    obj, params = prepare_engine(model, x, PerturbParams(**PARAMS, **mode))
    with obj.session():
        sols = solve(obj, x, img, site, e, s, params, seed=1)
    return x, (img, site, e, s), sols


def _rescored(model: ConvLinear, x, prob, sols) -> np.ndarray:
    """s * (f(x + delta) - f(x)) in float64 from the exact linear map."""
    w = model.w_eff()
    _, site, _, sign = prob
    d = np.stack([so.delta.double().reshape(-1).numpy() for so in sols])
    return np.asarray(sign) * np.einsum("kp,kp->k", w[np.asarray(site)], d)


MODES = [{"precision": "fp32", "memory_format": "channels_last"},
         {"precision": "tf32", "memory_format": "contiguous"},
         {"precision": "bf16", "memory_format": "contiguous"},
         {"precision": "bf16", "memory_format": "channels_last"}]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m['precision']}-{m['memory_format']}")
def test_every_mode_reaches_the_fp32_answer_and_stays_feasible(mode):
    model = ConvLinear()
    clean = _clean(3, seed=4)
    x, prob, ref = _solve(model, clean, {})
    _, _, got = _solve(model, clean, mode)
    want = _rescored(model, x, prob, ref)
    have = _rescored(model, x, prob, got)
    img, _, eps, _ = prob
    w = model.w_eff()
    optimum = np.array([linear_optimum(sg * w[j], x[i].numpy(), e) for i, j, e, sg in zip(*prob)])
    assert want.mean() == pytest.approx(optimum.mean(), rel=1e-3)            # the fp32 engine finds the optimum
    assert abs(have.mean() - want.mean()) <= 0.01 * abs(want.mean())          # every mode within 1 % of fp32
    for so, i, e in zip(got, img, eps):                                       # feasible before quantisation
        d = so.delta.double()
        assert float(d.norm()) <= e * (1 + 1e-6)
        xi = x[i].double()
        assert float((xi + d).min()) >= -1e-6 and float((xi + d).max()) <= 1 + 1e-6


@pytest.mark.parametrize("mode", MODES[2:], ids=lambda m: f"{m['precision']}-{m['memory_format']}")
def test_fast_modes_stay_feasible_after_quantisation(mode):
    model = ConvLinear()
    clean = _clean(3, seed=5)
    params = PerturbParams(**{**PARAMS, "steps": 12, "random_controls_per_image": 1}, **mode)
    ss = generate_perturbations(model, clean, [(0, 0), (2, 1)], [0.3, 1.5], params, seed=2)
    ref = generate_perturbations(model, clean, [(0, 0), (2, 1)], [0.3, 1.5], PerturbParams(**{
        **PARAMS, "steps": 12, "random_controls_per_image": 1}), seed=2)
    for k in np.flatnonzero(~ss.is_clean):
        e = shown_epsilon(clean[ss.parent[k]], ss.pixels[k])
        assert e == pytest.approx(ss.epsilon_shown[k], abs=1e-12) and e <= ss.epsilon_requested[k]
    t = ss.kind == "targeted"
    # predictions are made in fp32 whatever the mode: the targeted change has the asked sign
    assert np.all(np.sign(ss.predicted_change[t]) == ss.direction[t])
    mean_fast = np.mean(ss.direction[t] * ss.predicted_change[t])
    mean_ref = np.mean(ref.direction[t] * ref.predicted_change[t])
    assert abs(mean_fast - mean_ref) <= 0.01 * abs(mean_ref)
    # the controls do not depend on the mode
    assert np.array_equal(ss.pixels[ss.kind == "random"], ref.pixels[ref.kind == "random"])


def test_auto_resolves_per_device_and_the_plain_mode_is_the_default():
    p = PerturbParams()
    assert EngineMode.of(p).plain and p.resolved
    cuda = resolve_mode(PerturbParams(precision="auto", memory_format="auto", compile="auto"), "cuda")
    assert (cuda.precision, cuda.memory_format, cuda.compile) == ("bf16", "channels_last", "on")
    cpu = resolve_mode(PerturbParams(precision="auto", memory_format="auto", compile="auto"), "cpu")
    assert cpu.compile == "off"                       # compiled, the engine was no faster on CPU
    assert resolve_mode(PerturbParams(compile="auto"), "cpu", uncompiled_seconds=3600).compile == "off"
    assert resolve_mode(PerturbParams(compile="auto"), "cuda", uncompiled_seconds=3600).compile == "on"
    assert resolve_mode(PerturbParams(compile="auto"), "cuda", uncompiled_seconds=30).compile == "off"   # too short
    with pytest.raises(ValueError, match="precision"):
        PerturbParams(precision="fp16").validated()
    with pytest.raises(ValueError, match="max_batch_rows"):
        PerturbParams(max_batch_rows=-1).validated()


def test_max_batch_rows_zero_picks_a_batch_that_runs():
    model = ConvLinear()
    clean = _clean(2, seed=6)
    x = torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255
    obj, params = prepare_engine(model, x, PerturbParams(max_batch_rows=0, restarts=2, steps=4, prune=False,
                                                                 early_stop=False))
    assert 1 <= params.max_batch_rows <= 256 and params.resolved
    with obj.session():   # measured once per process: the same answer again
        assert fitting_batch_rows(SiteObjective(model), x) == params.max_batch_rows
        sols = solve(obj, x, [0, 1], [0, 2], [0.5, 0.5], [1, -1], params)
    assert all(so.passes == 2 * 4 for so in sols)
    same = solve(SiteObjective(model), x, [0, 1], [0, 2], [0.5, 0.5], [1, -1],
                 dataclasses.replace(params, max_batch_rows=3))
    for a, b in zip(sols, same):   # batching does not change answers
        assert torch.equal(a.delta, b.delta)


@pytest.mark.slow
def test_compiled_engine_gives_the_fp32_answer():
    """torch.compile of a tiny network (CPU inductor: tens of seconds on 2 shared cores)."""
    pytest.importorskip("torch._inductor")
    model = ConvLinear()
    clean = _clean(2, seed=7)
    x, prob, ref = _solve(model, clean, {})
    _, _, got = _solve(model, clean, {"compile": "on"})
    want, have = _rescored(model, x, prob, ref), _rescored(model, x, prob, got)
    assert abs(have.mean() - want.mean()) <= 0.01 * abs(want.mean())


def test_the_accelerator_branches_without_host_reads_give_the_same_bits(monkeypatch):
    """On an accelerator the engine skips host reads it can do without (the projection's
    fixed-point test, counting progressed rows), reads the bookkeeping every 4 passes and
    quantises in threads beside the search: forced here on CPU, every bit is the same (this
    model's rows do not depend on the batch they are in)."""
    from stimuli import perturb, projection

    model = ConvLinear()
    clean = _clean(3, seed=8)
    params = {**PARAMS, "restarts": 4, "steps": 16, "prune": True, "prune_keep_fraction": 0.5, "early_stop": True,
              "early_stop_patience": 2, "early_stop_tolerance": 1e-2}
    want = generate_perturbations(model, clean, [(0, 0), (2, 1)], [0.3, 1.5], PerturbParams(**params), seed=3)
    monkeypatch.setattr(projection, "host_syncs_are_free", lambda t: False)
    monkeypatch.setattr(perturb, "host_syncs_are_free", lambda t: False)
    got = generate_perturbations(model, clean, [(0, 0), (2, 1)], [0.3, 1.5], PerturbParams(**params), seed=3)
    assert np.array_equal(want.pixels, got.pixels)
    for c in want.COLUMNS:
        assert np.array_equal(getattr(want, c), getattr(got, c), equal_nan=c == "predicted_change"), c


@pytest.mark.parametrize("every", [2, 5])
def test_reading_the_bookkeeping_every_k_passes_gives_the_same_bits(monkeypatch, every):
    """On an accelerator the host reads the batch's done and parked rows every k passes (they
    are frozen in between); with a row-separable model (no float op mixes rows, so batch
    composition cannot matter) every stimulus and pass count is the same as reading every pass,
    with pruning (3 rounds) and early stopping on."""
    from stimuli import perturb
    from tests.separable import SeparableModel

    model = SeparableModel(3, 3 * H * H, seed=1)
    clean = _clean(4, seed=9)
    params = PerturbParams(restarts=8, steps=20, prune=True, prune_rounds=3, prune_keep_fraction=0.5,
                           prune_after_fraction=0.1, early_stop=True, early_stop_patience=2,
                           early_stop_tolerance=1e-3, max_batch_rows=12, random_controls_per_image=0)
    problems = [(0, 0), (1, 2), (3, 1), (2, 0)]
    want = generate_perturbations(model, clean, problems, [0.3, 1.5], params, seed=5)
    monkeypatch.setattr(perturb, "_read_every", lambda clean: every)
    got = generate_perturbations(model, clean, problems, [0.3, 1.5], params, seed=5)
    assert np.array_equal(want.pixels, got.pixels)
    for c in want.COLUMNS:
        assert np.array_equal(getattr(want, c), getattr(got, c), equal_nan=c == "predicted_change"), c
    assert want.budget_passes.sum() < len(problems) * 2 * 2 * 8 * 20   # pruning and early stopping really acted
