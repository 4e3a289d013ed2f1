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
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelfit.names import LAYERS, pool_grid
from stimuli.params import PerturbParams

import rig.backend as _rsvp  # the RSVP defaults (STIM_ON_MS, ...) are defined once, with the interfaces


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
    stim_on_ms: float = _rsvp.STIM_ON_MS
    mask_ms: float = _rsvp.MASK_MS
    presentations_per_trial: int = 5
    image_size_deg: float = _rsvp.IMAGE_SIZE_DEG
    fixation_window_deg: float = _rsvp.FIXATION_WINDOW_DEG
    fixation_acquire_ms: float = _rsvp.FIXATION_ACQUIRE_MS
    inter_trial_ms: float = _rsvp.INTER_TRIAL_MS

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
    pool: str = "avg"      # readout features: "avg" (global average) or "grid<k>" (k x k grid of averages)

    def check(self):
        out = []
        if self.layer not in LAYERS:
            out.append(("layer", self.layer, f"one of {list(LAYERS)}"))
        try:
            pool_grid(self.pool)
        except ValueError:
            out.append(("pool", self.pool, "'avg' (global average) or 'grid<k>' with k = 1..8 (e.g. 'grid2')"))
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
    # issue 19: transfer-oriented design (stimuli.transfer; README "Transfer"); these values = off
    grad_smoothing_px: float = 0.0
    lowpass_fraction: float = 0.0
    eot_samples: int = 1
    eot_shift_px: int = 0
    eot_scale: float = 0.0
    eot_noise: float = 0.0

    def check(self):
        # one set of rules for the config and the engine (stimuli.params.PerturbParams)
        return PerturbParams.from_config_section(self).problems()


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
    marker: Literal["none", "parallel", "serial", "zmq"] = "none"
    marker_address: str = ""
    photodiode: bool = True
    curve_public_key: str = ""
    curve_secret_key: str = ""
    curve_server_key: str = ""
    curve_authorized_keys: str = ""

    def check(self):
        out = []
        for k in ("heartbeat_s", "dead_after_s", "ack_timeout_s"):
            if not getattr(self, k) > 0:
                out.append((k, getattr(self, k), "seconds > 0"))
        if self.dead_after_s <= self.heartbeat_s:
            out.append(("dead_after_s", self.dead_after_s, f"longer than presenter.heartbeat_s ({self.heartbeat_s} s)"))
        return out


# ---- eye tracking, fixation control, reward, live monitor (issue 12) ----
@dataclass
class EyeConfig:
    source: Literal["none", "lsl", "eyelink"] = "none"
    lsl_stream: str = "itloop-gaze"
    resolve_timeout_s: float = 10.0
    units: Literal["deg", "raw"] = "deg"
    eyelink_address: str = "100.1.1.1"
    calibration_file: str = ""

    def check(self):
        out = []
        if not self.resolve_timeout_s > 0:
            out.append(("resolve_timeout_s", self.resolve_timeout_s, "seconds > 0"))
        if not self.lsl_stream:
            out.append(("lsl_stream", self.lsl_stream, "the name of the gaze LSL stream"))
        return out


@dataclass
class FixationConfig:
    acquire_timeout_ms: float = 5000.0
    lost_ms: float = 100.0
    check_lead_ms: float = 4.0
    calibration_points: int = 9
    calibration_spread_deg: float = 5.0
    calibration_window_deg: float = 3.0
    calibration_hold_ms: float = 300.0
    calibration_timeout_ms: float = 5000.0
    calibration_model: Literal["affine", "quadratic"] = "affine"

    def check(self):
        out = []
        for k in ("acquire_timeout_ms", "lost_ms", "calibration_spread_deg", "calibration_window_deg",
                  "calibration_hold_ms", "calibration_timeout_ms"):
            if not getattr(self, k) > 0:
                out.append((k, getattr(self, k), "a number > 0"))
        if self.check_lead_ms < 0:
            out.append(("check_lead_ms", self.check_lead_ms, "milliseconds >= 0 (0: check right after each flip)"))
        if self.calibration_points not in (5, 9):
            out.append(("calibration_points", self.calibration_points, "5 or 9"))
        return out


