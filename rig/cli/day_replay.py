"""``itloop day replay FILE --out NEWFILE``: re-run a recorded day offline into a new file."""
from __future__ import annotations

import argparse
from pathlib import Path

from rig.cli.common import add_progress_flag
from rig.errors import UserError
from rig.store.dayfile import DayFileError
from rig.store.repair import check_day


def add_replay_command(dsub) -> None:
    """Add ``replay`` to the ``itloop day`` sub-parsers ``dsub``."""
    rep = dsub.add_parser("replay", help="re-run a recorded day into a new file (counts recomputed from raw spikes)")
    rep.add_argument("file", help="the recorded day file (read only, never changed)")
    rep.add_argument("--out", required=True, help="the new day file to write (must not exist)")
    rep.add_argument("--window", nargs=2, type=float, metavar=("START_MS", "END_MS"), default=None,
                     help="spike-count window after onset, ms (default: the recorded window)")
    add_progress_flag(rep)
    rep.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from rig.backends.replay import replay_day

    src, out = Path(args.file), Path(args.out)
    if not src.exists():
        raise UserError(f"{src} does not exist; give the recorded day file to replay")
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new file name. Nothing was overwritten.")
    if out.is_dir() or (out.is_symlink() and not out.exists()):
        raise UserError(f"--out {out} is a folder or a dangling link; give the new day file's name")
    try:
        replay_day(src, out, window_ms=tuple(args.window) if args.window else None)
    except BaseException as exc:
        _remove_replay(out)                  # a failed replay leaves nothing behind (the source is untouched)
        if isinstance(exc, (DayFileError, ValueError)):
            raise UserError(str(exc)) from None
        raise
    try:
        summary, problems = check_day(out)
    except (DayFileError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"replayed {src} -> {out}: {summary['trials']} trials, {summary['valid_presentations']}/"
          f"{summary['presentations']} valid presentations, status {summary['status']}")
    for p in problems:
        print(f"  PROBLEM: {p}")
    return 0 if not problems else 1


def _remove_replay(out: Path) -> None:
    """Delete what a failed replay made: the new day file, its journal (and torn tails) and lock."""
    from rig.store.journal import journal_path
    from rig.store.lock import lock_path

    jp = journal_path(out)
    for p in [out, jp, lock_path(out), out.with_name(out.name + ".creating"), *out.parent.glob(jp.name + ".torn-*")]:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
