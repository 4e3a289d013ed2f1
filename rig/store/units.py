"""Sorted units into a recorded day: a NEW day file whose sites are the units of an offline sorting.

:func:`write_units_day` reads a recorded day (never changing it) and a :class:`Sorting`
(:mod:`rig.store.sorting`), maps every spike's sample index onto the day's acquisition
clock, ``t_acq_s = (sample + first_sample) / sampling_frequency`` (the acquisition clock
is the acquisition system's sample counter over its rate, so ``first_sample`` is the
counter's value at the sorted recording's first sample: Open Ephys ``sample_numbers[0]``),
and recounts every presentation's window per unit at the day's stored onsets (the
day's own clock fit, segment by segment, put those onto the acquisition clock). The new
file keeps everything else (stimuli, schedule, trials, presentations, sync, eye,
rewards, model, config), so ``model fit``, ``day analyze``, ``report`` and ``day export``
read it as any day. What changes::

    /channels/names     one name per unit: "unit <id> (ch <channel name>)"
    /spikes/counts      (n_presentations, n_units) spikes in the day's window
    /spikes/times_s, /spikes/channel   the sorted spikes (channel = unit row), time order
    /trials/spikes_end  where each trial's spikes end in /spikes/times_s (spikes are cut at trial ends)
    /stimuli/site       the unit standing for the targeted channel (its unit with the most spikes;
                        -1 if the sorting has none there); the recorded channel is kept in
                        /stimuli/site_channel
    /model/site_channels, /model/target_channels   the same for the designing model's readout
                        columns and targets (so ``day analyze`` reads units); the channels are
                        kept in /model/site_channels_recorded, /model/target_channels_recorded
    /units/...          unit_id, channel, channel_name, n_spikes, rate_hz, presence_ratio,
                        rate_drift, stable, and every property of the sorting (quality
                        metrics, phy labels) under /units/properties/
    root attrs          identifier (new), units_from, units_from_identifier, sorting_*,
                        sites_are = "units", spike_source (says it is an offline sorting)
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from analysis.stability import MAX_DRIFT, MIN_PRESENCE, unit_stability
from rig.session.clock import window_counts
from rig.store.dayfile import DayFileError, _describe, _growing
from rig.store.reader import DayData, read_day
from rig.store.sorting import Sorting, SortingError

log = logging.getLogger(__name__)
_REPLACED = ("channels", "spikes")


def spikes_on_acq_clock(sorting: Sorting, first_sample: int = 0) -> list[np.ndarray]:
    """Every unit's spike times, s on the acquisition clock: (sample + first_sample) / rate."""
    fs = sorting.sampling_frequency
    return [(np.asarray(s, np.int64) + int(first_sample)).astype(np.float64) / fs for s in sorting.samples]


def unit_counts(day: DayData, unit_times_s: list[np.ndarray]) -> np.ndarray:
    """(n_presentations, n_units) spikes per presentation in the day's window, at its stored onsets."""
    times = np.concatenate(unit_times_s) if unit_times_s else np.zeros(0)
    units = np.concatenate([np.full(len(t), u) for u, t in enumerate(unit_times_s)]) if unit_times_s else np.zeros(0, int)
    return window_counts(times, units, day.presentations["onset_acq_s"], len(unit_times_s), *day.window_ms)


def _check_overlap(day: DayData, unit_times_s: list[np.ndarray], sorting: Sorting, first_sample: int) -> None:
    """Refuse a sorting whose spikes do not span the day's trials (a wrong rate or first sample):
    the first spike must come before 5 % of the trials' span has passed, the last after 95 %."""
    t0, t1 = float(np.nanmin(day.trials["start_acq_s"])), float(np.nanmax(day.trials["end_acq_s"]))
    allt = np.concatenate(unit_times_s) if unit_times_s else np.zeros(0)
    slack = 0.05 * (t1 - t0)
    if not len(allt) or allt.min() > t0 + slack or allt.max() < t1 - slack:
        lo, hi = (float(allt.min()), float(allt.max())) if len(allt) else (np.nan, np.nan)
        raise SortingError(
            f"the sorting's spikes ({lo:.3f}-{hi:.3f} s on the acquisition clock with --first-sample {first_sample} at "
            f"{sorting.sampling_frequency:g} Hz) do not span the day's trials ({t0:.3f}-{t1:.3f} s); give "
            "--first-sample = the acquisition's sample number at the sorted recording's first sample")


def _site_units(day: DayData, sorting: Sorting, n_spikes: np.ndarray) -> np.ndarray:
    """For each recorded channel, the unit on it with the most spikes (-1 if none)."""
    best = np.full(day.n_channels, -1, np.int64)
    for c in range(day.n_channels):
        on = np.flatnonzero(sorting.channel == c)
        if len(on):
            best[c] = on[np.argmax(n_spikes[on])]
    return best


