"""Feature extraction: matches the backbone, cache hit on the second pass, keyed by network and layer."""
import numpy as np
import pytest
import torch

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor, images_to_tensor, sha1_of
from stimuli.stimset import sha1_of as stimset_sha1


def _pixels(n=10, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_features_equal_backbone_output_and_sha1_matches_stimset():
    px = _pixels()
    bb = build_backbone("tiny", "layer4")
    feats = FeatureExtractor(bb, batch_size=4).transform(px)
    with torch.no_grad():
        ref = build_backbone("tiny", "layer4")(images_to_tensor(px)).numpy()
    assert feats.dtype == np.float32 and feats.shape == (10, 128)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    assert sha1_of(px[0]) == stimset_sha1(px[0])


def test_cache_is_hit_on_second_pass(tmp_path):
    px = _pixels(12)
    fx = FeatureExtractor(build_backbone("tiny"), cache_dir=tmp_path, batch_size=5)
    first = fx.transform(px[:8])
    assert (fx.hits, fx.misses) == (0, 8)
    # a new extractor (another day, another process) finds the cached images; only 4 are new
    fx2 = FeatureExtractor(build_backbone("tiny"), cache_dir=tmp_path, batch_size=5)
    ids = [sha1_of(p) for p in px]
    second = fx2.transform(px, ids=ids)
    assert (fx2.hits, fx2.misses) == (8, 4)
    np.testing.assert_array_equal(second[:8], first)
    # the cached values are what the network gives
    uncached = FeatureExtractor(build_backbone("tiny")).transform(px)
    np.testing.assert_allclose(second, uncached, rtol=1e-5, atol=1e-6)


def test_cache_separates_networks_layers_and_precision(tmp_path):
    px = _pixels(3)
    kw = dict(cache_dir=tmp_path)
    FeatureExtractor(build_backbone("tiny", seed=0), **kw).transform(px)
    for fx in (FeatureExtractor(build_backbone("tiny", seed=1), **kw),
               FeatureExtractor(build_backbone("tiny", "layer3"), **kw),
               FeatureExtractor(build_backbone("tiny"), bf16=True, **kw)):
        fx.transform(px)
        assert fx.hits == 0 and fx.misses == 3


def test_duplicates_computed_once_and_torn_cache_file_recomputed(tmp_path):
    px = _pixels(3)
    px = np.concatenate([px, px[:1]])
    fx = FeatureExtractor(build_backbone("tiny"), cache_dir=tmp_path)
    f = fx.transform(px)
    np.testing.assert_array_equal(f[3], f[0])
    sid = sha1_of(px[1])
    path = next(tmp_path.rglob(f"{sid}.npy"))
    path.write_bytes(b"torn")
    fx2 = FeatureExtractor(build_backbone("tiny"), cache_dir=tmp_path)
    np.testing.assert_allclose(fx2.transform(px), f, rtol=1e-5, atol=1e-5)
    assert fx2.misses == 1


def test_bf16_close_to_fp32():
    px = _pixels(4)
    a = FeatureExtractor(build_backbone("tiny")).transform(px)
    b = FeatureExtractor(build_backbone("tiny"), bf16=True).transform(px)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 0.05  # bf16 has an 8-bit mantissa: ~1% error, never exact


def test_bad_pixels():
    fx = FeatureExtractor(build_backbone("tiny"))
    with pytest.raises(ValueError, match=r"uint8 of shape \(N, H, W, 3\)"):
        fx.transform(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="ids has 1 entries for 2 images"):
        fx.transform(_pixels(2), ids=["a"])
