"""The presenter profile's wheels in a local folder, so a test can install that profile offline.

    python tests/presenter_wheelhouse.py           # fill it (pip wheel: needs the package index once)
    python tests/presenter_wheelhouse.py --where   # print the folder it would use

The folder is ``$ITLOOP_WHEELHOUSE`` or ``~/.cache/itloop/presenter-wheels``; inside it one
subfolder per Python version, platform and requirement set (the core dependencies, the
``presenter`` extra and the build backend, read from pyproject.toml), so an edit to either
profile makes a new one. ``COMPLETE`` is written last: a folder without it is not used.
``.ci/setup`` runs this; it writes nothing outside that folder (never the venv).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MARK = "COMPLETE"


def requirements(root: Path = ROOT) -> list[str]:
    """What a presenter install needs: core dependencies, the presenter extra, the build backend."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    project = data["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["presenter"], *data["build-system"]["requires"]]
    return sorted(set(reqs))


def base() -> Path:
    """The folder holding every wheelhouse (``$ITLOOP_WHEELHOUSE`` or the user's cache)."""
    env = os.environ.get("ITLOOP_WHEELHOUSE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "itloop" / "presenter-wheels"


def folder(root: Path = ROOT) -> Path:
    """This Python's wheelhouse for the current requirement set (it may not exist yet)."""
    tag = f"py{sys.version_info[0]}.{sys.version_info[1]}-{sysconfig.get_platform()}"
    digest = hashlib.sha256("\n".join([tag, *requirements(root)]).encode()).hexdigest()[:12]
    return base() / f"{tag}-{digest}"


def is_complete(path: Path) -> bool:
    return (path / MARK).is_file()


def fill(root: Path = ROOT) -> Path:
    """Download (or build) every wheel the presenter profile needs; a no-op when already complete."""
    target = folder(root)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".filling-", dir=target.parent))
    try:
        reqs = work / "requirements.txt"
        reqs.write_text("\n".join(requirements(root)) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(work), "-r", str(reqs)],
                       check=True)
        (work / MARK).write_text("\n".join(requirements(root)) + "\n")
        if target.exists():                       # an earlier, interrupted fill
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def main(argv: list[str]) -> int:
    if argv == ["--where"]:
        print(folder())
        return 0
    if argv:
        print("usage: python tests/presenter_wheelhouse.py [--where]", file=sys.stderr)
        return 2
    print(f"presenter wheelhouse: {fill()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