def write_units_day(day_path: str | Path, sorting: Sorting, out_path: str | Path, *, first_sample: int = 0,
                    min_presence: float = MIN_PRESENCE, max_drift: float = MAX_DRIFT) -> Path:
    """Write ``out_path``: the day ``day_path`` with the sorting's units as its sites (see the module).

    Refuses an existing ``out_path`` and the day file itself; ``day_path`` is only read.
    Returns ``out_path``.
    """
    day_path, out_path = Path(day_path), Path(out_path)
    if out_path.exists():
        raise DayFileError(f"{out_path} already exists; choose another --out (nothing was overwritten)")
    d = read_day(day_path)
    if not len(d.trials["trial_index"]):
        raise DayFileError(f"{day_path} has no recorded trials; there is nothing to recount")
    if sorting.n_units == 0:
        raise SortingError(f"--sorting {sorting.source} holds no units (after leaving out phy 'noise' clusters)")
    times = spikes_on_acq_clock(sorting, first_sample)
    _check_overlap(d, times, sorting, first_sample)
    counts = unit_counts(d, times)
    t0, t1 = float(np.nanmin(d.trials["start_acq_s"])), float(np.nanmax(d.trials["end_acq_s"]))
    stab = unit_stability(times, t0, t1, min_presence=min_presence, max_drift=max_drift)
    n_spikes = np.array([len(t) for t in times], np.int64)
    names = _unit_names(d, sorting)
    tmp = out_path.with_name(out_path.name + ".creating")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(day_path, "r") as src, h5py.File(tmp, "w") as dst:
            for key in src:
                if key not in _REPLACED:
                    src.copy(src[key], dst, name=key)
            dst.attrs.update(dict(src.attrs))
            _write_sites(dst, d, names, counts, times)
            _write_units(dst, d, sorting, names, n_spikes, stab, (t0, t1), (min_presence, max_drift))
            _remap_sites(dst, _site_units(d, sorting, n_spikes))
            _provenance(dst, d, sorting, day_path, first_sample)
        os.link(tmp, out_path)   # fails rather than replace a file that appeared meanwhile
    except FileExistsError:
        raise DayFileError(f"{out_path} appeared while writing; nothing was overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s: %d units, %d flagged unstable", out_path, sorting.n_units, int((~stab["stable"]).sum()))
    return out_path


def _unit_names(d: DayData, sorting: Sorting) -> list[str]:
    def ch(c: int) -> str:
        return d.channel_names[c] if 0 <= c < d.n_channels else (f"channel {c}" if c >= 0 else "channel unknown")

    return [f"unit {u} ({ch(int(c))})" for u, c in zip(sorting.unit_ids, sorting.channel)]


def _write_sites(h5: h5py.File, d: DayData, names: list[str], counts: np.ndarray, times: list[np.ndarray]) -> None:
    """/channels (one per unit), /spikes (counts, sorted spikes cut at the last trial's end), /trials/spikes_end."""
    ch = h5.create_group("channels")
    ch.attrs["n_channels"] = len(names)
    _describe(ch.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype())), "1",
              "sorted units (the day's sites): unit id and the recording channel it was found on")
    t_all = np.concatenate(times)
    u_all = np.concatenate([np.full(len(t), u, np.int32) for u, t in enumerate(times)])
    order = np.argsort(t_all, kind="stable")
    t_all, u_all = t_all[order], u_all[order]
    ends = np.searchsorted(t_all, np.maximum.accumulate(np.asarray(d.trials["end_acq_s"], float)), "right")
    h5["trials/spikes_end"][:] = ends
    w0, w1 = d.window_ms
    sp = h5.create_group("spikes")
    _growing(sp, "counts", "f4", "spikes", f"spike count per presentation x unit in [onset+{w0:g} ms, onset+{w1:g} ms); "
             "NaN if not shown (recounted from the offline sorting)", width=len(names))
    _growing(sp, "times_s", "f8", "s", "sorted spike times, acquisition clock (sample / sampling rate)")
    _growing(sp, "channel", "i4", "1", "unit (row of /channels/names) of each sorted spike")
    n = int(ends[-1])
    for name, values in (("counts", counts.astype(np.float32)), ("times_s", t_all[:n]), ("channel", u_all[:n])):
        sp[name].resize(len(values), axis=0)
        sp[name][:] = values


