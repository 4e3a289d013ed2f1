"""Fitted models on disk: one HDF5 file (or group), arrays and attributes only — no pickle.

Layout of a fitted-model group (every dataset has ``unit`` and ``description`` attributes)::

    attrs: schema, method, backbone_name, layer, weights_path, weights_sha256, seed, random_init,
           info_<key> (free-form provenance: days used, n_images, ...)
    coef (S, D)  intercept (S,)  alpha (S,)  feature_mean (D,)  feature_scale (D,)
    n_train (S,)  site_channels (S,)  scores/<name> (S,)

``save_fitted(path, readout, backbone, site_channels, scores, info)`` writes a file;
``load_fitted(path)`` returns a :class:`FittedModel` whose :meth:`FittedModel.module`
rebuilds the backbone from the stored name/layer/weights, checks the weights sha256 and
returns the images -> (B, S) torch module. ``write_fitted_group`` / ``read_fitted_group``
do the same inside an open h5py group (for embedding in a day file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .backbone import RANDOM_INIT, Backbone, build_backbone
from .files import atomic_path
from .readout import Readout, SiteModel

SCHEMA = "itloop.fitted_model/1"

_DATASETS = {
    "coef": ("1 (response unit per z-scored feature)", "readout weights per site on z-scored features"),
    "intercept": ("response unit (spikes per window)", "readout intercept per site"),
    "alpha": ("1", "ridge penalty chosen per site by cross-validation (NaN for PLS)"),
    "feature_mean": ("feature unit", "mean of each backbone feature over the training images"),
    "feature_scale": ("feature unit", "std of each backbone feature over the training images (1 if constant)"),
    "n_train": ("images", "number of images each site was fitted on"),
    "site_channels": ("channel index", "recorded channel each model site corresponds to"),
}


@dataclass
class FittedModel:
    """A fitted readout plus the identity of the backbone it reads from."""

    method: str
    coef: np.ndarray
    intercept: np.ndarray
    alpha: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    n_train: np.ndarray
    site_channels: np.ndarray
    backbone_name: str
    layer: str
    weights_path: str
    weights_sha256: str
    seed: int = 0
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    pool: str = "avg"          # model.pool the features were pooled with (files before it: "avg")

    @property
    def n_sites(self) -> int:
        return len(self.coef)

    @property
    def random_init(self) -> bool:
        return self.weights_sha256 == RANDOM_INIT

    def readout(self) -> Readout:
        """The stored readout as a fitted :class:`Readout`."""
        r = Readout(method=self.method)
        r.coef_, r.intercept_, r.alpha_ = self.coef, self.intercept, self.alpha
        r.mean_, r.scale_, r.n_train_ = self.feature_mean, self.feature_scale, self.n_train
        r.n_features_in_ = self.coef.shape[1]
        return r

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Predicted responses (N, S) from backbone features (N, D)."""
        return self.readout().predict(features)

    def build_backbone(self, weights: str | os.PathLike | None = None) -> Backbone:
        """The backbone this model was fitted on; ``weights`` overrides the stored path (e.g. a moved file).

        Raises ValueError if the weights file's sha256 is not the one the model was fitted with.
        """
        if self.random_init:
            return build_backbone(self.backbone_name, self.layer, None, seed=self.seed, pool=self.pool)
        path = str(weights) if weights else self.weights_path
        if not path:
            raise ValueError("this model was fitted on a weights file but none is recorded; pass weights=PATH")
        bb = build_backbone(self.backbone_name, self.layer, path, pool=self.pool)
        if bb.weights_sha256 != self.weights_sha256:
            raise ValueError(f"weights file {path!r} has sha256 {bb.weights_sha256[:16]}... but the model was "
                             f"fitted with {self.weights_sha256[:16]}...; pass the original weights file "
                             "(or refit the model on these weights)")
        return bb

    def module(self, weights: str | os.PathLike | None = None, device: str = "cpu") -> SiteModel:
        """Torch module: images (B, 3, H, W) in [0, 1] -> f(x) (B, S) for every stored site."""
        return self.readout().to_torch(self.build_backbone(weights)).to(device)


