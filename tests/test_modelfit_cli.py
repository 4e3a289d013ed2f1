"""`itloop model fit/score/convert` on simulated recording days (sim monkey -> session -> day files)."""
import argparse
import json

import numpy as np
import pytest
import torch

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor
from modelfit.store import load_fitted
from rig.backend import SessionInfo
from rig.cli import model as cli_model
from rig.config import load_config
from rig.errors import UserError
from rig.paths import day_path, model_path
from rig.session.runner import run_session
from rig.session.schedule import build_schedule
from rig.steps import fit as fitting
from rig.store.dayfile import DayWriter
from sim.backend import SimBackend
from sim.monkey import SimParams, SimulatedMonkey
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet

N_CH = 6


def _record(folder, day, cfg, pixels, repeats, monkey, window_ms=(70.0, 170.0)):
    ss = StimulusSet(pixels)
    sch = build_schedule(ss.parent, repeats, 8, day, 0.3)
    w = DayWriter.create(day_path(folder, day), config_text=cfg.to_toml(), day=day, session_id=f"t{day}", stimuli=ss,
                         schedule_stim_index=sch.stim_index, presentations_per_trial=8, seconds_per_presentation=0.3,
                         channel_names=[f"ch{i}" for i in range(N_CH)], backend="sim", window_ms=window_ms)
    with w:
        run_session(SimBackend(monkey), w, ss, sch, SessionInfo(f"t{day}", day, seed=day), window_ms)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    cfg = load_config(None, overrides={
        "model": {"backbone": "tiny", "layer": "layer4"}, "images": {"size_px": 64},
        "readout": {"score_splits": 4, "alphas": [1.0, 10.0, 100.0, 1000.0, 1e4]},
        "screening": {"reliability_threshold": 0.3}})
    # a monkey whose sites are half linear in the tiny network's features
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, linear_fraction=0.8, model_alignment=1.0,  # truth in the model span
                                       fixation_break_prob=0.1, seed=7),
                             model_features=build_backbone("tiny", "layer4"), n_reference_images=64)
    clean = builtin_images(200, 64, 0)
    _record(folder, 0, cfg, clean, 3, monkey)
    new = builtin_images(20, 64, 99)
    _record(folder, 1, cfg, np.concatenate([new, clean[:10]]), 2, monkey)  # 10 images shown again
    return folder, cfg, clean, new


def test_pool_days_merges_images_across_days(experiment):
    folder, _cfg, clean, new = experiment
    pooled = fitting.pool_days(folder, 1)
    assert len(pooled.ids) == 220 and pooled.first_day.tolist() == [0] * 200 + [1] * 20
    np.testing.assert_array_equal(pooled.pixels[:200], clean)
    np.testing.assert_array_equal(pooled.pixels[200:], new)
    n_valid = np.isfinite(pooled.reps[:, :, 0]).sum(0)
    assert np.all(n_valid[:10] == 5) and np.all(n_valid[10:200] == 3) and np.all(n_valid[200:] == 2)
    assert np.isfinite(pooled.screening_reps[:, :200]).all() and np.isnan(pooled.screening_reps[:, 200:]).all()


def test_pooling_refuses_days_counted_in_different_windows(experiment, tmp_path):
    folder, cfg, _clean, new = experiment
    import shutil

    shutil.copy(day_path(folder, 0), day_path(tmp_path, 0))
    monkey = SimulatedMonkey(SimParams(n_channels=N_CH, seed=7), n_reference_images=16)
    _record(tmp_path, 1, cfg, new[:4], 1, monkey, window_ms=(50.0, 150.0))
    with pytest.raises(UserError, match="50-150 ms but day 0 in 70-170 ms"):
        fitting.pool_days(tmp_path, 1)


def test_fit_on_sim_days_gives_positive_predictivity(experiment):
    folder, cfg, *_ = experiment
    res = fitting.fit_days(cfg, folder, 1)
    assert res.path == model_path(folder, 1) and len(res.site_channels) >= 3
    cv_r = res.scores["cv_r"]
    assert np.all(cv_r > 0.1) and np.median(cv_r) > 0.25
    nc = res.scores["noise_ceiled"]
    assert np.all(np.isfinite(nc)) and np.all(nc > 0)
    m = load_fitted(res.path)
    assert m.random_init and m.info["through_day"] == 1 and m.info["n_images"] == 220
    np.testing.assert_array_equal(m.site_channels, res.site_channels)
    # the stored model's torch module reproduces its predictions; features came from the cache
    px = fitting.pool_days(folder, 1).pixels[:8]
    fx = FeatureExtractor(build_backbone("tiny"), cache_dir=folder / cfg.paths.feature_cache)
    feats = fx.transform(px)
    assert fx.hits == 8
    with torch.no_grad():
        out = m.module()(torch.from_numpy(px).permute(0, 3, 1, 2).float() / 255).numpy()
    pred = m.predict_features(feats)
    np.testing.assert_allclose(out, pred, rtol=1e-4, atol=1e-4 * np.abs(pred).max())
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        fitting.fit_days(cfg, folder, 1)


def _parse(argv):
    p = argparse.ArgumentParser()
    cli_model.register(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_cli_fit_score_and_errors(experiment, tmp_path, capsys):
    folder, *_ = experiment
    out = tmp_path / "m0.h5"
    args = _parse(["model", "fit", "--days", str(folder), "--through", "0", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in text and "median: r " in text
    for name in ("r / sqrt(ceiling)", "r^2 / ceiling", "definitions:", "Brain-Score", "explainable-variance"):
        assert name in text, name   # the three predictivity names, each with its definition
    args = _parse(["model", "score", str(out), "--json"])
    assert args.func(args) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["weights_sha256"] == "random-init" and all(s["cv_r"] > 0 for s in table["sites"])
    for s in table["sites"]:   # r / sqrt(ceiling) and r^2 / ceiling from the same r and ceiling
        assert s["r_over_sqrt_ceiling"] == pytest.approx(s["cv_r"] / np.sqrt(s["ceiling"]))
        assert s["explainable_variance_fraction"] == pytest.approx(s["cv_r"] ** 2 / s["ceiling"])
    for argv, match in [
        (["model", "fit", "--days", str(folder), "--through", "3"], "day_003.h5 does not exist"),
        (["model", "score", str(tmp_path / "none.h5")], "does not exist"),
        (["model", "score"], "give a model file"),
        (["model", "convert", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], "--trust"),
    ]:
        args = _parse(argv)
        with pytest.raises(UserError, match=match):
            args.func(args)
