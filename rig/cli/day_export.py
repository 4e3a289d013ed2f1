"""`itloop day export`: share day files as NWB (for DANDI).

    itloop day export FILE --nwb OUT.nwb         one day file
    itloop day export DIR --nwb-dir OUT          every day of an experiment folder, DANDI names
                                                 (OUT/sub-<id>/sub-<id>_ses-day<DDD>_ecephys.nwb)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rig.errors import UserError


def add_export_command(dsub) -> None:
    """Add ``export`` to the sub-parsers of ``itloop day``."""
    ex = dsub.add_parser("export", help="export a day file, or every day of an experiment folder, to NWB for DANDI")
    ex.add_argument("file", metavar="FILE_OR_DIR", help="a day file (.h5) or an experiment folder; only read, never changed")
    out = ex.add_mutually_exclusive_group(required=True)
    out.add_argument("--nwb", metavar="OUT", help="NWB file to write for one day file (e.g. day001.nwb)")
    out.add_argument("--nwb-dir", metavar="OUT", help="folder to write DANDI-named NWB files into (sub-<id>/...)")
    ex.add_argument("--metadata", metavar="TOML",
                    help="TOML with [subject]/[session]/[array] keys replacing those stored in the day files")
    ex.add_argument("--subject", default=None, metavar="ID", help="subject id (shortcut for subject.id in --metadata)")
    ex.add_argument("--species", default=None, help="subject species, Latin binomial (shortcut for subject.species)")
    ex.add_argument("--overwrite", action="store_true", help="replace existing NWB files")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from rig.config import ConfigError
    from rig.store.dayfile import DayFileError
    from rig.store.nwb import export_experiment, export_nwb, metadata_overrides, prepare_export, write_export

    src = Path(args.file)
    try:
        overrides = metadata_overrides(args.metadata, args.subject, args.species)
        if src.is_dir():
            if args.nwb:
                raise UserError(f"{src} is an experiment folder: use --nwb-dir OUT to export all its days")
            written = export_experiment(src, args.nwb_dir, overrides=overrides, overwrite=args.overwrite)
        elif args.nwb_dir:
            written = [write_export(prepare_export(src, overrides=overrides, out_dir=args.nwb_dir), overwrite=args.overwrite)]
        else:
            written = [export_nwb(src, args.nwb, overrides=overrides, overwrite=args.overwrite)]
    except (DayFileError, ConfigError, ValueError) as exc:
        msg = str(exc).replace("overwrite=True (CLI: --overwrite)", "--overwrite")
        raise UserError(msg) from None
    except OSError as exc:   # a read-only or full output folder: one line naming the path
        detail = exc.strerror or str(exc).split(" (")[0]
        if "errno = 28" in str(exc) or getattr(exc, "errno", None) == 28:
            detail = "No space left on device"
        elif "errno = 30" in str(exc):
            detail = "Read-only file system"
        elif "errno = 13" in str(exc):
            detail = "Permission denied"
        raise UserError(f"cannot write {args.nwb or args.nwb_dir}: {detail}; choose a folder you can write to, with free space") from None
    for out in written:
        print(f"wrote {out}")
    return 0