@dataclass
class RewardConfig:
    driver: Literal["none", "serial", "sim"] = "none"
    port: str = ""
    mode: Literal["command", "ttl"] = "command"
    baud: int = 9600
    duration_ms: float = 100.0
    manual_key: str = "r"

    def check(self):
        out = []
        if self.duration_ms < 0:
            out.append(("duration_ms", self.duration_ms, "milliseconds >= 0"))
        if self.baud < 1:
            out.append(("baud", self.baud, "an integer >= 1"))
        if self.driver == "serial" and not self.port:
            out.append(("port", self.port, "a serial device (e.g. /dev/ttyUSB0) when reward.driver = 'serial'"))
        return out


@dataclass
class LiveMonitorConfig:
    enabled: bool = False
    port: int = 8765
    trace_trials: int = 3

    def check(self):
        out = []
        if not 0 <= self.port <= 65535:
            out.append(("port", self.port, "a TCP port in [0, 65535] (0: any free port)"))
        if self.trace_trials < 1:
            out.append(("trace_trials", self.trace_trials, "an integer >= 1"))
        return out


@dataclass
class DisplayConfig:
    image_scaling: Literal["smooth", "integer"] = "smooth"
    gamma_monitor: str = ""

    def check(self):
        return []


# --- [acquisition]: the live rig's spike source (issue 11) -----------------------------
@dataclass
class AcquisitionConfig:
    system: Literal["openephys", "lsl"] = "openephys"
    host: str = "127.0.0.1"
    event_port: int = 5557
    http_port: int = 37497
    http_control: bool = True
    n_channels: int = 32
    electrode_prefix: str = "Electrode "
    ttl_line: int = 0
    lsl_spike_stream: str = "itloop-spikes"
    lsl_ttl_stream: str = "itloop-ttl"
    lsl_marker_outlet: str = "itloop-markers"
    lsl_resolve_s: float = 5.0
    pulse_tolerance_ms: float = 3.0
    wait_ms: float = 1000.0
    max_residual_ms: float = 0.5
    max_drift_ppm: float = 1000.0
    sim_sample_rate_hz: float = 30000.0
    sim_drop_fraction: float = 0.01
    sim_extra_fraction: float = 0.0
    sim_jitter_ms: float = 1.0

    def check(self):
        out = []
        for k in ("event_port", "http_port"):
            if not 1 <= getattr(self, k) <= 65535:
                out.append((k, getattr(self, k), "a TCP port in 1..65535"))
        if self.n_channels < 1:
            out.append(("n_channels", self.n_channels, "an integer >= 1"))
        if self.ttl_line < 0:
            out.append(("ttl_line", self.ttl_line, "a TTL line number >= 0"))
        for k in ("lsl_resolve_s", "pulse_tolerance_ms", "wait_ms", "max_residual_ms", "max_drift_ppm", "sim_sample_rate_hz"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                out.append((k, v, "a finite number > 0"))
        for k in ("sim_drop_fraction", "sim_extra_fraction"):
            v = getattr(self, k)
            if not (math.isfinite(v) and 0 <= v < 0.5):
                out.append((k, v, "a fraction in [0, 0.5)"))
        if not (math.isfinite(self.sim_jitter_ms) and self.sim_jitter_ms >= 0):
            out.append(("sim_jitter_ms", self.sim_jitter_ms, "milliseconds >= 0"))
        return out


@dataclass
class PathsConfig:
    data_dir: str = "runs"
    feature_cache: str = "cache/features"

    def check(self):
        return []


# ------------------------------------------------------------ metadata for sharing (NWB / DANDI)
# Empty strings mean "not given": they pass validation (a simulated day needs none of them),
# but `itloop day export` refuses to write a live recording's NWB until the keys named in
# rig.store.nwb.REQUIRED_FOR_LIVE are filled in.
_ISO_DURATION = (r"P(?!$)(\d+(?:\.\d+)?Y)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?W)?(\d+(?:\.\d+)?D)?"
                 r"(T(?=\d)(\d+(?:\.\d+)?H)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?S)?)?")  # nwbinspector 0.7.2's duration_regex
_SPECIES = r"([A-Z][a-z]* [a-z]+)|(http://purl\.obolibrary\.org/obo/NCBITaxon_\d+)"  # nwbinspector 0.7.2's species form
_PERSON = r"([\w\s\-\.']+),\s+([\w\s\-\.']+)"  # DANDI's "Last, First" (nwbinspector 0.7.2 check_experimenter_form)


def _iso_age_ok(age: str) -> bool:
    import re

    if re.fullmatch(_ISO_DURATION, age):
        return True
    lo, sep, hi = age.partition("/")
    return bool(sep) and (lo or hi) != "" and all(x == "" or re.fullmatch(_ISO_DURATION, x) for x in (lo, hi))


@dataclass
class SubjectConfig:
    id: str = ""
    species: str = "Macaca mulatta"
    sex: Literal["", "M", "F", "U", "O"] = ""
    age: str = ""
    date_of_birth: str = ""
    description: str = ""

    def check(self):
        import datetime as _dt
        import re

        out = []
        if not re.fullmatch(r"[A-Za-z0-9-]*", self.id):
            out.append(("id", self.id, "letters, digits and '-' only (it names the DANDI folder sub-<id>)"))
        if self.species and not re.fullmatch(_SPECIES, self.species):
            out.append(("species", self.species, "a Latin binomial ('Macaca mulatta') or an NCBI taxonomy URL"))
        if self.age and not _iso_age_ok(self.age):
            out.append(("age", self.age, "an ISO 8601 duration such as 'P7Y' or 'P6Y3M', or a range 'P6Y/P8Y'"))
        if self.date_of_birth:
            try:
                _dt.datetime.fromisoformat(self.date_of_birth)
            except ValueError:
                out.append(("date_of_birth", self.date_of_birth, "an ISO 8601 date such as '2018-04-21'"))
        return out


@dataclass
class SessionMetaConfig:
    experimenter: list[str] = field(default_factory=list)
    lab: str = ""
    institution: str = ""
    keywords: list[str] = field(default_factory=lambda: [
        "inferior temporal cortex", "macaque", "adversarial perturbations", "closed-loop", "RSVP"])
    protocol: str = ""

    def check(self):
        import re

        out = []
        for name in self.experimenter:
            if not re.fullmatch(_PERSON, name):
                out.append(("experimenter", self.experimenter, f"names written 'Last, First' (DANDI's form); got {name!r}"))
                break
        if any(not k.strip() for k in self.keywords):
            out.append(("keywords", self.keywords, "non-empty keywords"))
        return out


@dataclass
class ArrayConfig:
    device: str = ""
    manufacturer: str = ""
    description: str = ""
    location: str = ""
    reference: str = ""
    electrode_x_um: list[float] = field(default_factory=list)
    electrode_y_um: list[float] = field(default_factory=list)
    sampling_rate_hz: float = 0.0

    def check(self):
        out = []
        if len(self.electrode_x_um) != len(self.electrode_y_um):
            out.append(("electrode_y_um", self.electrode_y_um,
                        f"as many positions as array.electrode_x_um ({len(self.electrode_x_um)})"))
        for k in ("electrode_x_um", "electrode_y_um"):
            if any(not math.isfinite(v) for v in getattr(self, k)):
                out.append((k, getattr(self, k), "finite positions in micrometres"))
        if not (math.isfinite(self.sampling_rate_hz) and self.sampling_rate_hz >= 0):
            out.append(("sampling_rate_hz", self.sampling_rate_hz, "a rate in Hz >= 0 (0 = not given)"))
        return out


@dataclass
class ComputeConfig:
    scheduler: str = "local"
    problems_per_shard: int = 0
    probe_batches: int = 3
    max_hours: float = 0.0
    deadline: str = ""
    connect_timeout_s: float = 30.0
    torch_threads: int = 0
    slurm_queue: str = ""
    slurm_account: str = ""
    slurm_jobs: int = 2
    slurm_cores: int = 8
    slurm_memory: str = "32GB"
    slurm_walltime: str = "08:00:00"
    slurm_gpus: int = 0
    slurm_interface: str = ""
    slurm_job_extra: list[str] = field(default_factory=list)

    def check(self):
        out = []
        if not (self.scheduler in ("local", "slurm") or self.scheduler.startswith("tcp://")):
            out.append(("scheduler", self.scheduler, '"local", "slurm" or a Dask scheduler address "tcp://host:8786"'))
        for k in ("probe_batches", "slurm_jobs", "slurm_cores"):
            if getattr(self, k) < 1:
                out.append((k, getattr(self, k), "an integer >= 1"))
        if self.problems_per_shard < 0:
            out.append(("problems_per_shard", self.problems_per_shard, "0 (auto) or an integer >= 1"))
        for k in ("slurm_gpus", "torch_threads"):
            if getattr(self, k) < 0:
                out.append((k, getattr(self, k), "an integer >= 0"))
        if not (math.isfinite(self.max_hours) and self.max_hours >= 0):
            out.append(("max_hours", self.max_hours, "hours >= 0 (0 = no limit)"))
        if not self.connect_timeout_s > 0:
            out.append(("connect_timeout_s", self.connect_timeout_s, "seconds > 0"))
        if self.deadline:
            import datetime as _dt
            import re as _re
            ok = bool(_re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", self.deadline))
            if not ok:
                try:
                    _dt.datetime.fromisoformat(self.deadline)
                    ok = True
                except ValueError:
                    ok = False
            if not ok:
                out.append(("deadline", self.deadline, '"" (none), a clock time "HH:MM" or an ISO date-time "2026-12-01T07:00"'))
        return out


@dataclass
class ReportConfig:
    figure1a_backbones: list[str] = field(default_factory=list)
    figure1a_units: int = 6
    figure1a_images: int = 4
    figure1a_layer: str = ""

    def check(self):
        out = []
        if self.figure1a_layer not in ("",) + tuple(LAYERS):
            out.append(("figure1a_layer", self.figure1a_layer, f'"" (the designing model\'s model.layer) or one of {list(LAYERS)}'))
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
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    session: SessionMetaConfig = field(default_factory=SessionMetaConfig)
    array: ArrayConfig = field(default_factory=ArrayConfig)
    eye: EyeConfig = field(default_factory=EyeConfig)
    fixation: FixationConfig = field(default_factory=FixationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    live_monitor: LiveMonitorConfig = field(default_factory=LiveMonitorConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def day_seed(self, day: int) -> int:
        """The seed of everything random about day ``day`` (image choice, perturbation
        restarts, schedule, bootstrap): one formula for every step."""
        return self.experiment.seed * 1000 + int(day)

    def to_toml(self) -> str:
        """The complete, resolved configuration as TOML text (stored in every day file)."""
        return dumps_toml(self.to_dict())


# --------------------------------------------------------------------------- loading
_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


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
        if not math.isfinite(value):
            raise ConfigError(f"config key '{path}' = {value!r}: expected a finite number (not nan or inf)")
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
    _check_limits(name, obj)
    return obj


# --------------------------------------------------------------------------- sanity limits
# Values outside these ranges are typing slips (a seed of -1, 1e9 clean images, a 10-hour
# trial), refused with the key's name instead of a traceback or a machine that runs out of
# memory. (section, key): (lowest, highest), inclusive; lists are checked element by element.
_U32 = 2 ** 32 - 1
LIMITS: dict[tuple[str, str], tuple[float, float]] = {
    ("experiment", "seed"): (0, _U32), ("experiment", "sites_per_day"): (1, 100_000),
    ("experiment", "images_per_site"): (1, 100_000), ("experiment", "epsilons"): (0, 10_000),
    ("rsvp", "stim_on_ms"): (0, 60_000), ("rsvp", "mask_ms"): (0, 60_000), ("rsvp", "presentations_per_trial"): (1, 1000),
    ("rsvp", "image_size_deg"): (0, 180), ("rsvp", "fixation_window_deg"): (0, 180),
    ("rsvp", "fixation_acquire_ms"): (0, 600_000), ("rsvp", "inter_trial_ms"): (0, 600_000),
    ("window", "start_ms"): (0, 60_000), ("window", "end_ms"): (0, 60_000),
    ("images", "size_px"): (16, 4096), ("images", "n_clean"): (2, 1_000_000),
    ("screening", "repeats"): (2, 100_000), ("schedule", "repeats"): (1, 100_000),
    ("schedule", "min_parent_separation_min"): (0, 100_000),
    ("model", "batch_size"): (1, 1_000_000),
    ("readout", "alphas"): (0, 1e30), ("readout", "cv_folds"): (2, 1000), ("readout", "pls_components"): (1, 100_000),
    ("readout", "score_splits"): (1, 100_000),
    ("perturb", "restarts"): (1, 1_000_000), ("perturb", "steps"): (1, 1_000_000), ("perturb", "prune_rounds"): (1, 1000),
    ("perturb", "early_stop_patience"): (1, 1_000_000), ("perturb", "random_controls_per_image"): (0, 1000),
    ("perturb", "max_batch_rows"): (1, 10_000_000), ("perturb", "early_stop_tolerance"): (0, 1e6),
    ("sim", "n_channels"): (1, 100_000), ("sim", "hidden_width"): (1, 100_000), ("sim", "baseline_hz"): (0, 10_000),
    ("sim", "peak_hz"): (0, 10_000), ("sim", "drive_gain"): (-1e6, 1e6), ("sim", "latency_ms"): (0, 10_000),
    ("sim", "gain_noise_cv"): (0, 100), ("sim", "smoothing_px"): (0, 4096), ("sim", "clock_offset_s"): (-1e9, 1e9),
    ("sim", "clock_drift_ppm"): (-1000, 1000), ("sim", "seed"): (0, _U32),
    ("monitor", "width_cm"): (0, 10_000), ("monitor", "distance_cm"): (0, 100_000), ("monitor", "width_px"): (1, 65_536),
    ("monitor", "height_px"): (1, 65_536), ("monitor", "refresh_hz"): (1, 2000),
    ("presenter", "heartbeat_s"): (0, 3600), ("presenter", "dead_after_s"): (0, 86_400),
    ("presenter", "ack_timeout_s"): (0, 3600),
}
_TEXT_KEYS = {("experiment", "name"), ("images", "source"), ("model", "backbone"), ("model", "weights"), ("model", "pool"),
              ("model", "device"), ("presenter", "endpoint"), ("presenter", "marker_address"), ("paths", "data_dir"),
              ("paths", "feature_cache"), ("presenter", "curve_public_key"), ("presenter", "curve_secret_key"),
              ("presenter", "curve_server_key"), ("presenter", "curve_authorized_keys")}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _check_limits(name: str, obj) -> None:
    for (section, key), (low, high) in LIMITS.items():
        if section != name:
            continue
        value = getattr(obj, key)
        for v in (value if isinstance(value, list) else [value]):
            if not low <= v <= high:
                raise ConfigError(f"config key '{section}.{key}' = {value!r}: expected a value in "
                                  f"[{_num(low)}, {_num(high)}]")
    for section, key in _TEXT_KEYS:
        if section == name:
            value = getattr(obj, key)
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
                raise ConfigError(f"config key '{section}.{key}' = {value!r}: expected text without control "
                                  "characters (newlines, tabs)")
    if name == "experiment" and obj.name.strip() != obj.name or name == "experiment" and not obj.name:
        raise ConfigError(f"config key 'experiment.name' = {obj.name!r}: expected a non-empty name without "
                          "leading or trailing spaces")


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
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's (control characters included)
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
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

