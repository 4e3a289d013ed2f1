"""``itloop simulate``: a screening day and N closed-loop days against the simulated monkey.

Resumable: the experiment's configuration is stored in ``<folder>/experiment.toml`` on the
first run; re-running skips finished steps (plans, days, analyses), resumes an interrupted
day, and refuses a different configuration rather than mix two experiments in one folder.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from modelfit.files import write_atomic
from rig.config import Config, config_from_toml_text, with_local_settings
from rig.errors import UserError
from rig.paths import EXPERIMENT_TOML, day_path, plan_path
from rig.report.write import write_report
from rig.steps.analyze import analyze_day, describe
from rig.steps.plan import plan_day
from rig.steps.record import record_day
from rig.store.reader import DayCache, day_status

log = logging.getLogger(__name__)



def experiment_config(folder: Path, cfg: Config | None) -> Config:
    """The folder's stored config; stores ``cfg`` on first use, refuses a different one later."""
    stored = folder / EXPERIMENT_TOML
    if stored.exists():
        # what connects, executes or writes is the user's (or the default), never the file's
        have, _ = with_local_settings(config_from_toml_text(stored.read_text()), cfg if cfg is not None else Config())
        if cfg is not None and have != cfg:
            raise UserError(f"{folder} holds an experiment with another configuration ({stored}); "
                            "re-run without --config/--demo to continue it, or choose a new --out")
        return have
    if cfg is None:
        raise UserError(f"{folder} is not an itloop experiment folder (no {EXPERIMENT_TOML}); pass --config or --demo")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(stored, cfg.to_toml())
    return cfg


@contextmanager
def _step(name: str):
    """One line per step with its wall time (also without progress bars: logs keep the timings)."""
    t0 = time.monotonic()
    yield
    log.info("[%s: %.0f s]", name, time.monotonic() - t0)


def simulate(cfg: Config | None, folder: str | Path, days: int, report: bool = True) -> Path | None:
    """Run (or finish) the whole experiment; returns the report summary's path."""
    folder = Path(folder)
    if days < 1:
        raise UserError(f"--days {days}: give at least 1 closed-loop day after screening")
    cfg = experiment_config(folder, cfg)
    days_read = DayCache()  # each day file is read once for all the steps that need it
    for day in range(days + 1):
        path = day_path(folder, day)
        if day >= 1 and not path.exists() and not plan_path(folder, day).exists():
            with _step(f"day {day}: refit + plan"):
                plan_day(cfg, folder, day, days=days_read)
        if not path.exists():
            with _step(f"day {day}: recording"):
                record_day(cfg, folder, day, "sim")
        elif day_status(path) != "complete":
            log.info("day %d: resuming the interrupted recording in %s", day, path)
            with _step(f"day {day}: recording (resumed)"):
                record_day(cfg, folder, day, "sim", resume=True)
        if day >= 1 and not (folder / f"day_{day:03d}.analysis.json").exists():
            with _step(f"day {day}: analysis"):
                res, _ = analyze_day(cfg, folder, day, days=days_read)
            log.info(describe(res))
    if not report:
        return None
    with _step("report"):
        summary = write_report(cfg, folder, cache=days_read)
    log.info("report: %s (figures beside it)", summary)
    return summary
