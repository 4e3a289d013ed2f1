"""Backbone: registry, deterministic random init, safe local weight loading (incl. robustness layout)."""
import argparse

import pytest
import torch
import torchvision

from modelfit.backbone import RANDOM_INIT, WeightsError, build_backbone, convert_checkpoint, file_sha256


def _reference_features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet forward up to layer4 + avgpool, normalisation by hand."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images - mean) / std
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


@pytest.fixture(scope="module")
def resnet50_files(tmp_path_factory):
    """A random ResNet50 (with non-trivial BN statistics) saved as torchvision and robustness checkpoints."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    net = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = net.state_dict()
    tv = d / "tv.pth"
    torch.save(sd, tv)
    robust = {"module.model." + k: v for k, v in sd.items()}
    robust.update({"module.attacker.model." + k: v for k, v in sd.items()})
    robust["module.normalizer.new_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    robust["module.normalizer.new_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rb = d / "robust.pt"
    torch.save({"model": robust, "epoch": 90}, rb)
    return net, tv, rb


def test_registry_dims_and_deterministic_random_init():
    for name, dims in {"tiny": (64, 128, 128), "resnet18": (256, 512, 512)}.items():
        for layer, dim in zip(("layer3", "layer4.0", "layer4"), dims):
            b = build_backbone(name, layer)
            assert b.feature_dim == dim and b.random_init and b.weights_sha256 == RANDOM_INIT
            assert not b.training and not any(p.requires_grad for p in b.parameters())
    x = torch.rand(2, 3, 64, 64)
    a, b, c = build_backbone("tiny"), build_backbone("tiny"), build_backbone("tiny", seed=1)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    assert a.identity == "tiny:random-init-seed0" != c.identity
    a.train()
    assert not a.training  # frozen: stays in eval mode
    # gradients reach the input although parameters are frozen
    xi = x.clone().requires_grad_(True)
    a(xi).sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


def test_robustness_checkpoint_gives_same_features_as_original(resnet50_files):
    net, tv, rb = resnet50_files
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _reference_features(net, images)
        for path in (tv, rb):
            b = build_backbone("resnet50", "layer4", str(path))
            assert b.feature_dim == 2048 and not b.random_init
            assert b.weights_sha256 == file_sha256(path)
            torch.testing.assert_close(b(images), ref, rtol=1e-5, atol=1e-6)
        # layer3 truncation equals the reference's layer3 output, pooled
        b3 = build_backbone("resnet50", "layer3", str(rb))
        x = (images - b3.img_mean) / b3.img_std
        x = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        torch.testing.assert_close(b3(images), x.mean((2, 3)), rtol=1e-5, atol=1e-6)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("tiny", "layer4", str(tmp_path / "nope.pth"))


def test_checkpoint_of_another_architecture(tmp_path):
    p = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), p)
    with pytest.raises(WeightsError, match=r"does not fit backbone 'tiny'.*(missing|shape)"):
        build_backbone("tiny", "layer4", str(p))


def test_pickle_that_is_not_a_state_dict(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        build_backbone("tiny", "layer4", str(p))
    g = tmp_path / "garbage.pth"
    g.write_bytes(b"not a checkpoint at all" * 20)
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        build_backbone("tiny", "layer4", str(g))


def test_unsafe_pickle_refused_then_converted(tmp_path):
    torch.manual_seed(5)
    net = build_backbone("tiny", seed=5)
    sd = {"module.model." + k: v for k, v in torchvision_like_state(net).items()}
    p = tmp_path / "unsafe.pt"
    torch.save({"model": sd, "args": argparse.Namespace(arch="tiny", eps=3.0)}, p)
    with pytest.raises(WeightsError, match="itloop model convert CHECKPOINT OUT --trust"):
        build_backbone("tiny", "layer4", str(p))
    with pytest.raises(WeightsError, match="--trust"):
        convert_checkpoint(p, tmp_path / "safe.pt", trust=False)
    info = convert_checkpoint(p, tmp_path / "safe.pt", trust=True)
    assert info["sha256"] == file_sha256(tmp_path / "safe.pt")
    b = build_backbone("tiny", "layer4", str(tmp_path / "safe.pt"))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(b(x), net(x))


def torchvision_like_state(backbone) -> dict:
    """Map a Backbone's (stem/blocks) state back to torchvision key names."""
    names = ["conv1", "bn1", "relu", "maxpool"]
    out = {}
    for k, v in backbone.state_dict().items():
        if k.startswith("stem."):
            i, rest = k[5:].split(".", 1)
            out[f"{names[int(i)]}.{rest}"] = v
        elif k.startswith("blocks."):
            i, rest = k[7:].split(".", 1)
            out[f"layer{int(i) + 1}.{rest}"] = v
    return out


def test_bad_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="unknown layer 'layer5'"):
        build_backbone("tiny", "layer5")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_backbone("tiny")(torch.rand(3, 64, 64))
