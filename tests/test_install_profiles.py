"""Install profiles: the presenter PC needs neither torch nor anything POSIX-only.

The presenter runs in a subprocess through ``tests/no_torch.py``, which refuses torch
(and the controller's other packages) and refuses POSIX-only modules to itloop's own
code; the controller runs in the full environment. The install sizes of each profile
are measured by ``benchmarks/install_sizes.py`` (README, "Installing").
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.configs import run_presenter_day

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



def _one_day_against(presenter_cmd: list[str], tmp_path: Path, env: dict) -> str:
    """Record a short day with the controller in this (full) environment, the presenter run by
    ``presenter_cmd``; returns the presenter's log."""
    from rig.store.repair import check_day

    tmp_path.mkdir(parents=True, exist_ok=True)
    rc, text = run_presenter_day(tmp_path, n_clean=4, n_channels=2, presenter_cmd=presenter_cmd, env=env, cwd=tmp_path)
    assert rc == 0, text
    summary, problems = check_day(tmp_path / "exp" / "day_000.h5")
    assert problems == [] and summary["status"] == "complete" and summary["backend"] == "presenter"
    return text


@pytest.mark.xvfb
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`")
def test_presenter_without_torch_serves_a_controller(tmp_path):
    pytest.importorskip("psychopy", reason="the presenter needs PsychoPy (pip install itloop[presenter])")
    log = _one_day_against(NO_TORCH, tmp_path, ENV)
    assert "refused" not in log, log


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ITLOOP_INSTALL_TEST") not in ("core", "presenter"),
                    reason="installs into a fresh venv (minutes, the package index): set ITLOOP_INSTALL_TEST=core "
                           "(numpy, h5py, pyzmq ...: about 80 MB) or =presenter (with PsychoPy: about 1.7 GB)")
def test_fresh_venv_install_has_no_torch_and_presents(tmp_path):
    """pip-installs the core (or presenter) profile from a copy of this checkout into a new venv,
    checks torch is absent, runs `itloop present --help` from it and, for the presenter profile
    under an X display, a short presenter session against a controller in this environment."""
    import shutil
    import venv

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    src = tmp_path / "src"
    for f in files:                         # a copy: building never writes into the checkout
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    venv.create(tmp_path / "v", with_pip=True)
    py = tmp_path / "v" / ("Scripts" if os.name == "nt" else "bin") / "python"
    extra = "[presenter]" if os.environ["ITLOOP_INSTALL_TEST"] == "presenter" else ""
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}{extra}"], check=True, timeout=1800)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           check=True, capture_output=True, text=True)
    assert probe.stdout.strip() == "None"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-m", "rig.cli", "present", "--help"], check=False, capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0 and "usage: itloop present" in out.stdout, out.stderr
    if extra and os.environ.get("DISPLAY"):
        _one_day_against([str(py), "-m", "rig.cli"], tmp_path / "session", env)
