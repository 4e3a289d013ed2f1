"""Experiment configuration: TOML -> typed, validated dataclasses.

The defaults live here, in the dataclasses; ``config.toml`` at the repository root is the
same experiment written out with a comment per key (a test keeps the two in step).
A user file overrides the defaults key by key::

    cfg = load_config("my.toml")        # defaults + my.toml
    cfg.rsvp.stim_on_ms                 # 100.0

Every problem (malformed TOML, unknown key, wrong type, impossible value) raises
:class:`ConfigError` with one message naming the key path, the value and what is expected.
Each key's rule (range, unit, the "expected" words) is declared once, beside its field,
with :func:`rig.configschema.key` and checked generically; a section's ``check()`` holds
only rules between its fields. ``[perturb]`` and ``[sim]`` take their rules from their
runtime dataclasses (``stimuli.params.PerturbParams``, ``sim.params.SimParams``).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import logging
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import rig.backend as _rsvp  # the RSVP defaults (STIM_ON_MS, ...) are defined once, with the interfaces
from modelfit.names import LAYERS, pool_grid
from rig.configschema import ConfigError, build_section, dumps_toml, key, merge, parse_toml, section_problems
from sim.params import SimParams
from stimuli.params import PerturbParams

__all__ = ["ConfigError", "Config", "load_config", "config_from_dict", "config_from_toml_text", "parse_toml",
           "dumps_toml", "frames_for", "section_problems"]
_U32 = 2 ** 32 - 1
Problems = list[tuple[str, Any, str]]
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sections
@dataclass
class ExperimentConfig:
    name: str = key("itloop", pattern=r"\S(.*\S)?",
                    expected="text without control characters, not empty, without leading or trailing spaces")
    seed: int = key(0, low=0, high=_U32)
    sites_per_day: int = key(21, low=1, high=100_000, unit="sites")
    images_per_site: int = key(42, low=1, high=100_000, unit="clean images")
    epsilons: list[float] = key(factory=lambda: [0.5, 1.0, 2.0, 3.0], low=0, high=10_000, nonempty=True,
                                expected="a non-empty list of L2 norms (pixels in [0,1]) in [0, 10000]")


@dataclass
class RsvpConfig:
    stim_on_ms: float = key(_rsvp.STIM_ON_MS, low=0, low_open=True, high=60_000, unit="ms")
    mask_ms: float = key(_rsvp.MASK_MS, low=0, low_open=True, high=60_000, unit="ms")
    presentations_per_trial: int = key(5, low=1, high=1000)
    image_size_deg: float = key(_rsvp.IMAGE_SIZE_DEG, low=0, low_open=True, high=180, unit="deg")
    fixation_window_deg: float = key(_rsvp.FIXATION_WINDOW_DEG, low=0, low_open=True, high=180, unit="deg")
    fixation_acquire_ms: float = key(_rsvp.FIXATION_ACQUIRE_MS, low=0, high=600_000, unit="ms")
    inter_trial_ms: float = key(_rsvp.INTER_TRIAL_MS, low=0, high=600_000, unit="ms")


@dataclass
class WindowConfig:
    start_ms: float = key(_rsvp.COUNT_WINDOW_MS[0], low=0, high=60_000, unit="ms after stimulus onset")
    end_ms: float = key(_rsvp.COUNT_WINDOW_MS[1], low=0, high=60_000, unit="ms after stimulus onset")

    def check(self) -> Problems:
        if self.end_ms <= self.start_ms:
            return [("end_ms", self.end_ms, f"a time after window.start_ms ({self.start_ms} ms)")]
        return []


@dataclass
class ImagesConfig:
    source: str = "builtin"
    size_px: int = key(224, low=16, high=4096, unit="pixels per side")
    n_clean: int = key(640, low=2, high=1_000_000)


@dataclass
class ScreeningConfig:
    repeats: int = key(20, low=2, high=100_000, expected="an integer in [2, 100000] (split halves need two repeats)")
    reliability_threshold: float = key(0.5, low=-1, high=1, expected="a correlation in [-1, 1]")


@dataclass
class ScheduleConfig:
    repeats: int = key(10, low=1, high=100_000)
    min_parent_separation_min: float = key(10.0, low=0, high=100_000, unit="minutes")
    max_attempts: int = key(10, low=0, high=1_000_000, expected="an integer >= 0 (0: unbounded)")  # per planned presentation


def _pool_ok(pool: str) -> bool:
    try:
        pool_grid(pool)
    except ValueError:
        return False
    return True


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    layer: str = key("layer4", choices=tuple(LAYERS))
    weights: str = ""
    batch_size: int = key(32, low=1, high=1_000_000)
    channels_last: bool = True
    bf16: bool = False
    device: str = "cpu"
    pool: str = key("avg", test=lambda v: _pool_ok(v),   # readout features: global average or a k x k grid of averages
                    expected="'avg' (global average) or 'grid<k>' with k = 1..8 (e.g. 'grid2')")


@dataclass
class ReadoutConfig:
    method: Literal["ridge", "pls"] = "ridge"
    alphas: list[float] = key(factory=lambda: [float(10.0**k) for k in range(-2, 7)], low=0, low_open=True, high=1e30,
                              nonempty=True, expected="a non-empty list of ridge penalties in (0, 1e30]")
    cv_folds: int = key(5, low=2, high=1000)
    pls_components: int = key(25, low=1, high=100_000)
    score_splits: int = key(10, low=1, high=100_000)
    score_train_fraction: float = key(0.9, low=0, high=1, low_open=True, high_open=True, expected="a fraction in (0, 1)")


@dataclass
class PerturbConfig(PerturbParams):
    """``[perturb]``: the perturbation engine's settings. Fields and rules are
    :class:`stimuli.params.PerturbParams`'s (declared once, there); only the defaults that pick
    the fastest path on the machine at hand differ (the engine's own defaults are fixed)."""

    max_batch_rows: int = 0      # 0 = as large as fits the device (measured once per process)
    precision: Literal["fp32", "tf32", "bf16", "auto"] = "auto"
    memory_format: Literal["contiguous", "channels_last", "auto"] = "auto"
    compile: Literal["off", "on", "auto"] = "auto"

    def check(self) -> Problems:
        return self.problems()


@dataclass
class SimConfig(SimParams):
    """``[sim]``: the simulated monkey's parameters. Fields, defaults and rules are
    :class:`sim.params.SimParams`'s (declared once, there)."""

    def check(self) -> Problems:
        return self.problems()


@dataclass
class MonitorConfig:
    width_cm: float = key(53.0, low=0, low_open=True, high=10_000, unit="cm")
    distance_cm: float = key(57.0, low=0, low_open=True, high=100_000, unit="cm")
    width_px: int = key(1920, low=1, high=65_536)
    height_px: int = key(1080, low=1, high=65_536)
    refresh_hz: float = key(60.0, low=1, high=2000, unit="Hz")
    fullscreen: bool = True
    frame_tolerance: float = key(0.1, low=0, high=0.5, high_open=True, expected="a fraction of a frame in [0, 0.5)")


@dataclass
class PresenterConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    heartbeat_s: float = key(0.5, low=0, low_open=True, high=3600, unit="s")
    dead_after_s: float = key(3.0, low=0, low_open=True, high=86_400, unit="s")
    ack_timeout_s: float = key(1.0, low=0, low_open=True, high=3600, unit="s")
    marker: Literal["none", "parallel", "serial", "zmq"] = "none"
    marker_address: str = ""
    photodiode: bool = True
    curve_public_key: str = ""
    curve_secret_key: str = ""
    curve_server_key: str = ""
    curve_authorized_keys: str = ""

    def check(self) -> Problems:
        if self.dead_after_s <= self.heartbeat_s:
            return [("dead_after_s", self.dead_after_s, f"longer than presenter.heartbeat_s ({self.heartbeat_s} s)")]
        return []


# ---- eye tracking, fixation control, reward, live monitor (issue 12) ----
@dataclass
class EyeConfig:
    source: Literal["none", "lsl", "eyelink"] = "none"
    lsl_stream: str = key("itloop-gaze", pattern=r".+", expected="the name of the gaze LSL stream")
    resolve_timeout_s: float = key(10.0, low=0, low_open=True, unit="s")
    units: Literal["deg", "raw"] = "deg"
    eyelink_address: str = "100.1.1.1"
    calibration_file: str = ""


@dataclass
class FixationConfig:
    acquire_timeout_ms: float = key(5000.0, low=0, low_open=True, unit="ms")
    lost_ms: float = key(100.0, low=0, low_open=True, unit="ms")
    check_lead_ms: float = key(4.0, low=0, expected="milliseconds >= 0 (0: check right after each flip)")
    calibration_points: int = key(9, choices=(5, 9))
    calibration_spread_deg: float = key(5.0, low=0, low_open=True, unit="deg")
    calibration_window_deg: float = key(3.0, low=0, low_open=True, unit="deg")
    calibration_hold_ms: float = key(300.0, low=0, low_open=True, unit="ms")
    calibration_timeout_ms: float = key(5000.0, low=0, low_open=True, unit="ms")
    calibration_model: Literal["affine", "quadratic"] = "affine"


@dataclass
class RewardConfig:
    driver: Literal["none", "serial", "sim"] = "none"
    port: str = ""
    mode: Literal["command", "ttl"] = "command"
    baud: int = key(9600, low=1)
    duration_ms: float = key(100.0, low=0, unit="ms")
    manual_key: str = "r"

    def check(self) -> Problems:
        if self.driver == "serial" and not self.port:
            return [("port", self.port, "a serial device (e.g. /dev/ttyUSB0) when reward.driver = 'serial'")]
        return []


@dataclass
class LiveMonitorConfig:
    enabled: bool = False
    port: int = key(8765, low=0, high=65535, expected="a TCP port in [0, 65535] (0: any free port)")
    trace_trials: int = key(3, low=1)


@dataclass
class DisplayConfig:
    image_scaling: Literal["smooth", "integer"] = "smooth"
    gamma_monitor: str = ""


# --- [acquisition]: the live rig's spike source (issue 11) -----------------------------
@dataclass
class AcquisitionConfig:
    system: Literal["openephys", "lsl"] = "openephys"
    host: str = "127.0.0.1"
    event_port: int = key(5557, low=1, high=65535, expected="a TCP port in 1..65535")
    http_port: int = key(37497, low=1, high=65535, expected="a TCP port in 1..65535")
    http_control: bool = True
    n_channels: int = key(32, low=1)
    electrode_prefix: str = "Electrode "
    ttl_line: int = key(0, low=0, expected="a TTL line number >= 0")
    lsl_spike_stream: str = "itloop-spikes"
    lsl_ttl_stream: str = "itloop-ttl"
    lsl_marker_outlet: str = "itloop-markers"
    lsl_resolve_s: float = key(5.0, low=0, low_open=True, unit="s")
    pulse_tolerance_ms: float = key(3.0, low=0, low_open=True, unit="ms")
    wait_ms: float = key(1000.0, low=0, low_open=True, unit="ms")
    max_residual_ms: float = key(0.5, low=0, low_open=True, unit="ms")
    max_drift_ppm: float = key(1000.0, low=0, low_open=True, unit="ppm")
    sim_sample_rate_hz: float = key(30000.0, low=0, low_open=True, unit="Hz")
    sim_drop_fraction: float = key(0.01, low=0, high=0.5, high_open=True, expected="a fraction in [0, 0.5)")
    sim_extra_fraction: float = key(0.0, low=0, high=0.5, high_open=True, expected="a fraction in [0, 0.5)")
    sim_jitter_ms: float = key(1.0, low=0, unit="ms")
    clock_min_drift_span_s: float = key(5.0, low=0, unit="s")     # sync pulses must span this long before a drift is fitted
    max_presentations_without_pulse: int = key(0, low=0, expected="an integer >= 0 (0: five trials' worth)")  # in a row: stop
    min_valid_fraction: float = key(0.5, low=0, high=1, expected="a fraction in [0, 1]")  # `day check` floor, shown presentations
    spike_stream: str = ""                      # Open Ephys stream of the spikes ("": the first one seen)
    ttl_stream: str = ""                        # Open Ephys stream of the sync TTL ("": spike_stream)
    sim_ttl: Literal["photodiode", "free", "periodic"] = "photodiode"   # sim-rig scenarios (see sim.acquisition)
    sim_pulse_jitter_ms: float = key(0.25, low=0, unit="ms")
    sim_started_early_s: float = key(0.0, low=0, unit="s")
    sim_two_streams: bool = False
    sim_refuse_record: bool = False


@dataclass
class PathsConfig:
    feature_cache: str = "cache/features"


# ------------------------------------------------------------ metadata for sharing (NWB / DANDI)
# Empty strings mean "not given": they pass validation (a simulated day needs none of them),
# but `itloop day export` refuses to write a live recording's NWB until the keys named in
# rig.store.nwb.REQUIRED_FOR_LIVE are filled in.
_ISO_DURATION = (r"P(?!$)(\d+(?:\.\d+)?Y)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?W)?(\d+(?:\.\d+)?D)?"
                 r"(T(?=\d)(\d+(?:\.\d+)?H)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?S)?)?")  # nwbinspector 0.7.2's duration_regex
_SPECIES = r"([A-Z][a-z]* [a-z]+)|(http://purl\.obolibrary\.org/obo/NCBITaxon_\d+)"  # nwbinspector 0.7.2's species form
_PERSON = r"([\w\s\-\.']+),\s+([\w\s\-\.']+)"  # DANDI's "Last, First" (nwbinspector 0.7.2 check_experimenter_form)


def _iso_age_ok(age: str) -> bool:
    if not age or re.fullmatch(_ISO_DURATION, age):
        return True
    lo, sep, hi = age.partition("/")
    return bool(sep) and (lo or hi) != "" and all(x == "" or re.fullmatch(_ISO_DURATION, x) for x in (lo, hi))


def _iso_date_ok(text: str) -> bool:
    try:
        return not text or bool(_dt.datetime.fromisoformat(text))
    except ValueError:
        return False


def _deadline_ok(text: str) -> bool:
    return not text or bool(re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", text)) or _iso_date_ok(text)


@dataclass
class SubjectConfig:
    id: str = key("", pattern=r"[A-Za-z0-9-]*",
                  expected="letters, digits and '-' only (it names the DANDI folder sub-<id>)")
    species: str = key("Macaca mulatta", pattern=f"({_SPECIES})?",
                       expected="a Latin binomial ('Macaca mulatta') or an NCBI taxonomy URL")
    sex: Literal["", "M", "F", "U", "O"] = ""
    age: str = key("", test=_iso_age_ok, expected="an ISO 8601 duration such as 'P7Y' or 'P6Y3M', or a range 'P6Y/P8Y'")
    date_of_birth: str = key("", test=_iso_date_ok, expected="an ISO 8601 date such as '2018-04-21'")
    description: str = key("", multiline=True)


@dataclass
class SessionMetaConfig:
    experimenter: list[str] = key(factory=list, pattern=_PERSON, expected="names written 'Last, First' (DANDI's form)")
    lab: str = ""
    institution: str = ""
    keywords: list[str] = key(factory=lambda: ["inferior temporal cortex", "macaque", "adversarial perturbations",
                                               "closed-loop", "RSVP"], pattern=r".*\S.*", expected="non-empty keywords")
    protocol: str = ""


@dataclass
class ArrayConfig:
    device: str = ""
    manufacturer: str = ""
    description: str = key("", multiline=True)
    location: str = ""
    reference: str = ""
    electrode_x_um: list[float] = key(factory=list, unit="micrometres")
    electrode_y_um: list[float] = key(factory=list, unit="micrometres")
    sampling_rate_hz: float = key(0.0, low=0, expected="a rate in Hz >= 0 (0 = not given)")

    def check(self) -> Problems:
        if len(self.electrode_x_um) != len(self.electrode_y_um):
            return [("electrode_y_um", self.electrode_y_um,
                     f"as many positions as array.electrode_x_um ({len(self.electrode_x_um)})")]
        return []


# connection and job-script settings (issue 25): strict forms, nothing a shell or a job script
# could read as more than one word
_SCHEDULER_RE = r"tcp://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]):(\d{1,5})"
_SLURM_WORD_RE = r"[A-Za-z0-9_.,:=/@%+-]*"          # a queue, an account, "32GB", "08:00:00", "ib0"
_SLURM_DIRECTIVE_RE = r"-{1,2}[A-Za-z][A-Za-z0-9_.,:=/@%+-]*"   # one #SBATCH option: "--constraint=a100"
_SLURM_WORDS = "letters, digits and _ . , : = / @ % + - only (no spaces, quotes, newlines or shell characters)"


def scheduler_address_ok(address: str) -> bool:
    """A Dask scheduler address ``tcp://host:port`` (port 1..65535), nothing else."""
    m = re.fullmatch(_SCHEDULER_RE, address)
    return m is not None and 1 <= int(m.group(1)) <= 65535


@dataclass
class ComputeConfig:
    scheduler: str = key("local", test=lambda v: v in ("local", "slurm") or scheduler_address_ok(v),
                         expected=('"local", "slurm" or a Dask scheduler address "tcp://host:8786" '
                                   "(host: letters, digits, '.', '-'; port 1..65535)"))
    problems_per_shard: int = key(0, low=0, expected="0 (auto) or an integer >= 1")
    probe_batches: int = key(3, low=1)
    max_hours: float = key(0.0, low=0, expected="hours >= 0 (0 = no limit)")
    deadline: str = key("", test=_deadline_ok,
                        expected='"" (none), a clock time "HH:MM" or an ISO date-time "2026-12-01T07:00"')
    connect_timeout_s: float = key(30.0, low=0, low_open=True, unit="s")
    torch_threads: int = key(0, low=0)
    slurm_queue: str = key("", pattern=_SLURM_WORD_RE, expected=_SLURM_WORDS)
    slurm_account: str = key("", pattern=_SLURM_WORD_RE, expected=_SLURM_WORDS)
    slurm_jobs: int = key(2, low=1)
    slurm_cores: int = key(8, low=1)
    slurm_memory: str = key("32GB", pattern=_SLURM_WORD_RE, expected=_SLURM_WORDS)
    slurm_walltime: str = key("08:00:00", pattern=_SLURM_WORD_RE, expected=_SLURM_WORDS)
    slurm_gpus: int = key(0, low=0)
    slurm_interface: str = key("", pattern=_SLURM_WORD_RE, expected=_SLURM_WORDS)
    slurm_job_extra: list[str] = key(factory=list, pattern=_SLURM_DIRECTIVE_RE,
                                     expected=("sbatch options written '--name=value' (letters, digits and "
                                               "_ . , : = / @ % + - only)"))


@dataclass
class ReportConfig:
    figure1a_backbones: list[str] = field(default_factory=list)
    figure1a_units: int = key(6, low=1, expected="an integer >= 1 (model units per backbone)")
    figure1a_images: int = key(4, low=1, expected="an integer >= 1 (clean images)")
    figure1a_layer: str = key("", choices=("",) + tuple(LAYERS),
                              expected=f'"" (the designing model\'s model.layer) or one of {list(LAYERS)}')


@dataclass
class UniversalConfig:
    """Site-universal perturbations (issue 23): one delta per (site, epsilon, direction)."""

    enabled: bool = False
    heldout_images: int = key(4, low=0, high=100_000, expected="an integer >= 0 (held-out clean images per site)")
    restarts: int = key(0, low=0, high=1_000_000, expected="an integer >= 0 (0: perturb.restarts)")
    steps: int = key(0, low=0, high=1_000_000, expected="an integer >= 0 (0: perturb.steps)")
    random_controls: int = key(1, low=0, high=1000, expected="an integer >= 0")
    subspace_images: int = key(0, low=0, high=100_000, expected="an integer >= 0")
    subspace_k: list[int] = key(factory=lambda: [1, 2, 4], low=1, high=100_000, nonempty=True,
                                expected="a non-empty list of subspace sizes >= 1")
    whitebox: bool = True

    def check(self) -> Problems:
        if self.enabled and self.heldout_images < 1:
            return [("heldout_images", self.heldout_images, "an integer >= 1 when universal.enabled")]
        return []


@dataclass
class GeometryConfig:
    """Response along a line and on a plane through clean images (issue 23)."""

    enabled: bool = False
    pairs_per_site: int = key(1, low=1, high=100_000, expected="an integer >= 1")
    steps_per_side: int = key(3, low=2, high=1000, expected="an integer >= 2 (a curvature needs >= 3 points with t = 0)")
    plane: bool = False
    plane_steps_per_side: int = key(2, low=1, high=100, expected="an integer >= 1")


@dataclass
class BudgetConfig:
    """The day's presentation budget and the CI width the planner sizes analyses for (issue 23)."""

    max_presentations: int = key(0, low=0, high=10**12, expected="an integer >= 0 (0 = no limit)")
    ci_halfwidth_spikes: float = key(0.5, low=0, low_open=True, high=1e6, unit="spikes",
                                     expected="a CI half-width > 0 (spikes)")


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
    universal: UniversalConfig = field(default_factory=UniversalConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

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


# keys older itloop versions wrote into every day file's stored config; read and ignored
RETIRED_KEYS = {("paths", "data_dir")}   # never used: experiment folders are always given (--out)


def config_from_dict(data: dict) -> Config:
    """Build a validated :class:`Config` from a (partial) nested dict of overrides."""
    hints = typing.get_type_hints(Config)
    cfg = Config()
    for name, table in data.items():
        if isinstance(table, dict):
            table = {k: v for k, v in table.items() if (name, k) not in RETIRED_KEYS}
        if name not in _SECTIONS:
            raise ConfigError(
                f"config section '{name}' is unknown; the sections are: {', '.join(sorted(_SECTIONS))}"
            )
        setattr(cfg, name, build_section(name, hints[name], table))
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
        if not data:
            _log.warning("config file %s sets nothing: every setting is config.toml's default", p)
    if overrides:
        data = merge(data, overrides)
    return config_from_dict(data)


def config_from_toml_text(text: str) -> Config:
    """Rebuild a config from the TOML text stored in a day file."""
    return config_from_dict(parse_toml(text, "stored config"))


# ---- settings a data file never chooses (issue 25) ----------------------------------------
# What connects (addresses, ports, keys), executes (the Dask scheduler, SLURM job scripts) or
# chooses where to write comes only from the user's own --config (or the defaults), never from
# the configuration stored in a day, plan or experiment file: a file is data, not a command.
# section: its keys, or () for the whole section
LOCAL_SETTINGS: dict[str, tuple[str, ...]] = {
    "compute": (), "paths": (), "live_monitor": (),
    "presenter": ("endpoint", "marker", "marker_address", "curve_public_key", "curve_secret_key",
                  "curve_server_key", "curve_authorized_keys"),
    "acquisition": ("host", "event_port", "http_port", "http_control"),
    "eye": ("eyelink_address",), "reward": ("port",),
}


def local_setting_names(cfg: Config) -> list[str]:
    """``section.key`` of every setting in :data:`LOCAL_SETTINGS`."""
    return [f"{sec}.{k}" for sec, keys in LOCAL_SETTINGS.items()
            for k in (keys or [f.name for f in dataclasses.fields(getattr(cfg, sec))])]


def with_local_settings(stored: Config, user: Config) -> tuple[Config, list[str]]:
    """``stored`` (read from a data file) with every :data:`LOCAL_SETTINGS` key taken from
    ``user`` (the user's config or the defaults); also the ``section.key`` names whose stored
    value was set aside."""
    out = copy.deepcopy(stored)
    dropped = []
    for name in local_setting_names(stored):
        sec, key = name.split(".")
        mine = getattr(getattr(user, sec), key)
        if getattr(getattr(stored, sec), key) != mine:
            dropped.append(name)
        setattr(getattr(out, sec), key, copy.deepcopy(mine))
    return out, dropped


def frames_for(duration_ms: float, refresh_hz: float, tolerance: float = 0.1) -> int | None:
    """Whole number of frames for ``duration_ms`` at ``refresh_hz``; None if not within tolerance."""
    n = duration_ms * refresh_hz / 1000.0
    k = round(n)
    return k if k >= 1 and abs(n - k) <= tolerance else None

