"""Config files shared by the end-to-end tests: a small day through a real presenter process
(``--backend presenter``, ``--backend rig``) on free loopback ports, and that day's run."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def presenter_day_toml(endpoint: str, *, n_clean: int, n_channels: int, repeats: int = 2, sim_extra: str = "") -> str:
    """A small screening day (32 px images, 4 per trial, the tiny backbone, no fixation breaks)
    whose presenter listens on ``endpoint``. ``sim_extra``: more ``[sim]`` lines. The text ends
    inside ``[presenter]``: lines appended to it extend that section."""
    return f"""
[images]
size_px = 32
n_clean = {n_clean}
[screening]
repeats = {repeats}
[rsvp]
presentations_per_trial = 4
fixation_acquire_ms = 50.0
inter_trial_ms = 100.0
[model]
backbone = "tiny"
[sim]
n_channels = {n_channels}
fixation_break_prob = 0.0
{sim_extra}[presenter]
endpoint = "{endpoint}"
heartbeat_s = 0.2
dead_after_s = 5.0
"""


def presenter_day_config(folder: Path, *, n_clean: int, n_channels: int) -> tuple[Path, str]:
    """``folder/c.toml`` holding :func:`presenter_day_toml` on a free port; returns (path, endpoint)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = folder / "c.toml"
    cfg.write_text(presenter_day_toml(endpoint, n_clean=n_clean, n_channels=n_channels))
    return cfg, endpoint


def run_presenter_day(folder: Path, *, n_clean: int, n_channels: int, presenter_cmd: list[str] | None = None,
                      env: dict | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Day 0 of ``folder / "exp"`` recorded in this process with ``--backend presenter`` against a
    presenter started as ``presenter_cmd present ...`` (default: this Python's ``-m rig.cli``),
    killed afterwards; returns (the command's exit code, the presenter's log)."""
    from rig.cli import main

    cfg, endpoint = presenter_day_config(folder, n_clean=n_clean, n_channels=n_channels)
    log_path = folder / "presenter.log"
    cmd = [*(presenter_cmd or [sys.executable, "-m", "rig.cli"]), "present", "--endpoint", endpoint,
           "--windowed", "320x240", "--refresh-hz", "60", "--pace"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            rc = main(["day", "run", "--day", "0", "--backend", "presenter", "--out", str(folder / "exp"),
                       "--config", str(cfg), "--no-progress"])
        finally:
            proc.kill()
            proc.wait(timeout=20)
    return rc, log_path.read_text()
