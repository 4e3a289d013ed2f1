"""Writing a file all at once: the one atomic-write helper of itloop.

    with atomic_path(out) as tmp:      # tmp: a fresh name in out's folder
        np.savez(tmp, ...)             # write it any way you like
    # here out holds the complete file (fsynced, renamed over any older out); after an
    # exception out is untouched and tmp is gone

Readers therefore see either the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", overwrite: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` (ending in ``suffix``, for writers that want one,
    such as ``np.savez``'s ``.npz``); on success it is fsynced and renamed over ``path``.
    ``overwrite=False``: linked to ``path`` instead, which raises FileExistsError rather than
    replace a file that is there (or appeared meanwhile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")  # unique per writer
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
