"""Keep Lab Streaming Layer discovery on this machine in tests (liblsl reads the file named
by ``LSLAPICFG``; ``ResolveScope = machine`` keeps its multicast on loopback). Import this
before pylsl is first used; child processes inherit the variable."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

_CFG = Path(tempfile.gettempdir()) / "itloop-tests-lsl_api.cfg"
if not _CFG.exists():
    _CFG.write_text("[multicast]\nResolveScope = machine\n[log]\nlevel = -2\n")
os.environ.setdefault("LSLAPICFG", str(_CFG))


def unique_stream(prefix: str = "itloop-test-gaze") -> str:
    """A stream name no other test (or engineer) on this machine uses."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
