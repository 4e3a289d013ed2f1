"""Record one day: plan (or read the plan), open a backend, run the session, store it."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import uuid
from pathlib import Path

import numpy as np

from rig.backend import SessionInfo
from rig.backends.factory import describe_source, make_backend
from rig.config import Config, with_local_settings
from rig.errors import UserError
from rig.paths import day_path, plan_path
from rig.session.runner import SessionLimits, SessionResult, run_session
from rig.session.schedule import Schedule, build_schedule, seconds_per_presentation
from rig.steps.preflight import preflight
from rig.store.dayfile import METADATA_SECTIONS, DayWriter, write_plan
from rig.store.experiment import file_experiment, new_experiment_uuid, same_experiment
from rig.store.origin import Origin, backend_origin
from rig.store.reader import read_day
from stimuli.images import clean_images
from stimuli.stimset import StimulusSet

log = logging.getLogger(__name__)


def slot_seconds(cfg: Config) -> float:
    r = cfg.rsvp
    return seconds_per_presentation(r.stim_on_ms, r.mask_ms, r.presentations_per_trial, r.fixation_acquire_ms, r.inter_trial_ms)


def screening_plan(cfg: Config) -> tuple[StimulusSet, Schedule]:
    """Day 0: the clean image set, each shown ``screening.repeats`` times."""
    pixels, names = clean_images(cfg.images.source, cfg.images.size_px, cfg.images.n_clean, cfg.experiment.seed)
    stimuli = StimulusSet(pixels, source=names)   # each clean image records its source (photograph crop, file)
    schedule = build_schedule(stimuli.parent, cfg.screening.repeats, cfg.rsvp.presentations_per_trial,
                              cfg.experiment.seed, slot_seconds(cfg))
    return stimuli, schedule


def ensure_screening_plan(cfg: Config, folder: Path) -> Path:
    """Write day 0's plan file if it does not exist yet; return its path."""
    path = plan_path(folder, 0)
    if not path.exists():
        stimuli, schedule = screening_plan(cfg)
        write_plan(path, cfg, 0, stimuli, schedule, {"made_by": "screening_plan"},
                   experiment_uuid=new_experiment_uuid())   # day 0 names the experiment
    return path


def record_day(cfg: Config, folder: str | Path, day: int, backend_name: str = "sim", resume: bool = False,
               max_trials: int | None = None) -> SessionResult:
    """Record ``day`` into ``<folder>/day_DDD.h5`` from its plan (day 0's is made here)."""
    folder = Path(folder)
    path = day_path(folder, day)
    if resume:
        _experiment(folder, day, path, file_experiment(path)[1])   # never continue another experiment's file
        writer = DayWriter.resume(path)
        try:
            stored = read_day(path)
            stimuli, schedule = stored.stimuli, stored.schedule()
            session_id = str(stored.attrs["session_id"])
            start_s = _resume_presenter_time(stored)
            preflight(cfg, backend_name)
            backend, channel_names, backend_attrs = make_backend(backend_name, cfg, start_s=start_s)
        except BaseException:
            writer.close()
            raise
    else:
        start_s = 10.0
        cfg, plan, ppath = _read_plan(cfg, folder, day)
        preflight(cfg, backend_name)          # every check that can fail does so before any file is written
        session_id = f"{cfg.experiment.name}-day{day:03d}-{uuid.uuid4().hex[:8]}"
        backend, channel_names, backend_attrs = make_backend(backend_name, cfg, start_s=start_s)
    calibration = _load_calibration(cfg)            # every input checked before a file is made
    r = cfg.rsvp
    info = SessionInfo(session_id=session_id, day=day, stim_on_ms=r.stim_on_ms, mask_ms=r.mask_ms,
                       fixation_acquire_ms=r.fixation_acquire_ms, inter_trial_ms=r.inter_trial_ms,
                       image_size_deg=r.image_size_deg, n_channels=len(channel_names), seed=cfg.day_seed(day))
    monitor, made_plan = None, None
    try:
        if resume and len(channel_names) != writer.n_channels:
            raise UserError(f"the backend records {len(channel_names)} channels but {path} has {writer.n_channels}; "
                            "resume with the same rig")
        monitor = _start_live_monitor(cfg, info, backend_name, channel_names, backend)   # a busy port: before any file
        if not resume:
            if plan is None:
                ppath = made_plan = ensure_screening_plan(cfg, folder)
                plan = read_day(ppath)
            stimuli, schedule = plan.stimuli, plan.schedule()
            experiment = _experiment(folder, day, ppath, plan.attrs) or (new_experiment_uuid() if day == 0 else None)
            writer = DayWriter.create(
                path, config_text=cfg.to_toml(), config=cfg, day=day, session_id=session_id, stimuli=stimuli,
                schedule_stim_index=schedule.stim_index, presentations_per_trial=schedule.presentations_per_trial,
                seconds_per_presentation=schedule.seconds_per_presentation, channel_names=channel_names,
                backend=backend_name, window_ms=(cfg.window.start_ms, cfg.window.end_ms), model_info=plan.model,
                origin=Origin(backend_origin(backend_name)),
                calibration=calibration, experiment_uuid=experiment or "",
                attrs=_new_day_attrs(backend, backend_attrs, ppath, plan, schedule, stimuli))
        elif calibration is not None and not writer.has_calibration:
            writer.set_calibration(calibration)
        if monitor is not None:
            monitor.state.stimuli = stimuli          # the current-stimulus panel
    except BaseException:
        if monitor is not None:
            monitor.close()
        if resume:
            writer.close()
        elif made_plan is not None and not path.exists():
            made_plan.unlink(missing_ok=True)       # a failed start leaves nothing behind
        raise
    try:
        with writer:
            try:
                result = run_session(backend, writer, stimuli, schedule, info, (cfg.window.start_ms, cfg.window.end_ms),
                                     max_trials=max_trials,
                                     observer=monitor.observe if monitor is not None else None, limits=session_limits(cfg))
            finally:
                if hasattr(backend, "source"):          # the live rig: provenance as learnt from the stream
                    desc = backend.source.describe()
                    writer.set_attrs({"spike_source": describe_source(desc),
                                      "spike_source_json": json.dumps(desc, default=str),
                                      **getattr(backend, "clock_zero_end_attrs", dict)()})
            return result
    finally:
        if monitor is not None:
            monitor.close()


