"""Reading an offline spike sorting through SpikeInterface: :func:`read_sorting` -> :class:`Sorting`.

Two kinds of folder are read: a Kilosort / phy output folder (``params.py`` and
``spike_times.npy``; read with ``spikeinterface.extractors.read_phy``) and any folder a
SortingExtractor was saved to (``sorting.save(folder=...)``; read with
``spikeinterface.load``). SpikeInterface is imported only here and only when a sorting is
read (the optional ``sorting`` extra: ``pip install itloop[sorting]``).

Spike times stay sample indices of the sorted recording; :mod:`rig.store.units` maps
them onto the day's acquisition clock.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rig.errors import UserError

# unit properties that name a unit's channel (phy's cluster_info 'ch', SpikeInterface conventions)
CHANNEL_PROPERTIES = ("ch", "channel", "channel_index", "peak_channel", "max_channel", "extremum_channel",
                      "main_channel_id")
# phy cluster groups left out unless asked for
NOISE_GROUPS = ("noise",)


class SortingError(UserError):
    """A sorting that cannot be read or used; the message names the folder and the fix."""


@dataclass
class Sorting:
    """One segment of a sorting: every unit's spikes as sample indices of the sorted recording."""

    unit_ids: list[str]
    samples: list[np.ndarray]            # int64 sample indices per unit, sorted
    sampling_frequency: float            # Hz
    channel: np.ndarray                  # (n_units,) int channel index per unit; -1 if the sorting does not say
    properties: dict[str, np.ndarray] = field(default_factory=dict)   # quality metrics, labels, ... per unit
    source: str = ""                     # the folder read
    kind: str = ""                       # "phy" or "spikeinterface"

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)


def is_phy_folder(path: Path) -> bool:
    return (path / "params.py").is_file() and (path / "spike_times.npy").is_file()


def _import_spikeinterface():
    try:
        import spikeinterface
        import spikeinterface.extractors
    except ImportError:
        raise SortingError("reading a sorting needs SpikeInterface: pip install 'itloop[sorting]' "
                           "(or pip install spikeinterface)") from None
    return spikeinterface


def read_sorting(path: str | Path, keep_noise: bool = False) -> Sorting:
    """Read a Kilosort/phy folder or a saved SortingExtractor folder (first segment only).

    ``keep_noise``: keep phy clusters labelled ``noise`` (left out by default).
    Raises :class:`SortingError` naming the problem.
    """
    path = Path(path)
    if not path.exists():
        raise SortingError(f"--sorting {path} does not exist; give a Kilosort/phy folder or a saved SpikeInterface sorting")
    si = _import_spikeinterface()
    try:
        if is_phy_folder(path):
            kind = "phy"
            sorting = si.extractors.read_phy(path, exclude_cluster_groups=None)
        else:
            kind = "spikeinterface"
            _check_saved_folder(path)
            sorting = si.load(path)
    except (OSError, ValueError, KeyError, TypeError, AssertionError, NameError) as exc:  # a bad folder, not a crash
        raise SortingError(f"--sorting {path}: SpikeInterface cannot read it ({type(exc).__name__}: {exc}); give a "
                           "Kilosort/phy folder (params.py, spike_times.npy) or a folder made by sorting.save()") from None
    if not hasattr(sorting, "get_unit_spike_train"):
        raise SortingError(f"--sorting {path} holds a {type(sorting).__name__}, not a sorting")
    if sorting.get_num_segments() != 1:
        raise SortingError(f"--sorting {path} has {sorting.get_num_segments()} segments; sort the day's recording as "
                           "one segment (or split the sorting per segment and import each with its --first-sample)")
    return _from_extractor(sorting, path, kind, keep_noise)


def _check_saved_folder(path: Path) -> None:
    """A saved SpikeInterface folder: ``si_folder.json`` naming a SpikeInterface class (never a pickle,
    never a class from elsewhere: nothing read from a data file chooses what code runs)."""
    spec = path / "si_folder.json"
    if not spec.is_file():
        raise SortingError(f"--sorting {path}: SpikeInterface cannot read it (neither a Kilosort/phy folder with "
                           "params.py and spike_times.npy nor a folder made by sorting.save(), with si_folder.json)")
    try:
        cls = str(json.loads(spec.read_text()).get("class", ""))
    except (OSError, ValueError, AttributeError):
        cls = ""
    if not cls.startswith("spikeinterface."):
        raise SortingError(f"--sorting {path}: si_folder.json names class {cls!r}, not a SpikeInterface sorting; "
                           "it is not loaded")


def _from_extractor(sorting, path: Path, kind: str, keep_noise: bool) -> Sorting:
    ids = list(sorting.get_unit_ids())
    keys = list(sorting.get_property_keys())
    props = {k: np.asarray(sorting.get_property(k)) for k in keys}
    keep = np.ones(len(ids), bool)
    if not keep_noise and "quality" in props:
        keep &= ~np.isin(np.asarray(props["quality"]).astype(str), NOISE_GROUPS)
    chan = np.full(len(ids), -1, np.int64)
    for name in CHANNEL_PROPERTIES:
        if name in props and np.asarray(props[name]).dtype.kind in "iuf":
            v = np.asarray(props[name], float)
            chan = np.where(np.isfinite(v), v, -1).astype(np.int64)
            break
    samples = [np.sort(np.asarray(sorting.get_unit_spike_train(u, segment_index=0), np.int64))
               for u, k in zip(ids, keep) if k]
    props = {k: v[keep] for k, v in props.items() if np.ndim(v) == 1 and len(v) == len(ids)}
    return Sorting(unit_ids=[str(u) for u, k in zip(ids, keep) if k], samples=samples,
                   sampling_frequency=float(sorting.get_sampling_frequency()), channel=chan[keep],
                   properties=props, source=str(path), kind=kind)
