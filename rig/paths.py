"""Where an experiment's files live: one folder, one day file (and journal, plan) per day."""
from __future__ import annotations

from pathlib import Path

EXPERIMENT_TOML = "experiment.toml"  # an experiment folder's configuration, stored by its first `simulate`


def day_path(folder: str | Path, day: int) -> Path:
    """The recording of ``day``: ``<folder>/day_000.h5``."""
    return Path(folder) / f"day_{day:03d}.h5"


def plan_path(folder: str | Path, day: int) -> Path:
    """The plan (stimuli + schedule) of ``day``: ``<folder>/day_000.plan.h5``."""
    return Path(folder) / f"day_{day:03d}.plan.h5"


def model_path(folder: str | Path, through_day: int) -> Path:
    """The readout fitted on days 0..``through_day``: ``<folder>/model_through_000.h5``."""
    return Path(folder) / f"model_through_{through_day:03d}.h5"
