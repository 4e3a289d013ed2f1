"""Experiment configuration: TOML -> typed, validated dataclasses.

The defaults live here, in the dataclasses; ``config.toml`` at the repository root is the
same experiment written out with a comment per key (a test keeps the two in step).
A user file overrides the defaults key by key::

    cfg = load_config("my.toml")        # defaults + my.toml
    cfg.rsvp.stim_on_ms                 # 100.0

Every problem (malformed TOML, unknown key, wrong type, impossible value) raises
:class:`ConfigError` with one message naming the key path, the value and what is expected.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration problem; the message names the key path, the value and the fix."""


# --------------------------------------------------------------------------- sections
@dataclass
class ExperimentConfig:
    name: str = "itloop"
    seed: int = 0
    sites_per_day: int = 21
    images_per_site: int = 42
    epsilons: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0])

    def check(self) -> list[tuple[str, Any, str]]:
        out = []
        if self.sites_per_day < 1:
            out.append(("sites_per_day", self.sites_per_day, "an integer >= 1"))
        if self.images_per_site < 1:
            out.append(("images_per_site", self.images_per_site, "an integer >= 1"))
        if not self.epsilons:
            out.append(("epsilons", self.epsilons, "a non-empty list of L2 norms >= 0"))
        for e in self.epsilons:
            if not (math.isfinite(e) and e >= 0):
                out.append(("epsilons", self.epsilons, "every epsilon finite and >= 0 (L2 norm of pixels in [0,1])"))
                break
        return out


@dataclass
class RsvpConfig:
    stim_on_ms: float = 100.0
    mask_ms: float = 100.0
    presentations_per_trial: int = 5
    image_size_deg: float = 8.0
    fixation_window_deg: float = 2.0
    fixation_acquire_ms: float = 300.0
    inter_trial_ms: float = 500.0

    def check(self):
        out = []
        for k in ("stim_on_ms", "mask_ms", "image_size_deg", "fixation_window_deg"):
            if not getattr(self, k) > 0:
                out.append((k, getattr(self, k), "a number > 0"))
        for k in ("fixation_acquire_ms", "inter_trial_ms"):
            if getattr(self, k) < 0:
                out.append((k, getattr(self, k), "a number >= 0"))
        if self.presentations_per_trial < 1:
            out.append(("presentations_per_trial", self.presentations_per_trial, "an integer >= 1"))
        return out


@dataclass
class WindowConfig:
    start_ms: float = 70.0
    end_ms: float = 170.0

    def check(self):
        out = []
        if self.start_ms < 0:
            out.append(("start_ms", self.start_ms, "a time >= 0 ms after stimulus onset"))
        if self.end_ms <= self.start_ms:
            out.append(("end_ms", self.end_ms, f"a time after window.start_ms ({self.start_ms} ms)"))
        return out


@dataclass
class ImagesConfig:
    source: str = "builtin"
    size_px: int = 224
    n_clean: int = 640

    def check(self):
        out = []
        if self.size_px < 16:
            out.append(("size_px", self.size_px, "an integer >= 16 (pixels per side)"))
        if self.n_clean < 2:
            out.append(("n_clean", self.n_clean, "an integer >= 2"))
        return out


@dataclass
class ScreeningConfig:
    repeats: int = 20
    reliability_threshold: float = 0.5

    def check(self):
        out = []
        if self.repeats < 2:
            out.append(("repeats", self.repeats, "an integer >= 2 (split halves need two repeats)"))
        if not -1 <= self.reliability_threshold <= 1:
            out.append(("reliability_threshold", self.reliability_threshold, "a correlation in [-1, 1]"))
        return out


@dataclass
class ScheduleConfig:
    repeats: int = 10
    min_parent_separation_min: float = 10.0

    def check(self):
        out = []
        if self.repeats < 1:
            out.append(("repeats", self.repeats, "an integer >= 1"))
        if self.min_parent_separation_min < 0:
            out.append(("min_parent_separation_min", self.min_parent_separation_min, "minutes >= 0"))
        return out


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    layer: str = "layer4"
    weights: str = ""
    batch_size: int = 32
    channels_last: bool = True
    bf16: bool = False
    device: str = "cpu"

    def check(self):
        out = []
        if self.layer not in ("layer3", "layer4.0", "layer4"):
            out.append(("layer", self.layer, "one of 'layer3', 'layer4.0', 'layer4'"))
        if self.batch_size < 1:
            out.append(("batch_size", self.batch_size, "an integer >= 1"))
        return out