def _put(group: h5py.Group, name: str, data: np.ndarray, unit: str, description: str) -> None:
    ds = group.create_dataset(name, data=data)
    ds.attrs["unit"] = unit
    ds.attrs["description"] = description


def write_fitted_group(group: h5py.Group, readout: Readout, backbone: Backbone, site_channels,
                       scores: dict[str, np.ndarray] | None = None, info: dict[str, object] | None = None) -> None:
    """Write a fitted readout and its backbone identity into an open (empty) h5py group."""
    if not hasattr(readout, "coef_"):
        raise ValueError("cannot store an unfitted Readout; call fit first")
    S, D = readout.coef_.shape
    site_channels = np.asarray(site_channels, dtype=np.int64)
    if site_channels.shape != (S,):
        raise ValueError(f"site_channels needs one channel index per site ({S}); got shape {site_channels.shape}")
    if backbone.feature_dim != D:
        raise ValueError(f"backbone gives {backbone.feature_dim} features but the readout has {D}")
    group.attrs["schema"] = SCHEMA
    group.attrs["method"] = readout.method
    group.attrs["backbone_name"] = backbone.name
    group.attrs["layer"] = backbone.layer
    group.attrs["pool"] = getattr(backbone, "pool", "avg")
    group.attrs["weights_path"] = str(Path(backbone.weights_path).resolve()) if backbone.weights_path else ""
    group.attrs["weights_sha256"] = backbone.weights_sha256
    group.attrs["seed"] = int(backbone.seed)
    group.attrs["random_init"] = bool(backbone.random_init)
    for key, value in (info or {}).items():
        group.attrs[f"info_{key}"] = value
    arrays = {"coef": readout.coef_, "intercept": readout.intercept_, "alpha": readout.alpha_,
              "feature_mean": readout.mean_, "feature_scale": readout.scale_, "n_train": readout.n_train_,
              "site_channels": site_channels}
    for name, arr in arrays.items():
        _put(group, name, np.asarray(arr), *_DATASETS[name])
    sg = group.create_group("scores")
    for name, arr in (scores or {}).items():
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape != (S,):
            raise ValueError(f"score {name!r} needs one value per site ({S}); got shape {arr.shape}")
        _put(sg, name, arr, "1", f"per-site score {name}")


def read_fitted_group(group: h5py.Group) -> FittedModel:
    """Read a group written by :func:`write_fitted_group`."""
    schema = group.attrs.get("schema", "")
    if schema != SCHEMA:
        raise ValueError(f"{group.file.filename}:{group.name} is not a fitted model (schema {schema!r}, "
                         f"expected {SCHEMA!r})")
    a = group.attrs

    def s(key: str) -> str:
        v = a[key]
        return v.decode() if isinstance(v, bytes) else str(v)

    info = {k[5:]: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
            for k, v in a.items() if k.startswith("info_")}
    return FittedModel(
        method=s("method"), coef=group["coef"][()], intercept=group["intercept"][()], alpha=group["alpha"][()],
        feature_mean=group["feature_mean"][()], feature_scale=group["feature_scale"][()],
        n_train=group["n_train"][()], site_channels=group["site_channels"][()],
        backbone_name=s("backbone_name"), layer=s("layer"), weights_path=s("weights_path"),
        weights_sha256=s("weights_sha256"), seed=int(a["seed"]), pool=s("pool") if "pool" in a else "avg",
        scores={k: v[()] for k, v in group["scores"].items()}, info=info)


def save_fitted(path: str | os.PathLike, readout: Readout, backbone: Backbone, site_channels,
                scores: dict[str, np.ndarray] | None = None, info: dict[str, object] | None = None) -> Path:
    """Write a fitted model to an HDF5 file at ``path`` (written to a temp name, then renamed)."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_fitted_group(f, readout, backbone, site_channels, scores, info)
    return path


def load_fitted(path: str | os.PathLike) -> FittedModel:
    """Read a fitted-model file written by :func:`save_fitted`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fitted model file {str(path)!r} does not exist; create one with `itloop model fit`")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{str(path)!r} is not an HDF5 fitted-model file ({e})") from None
    with f:
        return read_fitted_group(f)
