"""``itloop stimuli generate`` end to end: a real fitted-model file in, a real stimulus file out."""
from __future__ import annotations

import numpy as np
import torch

from rig.cli import main


def _fitted_model_file(tmp_path, n_sites=4):
    from modelfit.backbone import build_backbone
    from modelfit.readout import Readout
    from modelfit.store import save_fitted

    bb = build_backbone("tiny", "layer4", None)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (40, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        feats = bb(x).numpy()
    y = feats @ rng.normal(size=(feats.shape[1], n_sites)) + rng.normal(size=(40, n_sites))
    readout = Readout(method="ridge", alphas=[1.0, 10.0], cv_folds=2).fit(feats, y)
    return save_fitted(tmp_path / "model.h5", readout, bb, np.arange(n_sites))


def test_generate_writes_a_stimulus_file(tmp_path, capsys):
    from rig.cli.stimuli import load_stimulus_set

    model = _fitted_model_file(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[images]\nsize_px = 32\nn_clean = 6\n[perturb]\nrestarts = 2\nsteps = 4\n")
    out = tmp_path / "stim.npz"
    rc = main(["stimuli", "generate", "--model", str(model), "--out", str(out), "--config", str(cfg),
               "--sites", "1,3", "--images-per-site", "2", "--epsilons", "0.5,1", "--no-progress"])
    assert rc == 0 and out.exists()
    ss = load_stimulus_set(out)
    assert (ss.kind == "clean").sum() == 6
    assert (ss.kind == "targeted").sum() == 2 * 2 * 2 * 2
    assert (ss.kind == "random").sum() == 2 * 2 * 2
    t = ss.kind == "targeted"
    assert set(ss.site[t]) == {1, 3} and np.all(ss.epsilon_shown <= ss.epsilon_requested)
    assert np.all(ss.direction[t] * ss.predicted_change[t] > 0)
    assert "wrote" in capsys.readouterr().out
    # the planned grid travels with the file; one written before it existed reads with the same grid
    assert ss.epsilons.tolist() == [0.5, 1.0] and np.all(ss.epsilon_index[ss.kind == "clean"] == -1)
    with np.load(out) as z:
        old = {k: z[k] for k in z.files if k not in ("epsilon_index", "epsilons")}
    np.savez(tmp_path / "old.npz", **old)
    legacy = load_stimulus_set(tmp_path / "old.npz")
    assert np.array_equal(legacy.epsilon_index, ss.epsilon_index) and np.array_equal(legacy.epsilons, ss.epsilons)


def test_generate_reports_a_bad_site(tmp_path, capsys):
    model = _fitted_model_file(tmp_path)
    rc = main(["stimuli", "generate", "--model", str(model), "--out", str(tmp_path / "s.npz"), "--sites", "9"])
    assert rc == 2
    assert "site" in capsys.readouterr().err and not (tmp_path / "s.npz").exists()
