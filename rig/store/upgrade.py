"""Day files written by older itloop versions, brought to the current layout when read.

The one place that knows older layouts (``rig.store.dayfile.SCHEMA_VERSION`` says which is
current). The reader hands every file whose ``schema_version`` is older to :func:`upgrade`,
in memory; nothing on disk is changed. What changed, by version:

- 1 -> 2: root attributes ``origin`` (derived once from the old ``spike_source`` sentence,
  :func:`rig.store.origin.legacy_origin`), ``replayed_from`` (the source's identifier, was its
  path), ``experiment_uuid`` ("": unknown) and, for the first files, ``identifier`` (a UUID
  derived from the session id, creation time, day and backend: the same on every read); files of the first version 1 lack the
  ``/eye`` and ``/rewards`` tables and their ``eye_end``/``reward_end`` row counters, the
  ``/sync/segment`` labels and ``/stimuli/epsilon_index`` with its planned grid.
"""
from __future__ import annotations

import uuid

import numpy as np

from rig.store.origin import legacy_origin


def upgrade(version: int, attrs: dict, tables: dict[str, np.ndarray], stimuli: dict[str, np.ndarray],
            grid: np.ndarray | None, metadata: dict[str, dict], config_text: str) -> np.ndarray:
    """Bring a version-``version`` file's contents to the current layout, in place.

    ``attrs``: root attributes; ``tables``: every growing table by dataset path (committed
    rows of /trials, all rows of the others); ``stimuli``: the /stimuli columns; ``grid``:
    the stored planned epsilon grid (None if absent); ``metadata``: the /metadata sections
    (filled from ``config_text``, the stored config, where absent). Returns the planned grid.
    """
    if version < 2:
        origin = legacy_origin(attrs)
        for key in ("replayed_from", "replayed_from_identifier"):
            attrs.pop(key, None)
        attrs.update(origin.attrs())
        attrs.setdefault("experiment_uuid", "")
        if not attrs.get("identifier"):   # the same UUID on every read: from the session's own facts
            key = (f"itloop:{attrs.get('session_id', '')}:{attrs.get('created_utc', '')}:{attrs.get('day', '')}:"
                   f"{attrs.get('backend', '')}")
            attrs["identifier"] = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        _add_missing_tables(tables)
        _derive_presentation_columns(tables)
        _metadata_from_config(metadata, config_text)
        if "epsilon_index" not in stimuli:
            stimuli["epsilon_index"], grid = legacy_epsilon_index(stimuli["kind"], stimuli["epsilon_requested"])
    attrs["schema_version_read"] = version
    return np.asarray(grid, np.float64).reshape(-1) if grid is not None else np.zeros(0)


def _derive_presentation_columns(tables: dict[str, np.ndarray]) -> None:
    """Presentations recorded before the invalid reason and the fixation tri-state: reason
    "no onset time" for every invalid row (the cause was not stored) and fixation held/broken
    from ``fixation_ok`` (whether it was monitored was not stored)."""
    from rig.backend import Fixation, InvalidReason

    valid = np.asarray(tables["presentations/valid"], bool)
    if "presentations/invalid_reason" not in tables:
        tables["presentations/invalid_reason"] = np.where(valid, 0, int(InvalidReason.NO_ONSET_TIME)).astype(np.uint8)
    if "presentations/fixation" not in tables:
        ok = np.asarray(tables["presentations/fixation_ok"], bool)
        tables["presentations/fixation"] = np.where(ok, int(Fixation.HELD), int(Fixation.BROKEN)).astype(np.uint8)


def _add_missing_tables(tables: dict[str, np.ndarray]) -> None:
    """Empty eye/reward tables and zero row counters for the days recorded before them;
    '' clock segment labels for sync pulses stored before segments."""
    from rig.store.dayfile import EYE_COLUMNS, REWARD_COLUMNS

    n_trials = len(tables["trials/trial_index"])
    for counter in ("eye_end", "reward_end"):
        tables.setdefault(f"trials/{counter}", np.zeros(n_trials, "i8"))
    for group, columns in (("eye", EYE_COLUMNS), ("rewards", REWARD_COLUMNS)):
        for name, dt, _, _ in columns:
            tables.setdefault(f"{group}/{name}", np.zeros(0, dt))
    tables.setdefault("sync/segment", np.array([""] * len(tables["sync/acq_s"]), dtype=object))


def _metadata_from_config(metadata: dict[str, dict], config_text: str) -> None:
    """The [subject]/[session]/[array] sections of the stored config, for files written before /metadata."""
    import tomllib

    from rig.store.dayfile import METADATA_SECTIONS

    try:
        parsed = tomllib.loads(config_text or "")
    except tomllib.TOMLDecodeError:
        parsed = {}
    for k in METADATA_SECTIONS:
        section = parsed.get(k, {})
        metadata.setdefault(k, section if isinstance(section, dict) else {})


def legacy_epsilon_index(kind: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(epsilon_index, planned grid) of a file written before /stimuli/epsilon_index existed.

    The one place a grid is derived from the stored values: the engine copied each requested
    epsilon verbatim from the planned list, so the distinct values of the perturbed stimuli,
    sorted, are that list's entries (in ascending order) and match exactly.
    """
    perturbed = np.asarray(kind) != "clean"
    grid = np.unique(np.asarray(requested, np.float64)[perturbed])
    index = np.full(len(kind), -1, np.int64)
    index[perturbed] = np.searchsorted(grid, np.asarray(requested, np.float64)[perturbed])
    return index, grid