@dataclass
class ReadoutConfig:
    method: Literal["ridge", "pls"] = "ridge"
    alphas: list[float] = field(default_factory=lambda: [float(10.0**k) for k in range(-2, 7)])
    cv_folds: int = 5
    pls_components: int = 25
    score_splits: int = 10
    score_train_fraction: float = 0.9

    def check(self):
        out = []
        if not self.alphas or any(not (a > 0) for a in self.alphas):
            out.append(("alphas", self.alphas, "a non-empty list of ridge penalties > 0"))
        if self.cv_folds < 2:
            out.append(("cv_folds", self.cv_folds, "an integer >= 2"))
        if self.pls_components < 1:
            out.append(("pls_components", self.pls_components, "an integer >= 1"))
        if self.score_splits < 1:
            out.append(("score_splits", self.score_splits, "an integer >= 1"))
        if not 0 < self.score_train_fraction < 1:
            out.append(("score_train_fraction", self.score_train_fraction, "a fraction in (0, 1)"))
        return out


@dataclass
class PerturbConfig:
    restarts: int = 100
    steps: int = 40
    first_phase_fraction: float = 0.5
    first_phase_radius_factor: float = 2.0
    step_decay: float = 0.9
    step_growth: float = 1.0
    prune: bool = True
    prune_keep_fraction: float = 0.25
    prune_after_fraction: float = 0.25
    prune_rounds: int = 1
    early_stop: bool = True
    early_stop_patience: int = 5
    early_stop_tolerance: float = 1e-4
    random_controls_per_image: int = 1
    max_batch_rows: int = 64

    def check(self):
        out = []
        for k in ("restarts", "steps", "max_batch_rows", "early_stop_patience", "prune_rounds"):
            if getattr(self, k) < 1:
                out.append((k, getattr(self, k), "an integer >= 1"))
        if self.random_controls_per_image < 0:
            out.append(("random_controls_per_image", self.random_controls_per_image, "an integer >= 0"))
        for k in ("first_phase_fraction", "prune_after_fraction"):
            if not 0 <= getattr(self, k) < 1:
                out.append((k, getattr(self, k), "a fraction in [0, 1)"))
        if not 0 < self.prune_keep_fraction <= 1:
            out.append(("prune_keep_fraction", self.prune_keep_fraction, "a fraction in (0, 1]"))
        if self.first_phase_radius_factor < 1:
            out.append(("first_phase_radius_factor", self.first_phase_radius_factor, "a factor >= 1"))
        if not 0 < self.step_decay < 1:
            out.append(("step_decay", self.step_decay, "a factor in (0, 1)"))
        if not 1 <= self.step_growth <= 4:
            out.append(("step_growth", self.step_growth, "a factor in [1, 4] (1 = the paper's decay-only rule)"))
        if not self.early_stop_tolerance >= 0:
            out.append(("early_stop_tolerance", self.early_stop_tolerance, "a relative tolerance >= 0"))
        return out


@dataclass
class SimConfig:
    n_channels: int = 32
    linear_fraction: float = 0.5
    model_alignment: float = 0.0
    input_px: int = 32
    smoothing_px: float = 2.0
    hidden_width: int = 32
    baseline_hz: list[float] = field(default_factory=lambda: [5.0, 30.0])
    peak_hz: float = 200.0
    drive_gain: float = 1.5
    latency_ms: list[float] = field(default_factory=lambda: [70.0, 100.0])
    gain_noise_cv: float = 0.2
    fixation_break_prob: float = 0.05
    clock_offset_s: float = 0.0123
    clock_drift_ppm: float = 20.0
    seed: int = 1234

    def check(self):
        out = []
        if self.n_channels < 1:
            out.append(("n_channels", self.n_channels, "an integer >= 1"))
        if not 0 <= self.linear_fraction <= 1:
            out.append(("linear_fraction", self.linear_fraction, "a fraction in [0, 1]"))
        if not 0 <= self.model_alignment <= 1:
            out.append(("model_alignment", self.model_alignment, "a fraction in [0, 1] (0: no part of the sites lives in the designing model)"))
        if not (self.input_px == 0 or self.input_px >= 32):
            out.append(("input_px", self.input_px, "0 (no resampling) or pixels >= 32"))
        if self.smoothing_px < 0:
            out.append(("smoothing_px", self.smoothing_px, "a Gaussian sigma in pixels >= 0"))
        if self.hidden_width < 1:
            out.append(("hidden_width", self.hidden_width, "an integer >= 1"))
        if len(self.baseline_hz) != 2 or not 0 <= self.baseline_hz[0] <= self.baseline_hz[1]:
            out.append(("baseline_hz", self.baseline_hz, "[low, high] with 0 <= low <= high (Hz)"))
        elif self.peak_hz <= self.baseline_hz[1]:
            out.append(("peak_hz", self.peak_hz, f"a rate above the highest baseline ({self.baseline_hz[1]} Hz)"))
        if len(self.latency_ms) != 2 or not 0 <= self.latency_ms[0] <= self.latency_ms[1]:
            out.append(("latency_ms", self.latency_ms, "[low, high] with 0 <= low <= high (ms)"))
        if self.gain_noise_cv < 0:
            out.append(("gain_noise_cv", self.gain_noise_cv, "a coefficient of variation >= 0"))
        if not 0 <= self.fixation_break_prob < 1:
            out.append(("fixation_break_prob", self.fixation_break_prob, "a probability in [0, 1)"))
        return out


