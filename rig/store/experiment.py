"""Which experiment a day file belongs to: root attribute ``experiment_uuid``.

A UUID4 string written on day 0 (its plan and its day file) and copied to every later
day's plan and day file. Planning, fitting and resuming check that every file they use
carries the same one; a file from another experiment is refused with one line naming both.
Files written before the attribute existed carry none: they are accepted as legacy, with a
warning (they cannot be told apart).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from rig.store.dayfile import DayFileError

EXPERIMENT_ATTR = "experiment_uuid"
_log = logging.getLogger(__name__)


def new_experiment_uuid() -> str:
    """A new experiment's identity (UUID4 text)."""
    return str(uuid.uuid4())


def experiment_of(attrs: Mapping) -> str | None:
    """The experiment UUID in a file's root attributes; None for a file written before it existed."""
    value = attrs.get(EXPERIMENT_ATTR)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class ForeignFileError(DayFileError):
    """A file of another experiment where this experiment's file was expected."""


def same_experiment(files: Iterable[tuple[Path, Mapping]], what: str = "this step") -> str | None:
    """The one experiment UUID that ``files`` ((path, root attrs), in order) carry.

    Raises :class:`ForeignFileError` naming both experiments when two files differ; files
    without the attribute (legacy) are accepted with one warning. None when no file has one.
    """
    first: tuple[Path, str] | None = None
    legacy: list[str] = []
    for path, attrs in files:
        exp = experiment_of(attrs)
        if exp is None:
            legacy.append(Path(path).name)
            continue
        if first is None:
            first = (Path(path), exp)
        elif exp != first[1]:
            raise ForeignFileError(
                f"{path} belongs to experiment {exp} but {first[0].name} to experiment {first[1]}; {what} never "
                f"uses another experiment's file (move {Path(path).name} out of {Path(path).parent})")
    if legacy and first is not None:
        _log.warning("%s carr%s no experiment_uuid (written before it existed); used as part of experiment %s",
                     ", ".join(legacy), "ies" if len(legacy) == 1 else "y", first[1])
    elif legacy:
        _log.warning("%s carr%s no experiment_uuid (written before it existed); accepted as a legacy experiment",
                     ", ".join(legacy), "ies" if len(legacy) == 1 else "y")
    return first[1] if first is not None else None


def file_experiment(path: str | Path) -> tuple[Path, dict]:
    """(path, {experiment_uuid: ...}) of a day or plan file, reading that one root attribute."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            value = h5.attrs.get(EXPERIMENT_ATTR)
    except (OSError, RuntimeError, KeyError) as exc:
        raise DayFileError(f"{path} cannot be read ({exc}); it is damaged or not an itloop file") from None
    return Path(path), ({} if value is None else {EXPERIMENT_ATTR: value})
