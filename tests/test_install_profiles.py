"""Install profiles: the presenter PC needs neither torch nor anything POSIX-only.

The presenter runs in a subprocess through ``tests/no_torch.py``, which refuses torch
(and the controller's other packages) and refuses POSIX-only modules to itloop's own
code; the controller runs in the full environment. The install sizes of each profile
are measured by ``benchmarks/install_sizes.py`` (README, "Installing").
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _requirement_names(reqs: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in reqs}


def test_torch_is_only_in_the_controller_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert not core & {"torch", "torchvision", "scikit-learn", "dask", "spikeinterface", "neuroconv"}
    assert {"torch", "torchvision"} <= _requirement_names(extras["controller"])
    assert "torch" not in _requirement_names(extras["presenter"])
    assert project["requires-python"].replace(" ", "") == ">=3.10,<3.13"


def test_present_help_runs_without_torch_or_fcntl():
    out = subprocess.run([*NO_TORCH, "present", "--help"], check=False, capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: itloop present" in out.stdout


def test_a_controller_command_without_torch_says_which_install_adds_it(tmp_path):
    argv = [*NO_TORCH, "day", "run", "--day", "0", "--out", str(tmp_path / "exp"), "--config",
            str(ROOT / "tests" / "data" / "tiny.toml"), "--no-progress"]
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120,
                         env={**ENV, "NO_TORCH_REFUSAL_OK": "1"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "pip install 'itloop[controller]'" in out.stderr, out.stderr


def test_the_runner_would_catch_torch():
    """The guard itself: a command that needs torch fails under it (so a pass above means something)."""
    tests = str(ROOT / "tests")
    code = f"import sys; sys.path.insert(0, {tests!r}); import no_torch; sys.meta_path.insert(0, no_torch.Refuse()); import torch"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode != 0 and "refused" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.xvfb
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`")
def test_presenter_without_torch_serves_a_controller(tmp_path, capsys):
    pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install itloop[presenter])")
    from rig.cli import main
    from rig.store.repair import check_day

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[images]
size_px = 32
n_clean = 4
[screening]
repeats = 2
[rsvp]
presentations_per_trial = 4
fixation_acquire_ms = 50.0
inter_trial_ms = 100.0
[model]
backbone = "tiny"
[sim]
n_channels = 2
fixation_break_prob = 0.0
[presenter]
endpoint = "{endpoint}"
heartbeat_s = 0.2
dead_after_s = 5.0
""")
    log_path = tmp_path / "presenter.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*NO_TORCH, "present", "--endpoint", endpoint, "--windowed", "320x240",
                                 "--refresh-hz", "60", "--pace"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            rc = main(["day", "run", "--day", "0", "--backend", "presenter", "--out", str(tmp_path / "exp"),
                       "--config", str(cfg), "--no-progress"])
        finally:
            proc.kill()
            proc.wait(timeout=20)
    assert rc == 0, capsys.readouterr()
    summary, problems = check_day(tmp_path / "exp" / "day_000.h5")
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "presenter"
    assert "refused" not in log_path.read_text(), log_path.read_text()