@dataclass
class MonitorConfig:
    width_cm: float = 53.0
    distance_cm: float = 57.0
    width_px: int = 1920
    height_px: int = 1080
    refresh_hz: float = 60.0
    fullscreen: bool = True
    frame_tolerance: float = 0.1

    def check(self):
        out = []
        for k in ("width_cm", "distance_cm", "refresh_hz"):
            if not getattr(self, k) > 0:
                out.append((k, getattr(self, k), "a number > 0"))
        for k in ("width_px", "height_px"):
            if getattr(self, k) < 1:
                out.append((k, getattr(self, k), "an integer >= 1"))
        if not 0 <= self.frame_tolerance < 0.5:
            out.append(("frame_tolerance", self.frame_tolerance, "a fraction of a frame in [0, 0.5)"))
        return out


@dataclass
class PresenterConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    heartbeat_s: float = 0.5
    dead_after_s: float = 3.0
    ack_timeout_s: float = 1.0
    marker: Literal["none", "parallel", "serial"] = "none"
    marker_address: str = ""
    photodiode: bool = True
    curve_public_key: str = ""
    curve_secret_key: str = ""
    curve_server_key: str = ""

    def check(self):
        out = []
        for k in ("heartbeat_s", "dead_after_s", "ack_timeout_s"):
            if not getattr(self, k) > 0:
                out.append((k, getattr(self, k), "seconds > 0"))
        if self.dead_after_s <= self.heartbeat_s:
            out.append(("dead_after_s", self.dead_after_s, f"longer than presenter.heartbeat_s ({self.heartbeat_s} s)"))
        return out


@dataclass
class PathsConfig:
    data_dir: str = "runs"
    feature_cache: str = "cache/features"

    def check(self):
        return []


@dataclass
class ReportConfig:
    figure1a_backbones: list[str] = field(default_factory=list)
    figure1a_units: int = 6
    figure1a_images: int = 4

    def check(self):
        out = []
        if self.figure1a_units < 1:
            out.append(("figure1a_units", self.figure1a_units, "an integer >= 1 (model units per backbone)"))
        if self.figure1a_images < 1:
            out.append(("figure1a_images", self.figure1a_images, "an integer >= 1 (clean images)"))
        return out


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    rsvp: RsvpConfig = field(default_factory=RsvpConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    presenter: PresenterConfig = field(default_factory=PresenterConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    # the TOML text this config was built from (defaults + overrides), for the day file
    source_text: str = field(default="", repr=False, compare=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_text", None)
        return d

    def to_toml(self) -> str:
        """The complete, resolved configuration as TOML text (stored in every day file)."""
        return dumps_toml(self.to_dict())


# --------------------------------------------------------------------------- loading
_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source_text"}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"a list of {_type_name(arg)}s"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(path: str, value: Any, tp) -> Any:
    """Check ``value`` against type ``tp``; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{path}' = {value!r}: expected {_type_name(tp)}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_coerce(f"{path}[{i}]", v, arg) for i, v in enumerate(value)]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp}")  # programming error, not user error


def _build_section(name: str, cls, table: Any):
    if not isinstance(table, dict):
        raise ConfigError(f"config key '{name}' = {table!r}: expected a table ([{name}])")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    obj = cls()
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"config key '{name}.{key}' is unknown; the keys of [{name}] are: {', '.join(sorted(known))}"
            )
        setattr(obj, key, _coerce(f"{name}.{key}", value, hints[key]))
    for key, value, expected in obj.check():
        raise ConfigError(f"config key '{name}.{key}' = {value!r}: expected {expected}")
    return obj


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_toml(text: str, origin: str = "<string>") -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}. Fix the syntax at that line.") from None


def config_from_dict(data: dict) -> Config:
    """Build a validated :class:`Config` from a (partial) nested dict of overrides."""
    hints = typing.get_type_hints(Config)
    cfg = Config()
    for name, table in data.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"config section '{name}' is unknown; the sections are: {', '.join(sorted(_SECTIONS))}"
            )
        setattr(cfg, name, _build_section(name, hints[name], table))
    cfg.source_text = cfg.to_toml()
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the user's TOML file (if any), then ``overrides`` (nested dict)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing TOML file to --config")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from None
        data = parse_toml(text, str(p))
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data)


def config_from_toml_text(text: str) -> Config:
    """Rebuild a config from the TOML text stored in a day file."""
    return config_from_dict(parse_toml(text, "stored config"))


# --------------------------------------------------------------------------- writing
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps_toml(d: dict) -> str:
    """Write a two-level dict (sections of scalars and lists) as TOML."""
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def frames_for(duration_ms: float, refresh_hz: float, tolerance: float = 0.1) -> int | None:
    """Whole number of frames for ``duration_ms`` at ``refresh_hz``; None if not within tolerance."""
    n = duration_ms * refresh_hz / 1000.0
    k = round(n)
    return k if k >= 1 and abs(n - k) <= tolerance else None