def _read_plan(cfg: Config, folder: Path, day: int):
    """(config to record with, the day's plan or None for a day 0 without one, the plan's path).

    The plan is authoritative for the experiment (its stimuli were made for its settings); who
    records, which subject and which array are today's ([subject]/[session]/[array] from ``cfg``),
    and what connects, executes or writes (rig.config.LOCAL_SETTINGS) is never the file's."""
    ppath = plan_path(folder, day)
    if not ppath.exists():
        if day != 0:
            raise UserError(f"day {day} has no plan ({ppath}); run `itloop day plan --day {day} --out {folder}` first")
        return cfg, None, ppath
    plan = read_day(ppath)
    if plan.day != day:
        raise UserError(f"{ppath} is the plan of day {plan.day}, not day {day}; was it copied or renamed? "
                        f"Plan day {day} with `itloop day plan --day {day} --out {folder}`")
    planned_cfg, _ = with_local_settings(dataclasses.replace(plan.config,
                                                             **{k: getattr(cfg, k) for k in METADATA_SECTIONS}), cfg)
    if planned_cfg != cfg:
        log.info(f"note: recording day {day} with the configuration stored in its plan {ppath.name} "
                 "(it differs from the one given)")
    return planned_cfg, plan, ppath


def _new_day_attrs(backend, backend_attrs: dict, ppath: Path, plan, schedule: Schedule, stimuli: StimulusSet) -> dict:
    """Root attributes of a new day file (besides the header's own)."""
    return {**backend_attrs, **_acq_clock_zero(backend), "plan_file": ppath.name,
            **{k: v for k, v in plan.attrs.items() if k == "random_init_model"},
            **_separation_attrs(schedule, stimuli)}


def _load_calibration(cfg: Config) -> dict | None:
    """The eye calibration map of ``eye.calibration_file`` (None when not set); one line if unusable."""
    if not cfg.eye.calibration_file:
        return None
    from rig.sources.calibration import CalibrationMap

    try:
        return CalibrationMap.load(cfg.eye.calibration_file).to_dict()
    except ValueError as exc:
        raise UserError(f"config key 'eye.calibration_file': {exc}") from None


def _experiment(folder: Path, day: int, path: Path, attrs: dict) -> str | None:
    """The experiment ``path`` (a plan or day file of ``day``) belongs to, checked against day 0's
    day file (when ``day`` > 0); a foreign file is a one-line error naming both experiments."""
    files = [(path, attrs)]
    day0 = day_path(folder, 0)
    if day > 0 and day0.exists():
        files.insert(0, file_experiment(day0))
    return same_experiment(files, f"recording day {day}")


