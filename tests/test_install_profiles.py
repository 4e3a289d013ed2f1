"""Install profiles: the presenter PC needs neither torch nor anything POSIX-only.

The presenter runs in a subprocess through ``tests/no_torch.py``, which refuses torch
(and the controller's other packages) and refuses POSIX-only modules to itloop's own
code; the controller runs in the full environment. One test installs the presenter profile
into a fresh venv, offline from a local wheelhouse (``tests/presenter_wheelhouse.py``,
filled by ``.ci/setup``), and runs the presenter from there. The install sizes of each profile
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


def _presenter_wheelhouse() -> Path:
    """The presenter profile's wheels (filled by ``.ci/setup``); under CI a missing one fails the test."""
    from tests import presenter_wheelhouse

    where = presenter_wheelhouse.folder(ROOT)
    if not presenter_wheelhouse.is_complete(where):
        why = (f"no presenter wheelhouse at {where}: fill it with `.venv/bin/python tests/presenter_wheelhouse.py` "
               "(.ci/setup does; about 0.5 GB of wheels from the package index)")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(why)
        pytest.skip(why)
    return where


def _copy_of_checkout(dest: Path) -> Path:
    """The tracked files as they are in the working tree: building never writes into the checkout."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for f in filter(None, files.split("\0")):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


@pytest.mark.slow
@pytest.mark.xvfb
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`")
def test_fresh_presenter_venv_has_no_torch_and_serves_a_controller(tmp_path):
    """pip-installs the presenter profile from a copy of this checkout into a new venv, offline from
    the presenter wheelhouse only (no package index, no pip config), checks torch is absent and
    itloop comes from the venv, runs its `itloop present --help` and then, from that venv (with
    POSIX-only modules refused to itloop's code), a short presenter session against a controller
    in this (full) environment."""
    import shutil
    import venv

    wheels = _presenter_wheelhouse()
    src = _copy_of_checkout(tmp_path / "src")
    venv.create(tmp_path / "v", with_pip=True)
    try:
        _install_and_present(tmp_path, src, wheels)
    finally:
        shutil.rmtree(tmp_path / "v", ignore_errors=True)     # 1.5 GB: pytest keeps its last temp folders


def _install_and_present(tmp_path: Path, src: Path, wheels: Path) -> None:
    bin_dir = tmp_path / "v" / ("Scripts" if os.name == "nt" else "bin")
    py = bin_dir / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull                  # this machine's pip settings (extra indexes) left out
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(wheels),
                    f"{src}[presenter]"], check=True, env=env, cwd=tmp_path, timeout=240)
    probe = ("import importlib.util as u, rig, psychopy; "
             "print(u.find_spec('torch'), u.find_spec('torchvision'), u.find_spec('sklearn')); print(rig.__file__)")
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120).stdout.splitlines()
    assert out[0] == "None None None", out
    assert Path(out[1]).resolve().is_relative_to((tmp_path / "v").resolve()), out   # the installed copy, not the checkout
    helped = subprocess.run([str(bin_dir / "itloop"), "present", "--help"], check=False, capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert helped.returncode == 0 and "usage: itloop present" in helped.stdout, helped.stderr
    log = _one_day_against([str(py), str(ROOT / "tests" / "no_torch.py")], tmp_path / "session", env)
    assert "refused" not in log, log
