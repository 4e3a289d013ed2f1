"""Where a day's spikes came from, as data (root attributes ``origin`` and ``replayed_from``).

``origin`` is written when the day is recorded:

- ``"sim"``: the in-process simulated monkey (no presenter, no acquisition system);
- ``"presenter+sim"``: the real PsychoPy presenter process, spikes from the simulated monkey;
- ``"live"``: spikes recorded by a live acquisition system.

A replayed day keeps the ``origin`` of the day it replays and adds ``replayed_from`` (the
source file's ``identifier``, a UUID). :func:`read_origin` is the one reader: analysis,
report, ``day check`` and the NWB export all ask it. Day files written before ``origin``
existed get it from :func:`legacy_origin` in the reader's upgrade step, once.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIM, PRESENTER_SIM, LIVE = "sim", "presenter+sim", "live"
ORIGINS = (SIM, PRESENTER_SIM, LIVE)
UNKNOWN = "unknown"   # only for an old file whose provenance was never stored


@dataclass(frozen=True)
class Origin:
    """A day's data origin: ``kind`` (one of :data:`ORIGINS`, or "unknown") and, for a
    replay, the identifier of the day file it re-ran."""

    kind: str
    replayed_from: str = ""

    @property
    def simulated(self) -> bool:
        """The spikes came from the simulated monkey (ground truth exists)."""
        return self.kind in (SIM, PRESENTER_SIM)

    @property
    def live(self) -> bool:
        return self.kind == LIVE

    @property
    def replayed(self) -> bool:
        return bool(self.replayed_from)

    def attrs(self) -> dict[str, str]:
        """The root attributes that store this origin."""
        return {"origin": self.kind, **({"replayed_from": self.replayed_from} if self.replayed_from else {})}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def read_origin(h5_or_attrs: Any) -> Origin:
    """The origin stored in a day file (an open ``h5py.File``, its ``attrs``, a mapping of
    root attributes, or a :class:`rig.store.reader.DayData`)."""
    attrs = getattr(h5_or_attrs, "attrs", h5_or_attrs)
    if not isinstance(attrs, Mapping) and not hasattr(attrs, "get"):
        raise TypeError(f"read_origin needs a day file or its attributes, not {type(h5_or_attrs).__name__}")
    kind = _text(attrs.get("origin")) or UNKNOWN
    if kind not in ORIGINS + (UNKNOWN,):
        raise ValueError(f"day file attribute origin = {kind!r}: expected one of {', '.join(ORIGINS)}")
    return Origin(kind, _text(attrs.get("replayed_from")))


RECORDING_BACKENDS = {"sim": SIM, "presenter": PRESENTER_SIM, "rig": LIVE}   # backend -> origin of its days


def backend_origin(backend: str) -> str:
    """The ``origin`` a backend's recordings have (``"replay"`` keeps its source's)."""
    if backend not in RECORDING_BACKENDS:
        raise ValueError(f"backend {backend!r} records no origin of its own; expected one of "
                         f"{', '.join(RECORDING_BACKENDS)}")
    return RECORDING_BACKENDS[backend]


def legacy_origin(attrs: Mapping) -> Origin:
    """The origin of a day file written before the ``origin`` attribute (schema 1), derived
    once from what it did store: the backend, the ``spike_source`` sentence, the ``sim_*``
    attributes, and a replay's ``replayed_from`` (then a path) / ``replayed_from_identifier``."""
    backend = _text(attrs.get("backend"))
    replayed = bool(_text(attrs.get("replayed_from")))
    recorded_by = _text(attrs.get("replayed_from_backend")) or backend if replayed else backend
    said = (_text(attrs.get("spike_source")) + " " + _text(attrs.get("spike_source_json"))).lower()
    if recorded_by == "sim" or any(str(k).startswith("sim_") for k in attrs) and "recorded by" not in said:
        kind = SIM
    elif said.startswith("simulated"):
        kind = PRESENTER_SIM if recorded_by == "presenter" else SIM
    elif recorded_by == "presenter":
        kind = PRESENTER_SIM     # the presenter backend never had a spike source other than the simulated monkey
    elif recorded_by == "rig" or said.startswith("recorded"):
        kind = LIVE
    else:
        kind = UNKNOWN
    source_id = _text(attrs.get("replayed_from_identifier")) or (_text(attrs.get("replayed_from")) if replayed else "")
    return Origin(kind, source_id)
