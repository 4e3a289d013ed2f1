"""Arguments several command groups share."""
from __future__ import annotations

import argparse
from pathlib import Path

from rig.errors import UserError

PROGRESS_HELP = ("no progress bars (they are also off whenever stderr is not a terminal, e.g. in logs "
                 "and pipes); per-step lines and timings are still printed")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: bars off; the one-line-per-step output stays."""
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot be an experiment folder (a file, a dangling link or a
    link loop) with one line saying so, before anything is read or written."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a symbolic link to nothing (or a link loop); give an experiment folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give an experiment folder (it is made if missing)")
