"""Who is recording a day file: an OS lock on ``<day>.lock`` holding the writer's PID.

Linux/macOS: ``fcntl.flock`` on the whole file. Windows: ``msvcrt.locking`` on one byte
past the PID text (a Windows lock is mandatory, so the PID stays readable). Either way
the lock is released by the operating system when the writer's process ends in any way
(SIGKILL or a killed task included), so a stale lock file never blocks anything;
``locked_by`` asks the operating system, not the file's text. The platform module is
imported when a lock is first taken or tested, so importing this module (the presenter
does, through the day-file layout) needs nothing POSIX-only.

The Windows branch has never been executed (no Windows machine runs the tests): the
controller, the only writer, is supported on Linux and macOS only (README, "Installing").
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_WINDOWS = sys.platform == "win32"   # (sys.platform, not os.name: what type checkers read a branch's platform from)
_LOCK_BYTE = 64          # Windows: the byte locked (the PID text is written before it)


def lock_path(day_path: str | Path) -> Path:
    p = Path(day_path)
    return p.with_name(p.name + ".lock")


def _try_lock(fd: int, exclusive: bool) -> bool:
    """Take the lock on ``fd`` without waiting; False if another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)   # Windows has no shared lock: a test takes it briefly
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


class DayLockedError(BlockingIOError):
    """The day file's lock is held by another process, whose PID is ``pid`` (0 if unreadable)."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


class DayLock:
    """An exclusive lock on a day file for as long as one writer has it open."""

    def __init__(self, day_path: str | Path):
        self.path = lock_path(day_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DayLockedError` (a BlockingIOError) carrying the holder's PID (``.pid``)."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
        while True:
            fd = os.open(self.path, flags, 0o644)
            if not _try_lock(fd, exclusive=True):
                pid = _read_pid(fd)
                os.close(fd)
                raise DayLockedError(f"{self.path} is held by PID {pid}", pid) from None
            try:  # the holder before us may have removed the file after we opened it: retry on the new one
                same = _WINDOWS or os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        if _WINDOWS:  # Windows cannot remove an open file: unlock and close first
            _unlock(self._fd)
            os.close(self._fd)
        try:
            self.path.unlink()
        except OSError:
            pass
        if not _WINDOWS:
            os.close(self._fd)  # closing drops the flock
        self._fd = None


def locked_by(day_path: str | Path) -> int | None:
    """PID of the process recording ``day_path`` now, or None if nobody is."""
    path = lock_path(day_path)
    try:
        fd = os.open(path, (os.O_RDWR if _WINDOWS else os.O_RDONLY) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        if not _try_lock(fd, exclusive=False):
            return _read_pid(fd) or -1
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text)
    except (OSError, ValueError):
        return 0
