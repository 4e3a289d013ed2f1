"""Who is recording a day file: an fcntl lock on ``<day>.lock`` holding the writer's PID.

The lock is released by the kernel when the writer's process ends in any way (SIGKILL
included), so a stale lock file never blocks anything; ``locked_by`` asks the kernel,
not the file's text.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_path(day_path: str | Path) -> Path:
    p = Path(day_path)
    return p.with_name(p.name + ".lock")


class DayLock:
    """An exclusive lock on a day file for as long as one writer has it open."""

    def __init__(self, day_path: str | Path):
        self.path = lock_path(day_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise BlockingIOError carrying the holder's PID (``.pid``)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                err = BlockingIOError(f"{self.path} is held by PID {pid}")
                err.pid = pid  # type: ignore[attr-defined]
                raise err from None
            try:  # the holder before us may have removed the file after we opened it: retry on the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def locked_by(day_path: str | Path) -> int | None:
    """PID of the process recording ``day_path`` now, or None if nobody is."""
    path = lock_path(day_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text)
    except (OSError, ValueError):
        return 0
