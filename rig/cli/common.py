"""Arguments several command groups share."""
from __future__ import annotations

import argparse

PROGRESS_HELP = ("no progress bars (they are also off whenever stderr is not a terminal, e.g. in logs "
                 "and pipes); per-step lines and timings are still printed")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: bars off; the one-line-per-step output stays."""
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
