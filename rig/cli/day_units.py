"""``itloop day units DAY.h5 --sorting PATH --out NEW.h5``: offline-sorted units into a recorded day."""
from __future__ import annotations

import argparse
from pathlib import Path

from rig.errors import UserError


def add_units_command(dsub) -> None:
    """Add ``units`` to the ``itloop day`` sub-parsers ``dsub``."""
    un = dsub.add_parser("units", help="a new day file whose sites are the units of an offline sorting (SpikeInterface)")
    un.add_argument("file", help="the recorded day file (read only, never changed)")
    un.add_argument("--sorting", required=True, metavar="PATH",
                    help="a Kilosort/phy output folder (params.py, spike_times.npy) or a saved SpikeInterface sorting folder")
    un.add_argument("--out", required=True, help="the new day file to write (must not exist); name it day_DDD.h5 in a "
                                                 "new experiment folder to run model fit / day analyze / report on it")
    un.add_argument("--first-sample", type=int, default=0, metavar="N",
                    help="the acquisition's sample number at the sorted recording's first sample (Open Ephys: "
                         "sample_numbers.npy[0]; default 0)")
    un.add_argument("--keep-noise", action="store_true", help="keep phy clusters labelled 'noise'")
    un.add_argument("--min-presence", type=float, default=None, metavar="R",
                    help="flag units present in fewer than this fraction of the session (default 0.9)")
    un.add_argument("--max-drift", type=float, default=None, metavar="D",
                    help="flag units whose rate changed by more than D x its mean between the session's first and last third, "
                         "beyond Poisson noise (default 0.5)")
    un.set_defaults(func=cmd_units)


def cmd_units(args: argparse.Namespace) -> int:
    from analysis.stability import MAX_DRIFT, MIN_PRESENCE
    from rig.store.repair import check_day
    from rig.store.sorting import read_sorting
    from rig.store.units import write_units_day

    src, out = Path(args.file), Path(args.out)
    if not src.exists():
        raise UserError(f"{src} does not exist; give the recorded day file")
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new file name. Nothing was overwritten.")
    if out.resolve() == src.resolve():
        raise UserError("--out is the day file itself; the original is never changed: choose a new file")
    min_presence = MIN_PRESENCE if args.min_presence is None else args.min_presence
    max_drift = MAX_DRIFT if args.max_drift is None else args.max_drift
    if not 0.0 <= min_presence <= 1.0 or not max_drift > 0:
        raise UserError("--min-presence must be in [0, 1] and --max-drift > 0")
    sorting = read_sorting(args.sorting, keep_noise=args.keep_noise)
    write_units_day(src, sorting, out, first_sample=args.first_sample, min_presence=min_presence, max_drift=max_drift)
    summary, problems = check_day(out)
    import h5py

    with h5py.File(out, "r") as h5:
        stable = h5["units/stable"][:]
        names = [n.decode() if isinstance(n, bytes) else n for n in h5["units/name"][:]]
    print(f"wrote {out}: {len(names)} units from {args.sorting} ({sorting.kind}), {summary['valid_presentations']}/"
          f"{summary['presentations']} valid presentations recounted; {src} unchanged")
    for name, ok in zip(names, stable):
        if not ok:
            print(f"  UNSTABLE: {name} (presence or firing rate changed over the session; see /units in {out})")
    for p in problems:
        print(f"  PROBLEM: {p}")
    return 0 if not problems else 1
