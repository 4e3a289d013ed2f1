"""Fitted-model files: round trip through HDF5, module rebuilt with the weights check."""
import h5py
import numpy as np
import pytest
import torch

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor, images_to_tensor
from modelfit.readout import Readout
from modelfit.store import load_fitted, save_fitted


def _fitted(layer="layer4", weights=None):
    bb = build_backbone("tiny", layer, weights)
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(40, 64, 64, 3), dtype=np.uint8)
    F = FeatureExtractor(bb).transform(px)
    Y = F[:, :5] @ rng.normal(size=(5, 3)) + rng.normal(0, 0.1, (40, 3)) + 4
    return bb, px, F, Readout(alphas=[0.1, 1.0], cv_folds=3).fit(F, Y)


def test_round_trip_random_init(tmp_path):
    bb, px, F, r = _fitted()
    path = save_fitted(tmp_path / "m.h5", r, bb, site_channels=[3, 17, 40],
                       scores={"cv_r": np.array([0.5, 0.6, np.nan])}, info={"through_day": 2, "days": "0,1,2"})
    m = load_fitted(path)
    assert m.site_channels.tolist() == [3, 17, 40] and m.random_init and m.layer == "layer4"
    assert m.info == {"through_day": 2, "days": "0,1,2"}
    np.testing.assert_array_equal(m.scores["cv_r"][:2], [0.5, 0.6])
    np.testing.assert_allclose(m.predict_features(F), r.predict(F))
    with torch.no_grad():
        out = m.module()(images_to_tensor(px)).numpy()
    np.testing.assert_allclose(out, r.predict(F), rtol=1e-4, atol=1e-4 * np.abs(out).max())
    with h5py.File(path) as f:  # self-describing, no pickled objects
        assert f["coef"].attrs["unit"] and f["coef"].attrs["description"]
        assert f.attrs["weights_sha256"] == "random-init"


def test_weights_sha_is_checked(tmp_path):
    w1, w2 = tmp_path / "w1.pt", tmp_path / "w2.pt"
    for seed, p in ((1, w1), (2, w2)):
        torch.manual_seed(seed)
        from modelfit.backbone import REGISTRY
        torch.save(REGISTRY["tiny"]().state_dict(), p)
    bb, px, F, r = _fitted(weights=str(w1))
    save_fitted(tmp_path / "m.h5", r, bb, site_channels=[0, 1, 2])
    m = load_fitted(tmp_path / "m.h5")
    assert m.weights_sha256 == bb.weights_sha256 and m.weights_path == str(w1.resolve())
    assert m.module() is not None
    with pytest.raises(ValueError, match="the model was fitted with"):
        m.module(weights=w2)


def test_bad_store_inputs(tmp_path):
    bb, px, F, r = _fitted()
    with pytest.raises(ValueError, match="one channel index per site"):
        save_fitted(tmp_path / "m.h5", r, bb, site_channels=[1, 2])
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(ValueError, match="does not exist"):
        load_fitted(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an HDF5 fitted-model file"):
        load_fitted(tmp_path / "junk.h5")