def _write_units(h5: h5py.File, d: DayData, sorting: Sorting, names: list[str], n_spikes: np.ndarray,
                 stab: dict, span: tuple[float, float], limits: tuple[float, float]) -> None:
    g = h5.create_group("units")
    g.attrs["description"] = (
        f"one row per sorted unit (= row of /channels/names); stability over the session {span[0]:.3f}-{span[1]:.3f} s "
        f"(acquisition clock): stable = presence_ratio >= {limits[0]:g} (20 bins) and not (|rate_drift| > {limits[1]:g} "
        "and drift_p < 0.01) (analysis.stability)")
    chan_names = [d.channel_names[c] if 0 <= c < d.n_channels else "" for c in sorting.channel]
    cols = {"unit_id": (np.array(sorting.unit_ids, dtype=h5py.string_dtype()), "1", "unit id in the sorting"),
            "channel": (sorting.channel.astype(np.int64), "1", "recording channel (row of the original day's channels) the unit was found on; -1 unknown"),
            "channel_name": (np.array(chan_names, dtype=h5py.string_dtype()), "1", "that channel's name in the original day; '' unknown"),
            "name": (np.array(names, dtype=h5py.string_dtype()), "1", "the unit's site name in this day file"),
            "n_spikes": (n_spikes, "spikes", "spikes of the unit in the sorting"),
            "rate_hz": (stab["rate_hz"], "Hz", "mean firing rate over the session"),
            "presence_ratio": (stab["presence_ratio"], "1", "fraction of the session's 20 bins with a spike"),
            "rate_drift": (stab["rate_drift"], "1", "(rate in the last third - rate in the first third) / mean rate"),
            "drift_p": (stab["drift_p"], "1", "two-sided binomial test of that difference at a constant rate"),
            "stable": (stab["stable"].astype(bool), "bool", "present and at a steady rate through the session")}
    for name, (data, unit, desc) in cols.items():
        _describe(g.create_dataset(name, data=data), unit, desc)
    props = g.create_group("properties")
    props.attrs["description"] = "every unit property of the sorting (quality metrics, phy/Kilosort labels), as read"
    for k, v in sorting.properties.items():
        v = np.asarray(v)
        data = v if v.dtype.kind in "biuf" else np.array([str(x) for x in v], dtype=h5py.string_dtype())
        props.create_dataset(k, data=data)


def _unit_of(site_unit: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """The unit standing for each recording channel (-1 where the channel is -1, unknown, or has no unit)."""
    channel = np.asarray(channel, np.int64)
    known = (channel >= 0) & (channel < len(site_unit))
    return np.where(known, site_unit[np.clip(channel, 0, max(len(site_unit) - 1, 0))] if len(site_unit) else -1, -1)


def _remap_sites(h5: h5py.File, site_unit: np.ndarray) -> None:
    """Sites named by recording channel (the stimuli's targets, the designing model's readout
    columns and targets) become the units standing for those channels; the channels are kept."""
    st = h5["stimuli"]
    site = st["site"][:]
    _describe(st.create_dataset("site_channel", data=site), "1",
              "recording channel the perturbation targeted in the original day; -1 for none")
    st["site"][:] = _unit_of(site_unit, site)
    st["site"].attrs["description"] = ("unit (row of /channels/names) standing for the targeted channel: its unit with "
                                       "the most spikes; -1 for none or no unit on that channel")
    model = h5.get("model")
    for name in ("site_channels", "target_channels"):
        if model is None or name not in model:
            continue
        channels = model[name][:]
        _describe(model.create_dataset(f"{name}_recorded", data=channels), "1",
                  f"/model/{name} of the original day: recording channels")
        del model[name]
        _describe(model.create_dataset(name, data=_unit_of(site_unit, channels)), "1",
                  "the unit (row of /channels/names) standing for each recording channel in "
                  f"/model/{name}_recorded (its unit with the most spikes); -1 for none")


def _provenance(h5: h5py.File, d: DayData, sorting: Sorting, day_path: Path, first_sample: int) -> None:
    a = d.attrs
    h5.attrs.update({
        "identifier": str(uuid.uuid4()), "sites_are": "units", "units_from": str(day_path),
        "units_from_identifier": str(a.get("identifier", "")), "sorting_path": sorting.source,
        "sorting_kind": sorting.kind, "sorting_sampling_frequency_hz": float(sorting.sampling_frequency),
        "sorting_first_sample": int(first_sample),
        "spike_source": (f"offline spike sorting ({sorting.kind} folder {sorting.source}, {sorting.n_units} units, "
                         f"{sorting.sampling_frequency:g} Hz) of day file {day_path.name}; that day's spikes: "
                         f"{a.get('spike_source', 'not recorded')}")})
