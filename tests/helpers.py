"""Small helpers shared by tests that interrupt a recording subprocess."""
from __future__ import annotations

import time
from pathlib import Path


def wait_for_journal_lines(journal: Path, lines: int, timeout_s: float = 120.0) -> bool:
    """Wait until ``journal`` holds at least ``lines`` trials (one per line); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= lines:
            return True
        time.sleep(0.02)
    return False
