"""`itloop day export FILE --nwb OUT`: share a day file as NWB (for DANDI)."""
from __future__ import annotations

import argparse

from rig.errors import UserError


def add_export_command(dsub) -> None:
    """Add ``export`` to the sub-parsers of ``itloop day``."""
    ex = dsub.add_parser("export", help="export a day file to NWB (pynwb) for sharing on DANDI")
    ex.add_argument("file", help="the day file (.h5) to export; it is opened read-only")
    ex.add_argument("--nwb", required=True, metavar="OUT", help="NWB file to write (e.g. day001.nwb)")
    ex.add_argument("--subject", default="unknown", metavar="ID", help="subject id recorded in the NWB file")
    ex.add_argument("--species", default="Macaca mulatta", help="subject species (Latin binomial)")
    ex.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from rig.store.dayfile import DayFileError
    from rig.store.nwb import export_nwb

    try:
        out = export_nwb(args.file, args.nwb, subject_id=args.subject, species=args.species, overwrite=args.overwrite)
    except (DayFileError, ValueError) as exc:
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
        raise UserError(f"cannot write {args.nwb}: {detail}; choose a folder you can write to, with free space") from None
    print(f"wrote {out}")
    return 0