def session_limits(cfg: Config) -> SessionLimits:
    """The session's stopping bounds from ``[acquisition]`` and ``[schedule]``."""
    n = cfg.acquisition.max_presentations_without_pulse or 5 * cfg.rsvp.presentations_per_trial
    return SessionLimits(max_without_pulse=n, max_attempts=cfg.schedule.max_attempts,
                         max_drift_ppm=cfg.acquisition.max_drift_ppm, min_drift_span_s=cfg.acquisition.clock_min_drift_span_s)


def _start_live_monitor(cfg: Config, info: SessionInfo, backend_name: str, channel_names: list[str], backend=None):
    """The read-only live page (``[live_monitor]``) on 127.0.0.1, or None when disabled."""
    lm = cfg.live_monitor
    if not lm.enabled:
        return None
    from rig.monitor.server import LiveMonitor
    from rig.monitor.state import MonitorState

    state = MonitorState(session_id=info.session_id, day=info.day, backend=backend_name,
                         window_ms=(cfg.window.start_ms, cfg.window.end_ms),
                         fixation_window_deg=cfg.rsvp.fixation_window_deg, trace_trials=lm.trace_trials,
                         channel_names=channel_names,
                         reward_device=cfg.reward.driver if backend_name in ("rig", "presenter") else "simulated",
                         adapter=_adapter_counters(backend))
    try:
        monitor = LiveMonitor(state, "127.0.0.1", lm.port)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    log.info(f"live monitor: {monitor.url} (read-only; from another computer: "
             f"ssh -N -L {monitor.port}:127.0.0.1:{monitor.port} <user>@<this computer>)")
    return monitor


def _adapter_counters(backend):
    """A callable giving the live adapter's counters (TTLs on other lines, unknown electrodes,
    events of other streams, pulses matched/missing) for the monitor, or None."""
    source = getattr(backend, "source", None)
    if source is None or not hasattr(source, "counters"):
        return None
    return lambda: {**dict(source.counters), **dict(getattr(backend, "stats", {}))}


def _acq_clock_zero(backend) -> dict:
    """Day-file attrs ``acq_clock_zero_utc`` (ISO 8601, UTC, microseconds): the wall time at
    which the acquisition clock read 0 s, the time base of every time in the day file (NWB's
    session_start_time), and ``acq_clock_zero_source`` saying how it was found.

    A backend that can read its acquisition clock offers ``acquisition_time_s()``; the live
    rig reads it from the stream once connected (``RigBackend.session_attrs`` replaces these
    attrs when the session opens); for the others (the simulated monkey's virtual clock) the
    clock is taken to read 0 s now."""
    now = _dt.datetime.now(_dt.timezone.utc)
    read = getattr(backend, "acquisition_time_s", None)
    if getattr(backend, "reads_clock_zero", False):
        return {"acq_clock_zero_utc": now.isoformat(timespec="microseconds"),
                "acq_clock_zero_source": "placeholder until the session opens: the live rig reads it from the stream"}
    if callable(read):
        t = float(read())
        zero = now - _dt.timedelta(seconds=t)
        how = f"wall time at day start minus the acquisition clock's reading then ({t:.6f} s)"
    else:
        zero = now
        how = ("wall time at day start; this backend's acquisition clock is virtual (simulated) or unreadable "
               "and is taken to read 0 s then")
    return {"acq_clock_zero_utc": zero.isoformat(timespec="microseconds"), "acq_clock_zero_source": how}


def _resume_presenter_time(stored) -> float:
    """Presenter-clock time at which the last recorded trial ended (10 s if none): a
    simulated presenter resumes its clock there, as an uninterrupted session would."""
    exact = stored.trials["end_presenter_s"]
    if len(exact) and np.isfinite(exact[-1]):
        return float(exact[-1])
    ends = stored.trials["end_acq_s"]
    if not len(ends) or not np.isfinite(ends[-1]):
        return 10.0
    offset, drift = float(stored.clock.get("fit_offset_s", 0.0)), float(stored.clock.get("fit_drift", 0.0))
    return float((ends[-1] - offset) / (1.0 + drift))


def _separation_attrs(schedule: Schedule, stimuli: StimulusSet) -> dict:
    mean, low = schedule.parent_separation_min(stimuli.parent)
    return {"planned_parent_separation_mean_min": mean, "planned_parent_separation_min_min": low}

