"""How large each itloop install profile is, measured without installing anything.

For each profile, ``pip install --dry-run --ignore-installed --report`` resolves what a
fresh virtual environment would get. Each package's installed size is the sum of the
files its RECORD lists in the environment running this script when the same version is
installed there (``__pycache__`` included), else the uncompressed contents of its wheel
when pip resolved a local wheel file; packages neither way are named under
``size_unknown``. Nothing is written into any environment.

    .venv/bin/python benchmarks/install_sizes.py            # core, presenter, controller, full
    .venv/bin/python benchmarks/install_sizes.py presenter  # one profile
"""
from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {
    "core": f"{ROOT}",
    "presenter": f"{ROOT}[presenter]",
    "controller": f"{ROOT}[controller,nwb]",
    "controller+dandi": f"{ROOT}[controller,nwb,dandi]",
    "full": f"{ROOT}[controller,presenter,nwb,dandi,test]",
}


def resolve(spec: str) -> list[dict]:
    """pip's install report (list of items) for ``spec`` in an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), spec], check=True)
        return json.loads(report.read_text())["install"]


def wheel_bytes(url: str) -> tuple[int, int] | None:
    """(compressed, uncompressed) bytes of a local wheel; None if it is not a local file."""
    u = urlparse(url)
    if u.scheme != "file":
        return None
    path = Path(unquote(u.path))
    if not path.is_file() or path.suffix != ".whl":
        return None
    with zipfile.ZipFile(path) as z:
        return path.stat().st_size, sum(i.file_size for i in z.infolist())


def installed_bytes(name: str, version: str) -> int | None:
    """Bytes on disk of ``name==version`` as installed here (its RECORD's files), else None."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    if dist.version != version or not dist.files:
        return None
    total = 0
    for f in dist.files:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def measure(profile: str) -> dict:
    items = resolve(PROFILES[profile])
    sizes, unknown, heavy = 0, [], []
    for it in items:
        name = f"{it['metadata']['name']}=={it['metadata']['version']}"
        if it["metadata"]["name"] == "itloop":
            continue
        n = installed_bytes(it["metadata"]["name"], it["metadata"]["version"])
        if n is None:
            b = wheel_bytes(it["download_info"]["url"])
            n = None if b is None else b[1]
        if n is None:
            unknown.append(name)
            continue
        sizes += n
        heavy.append((n, name))
    heavy.sort(reverse=True)
    names = {it["metadata"]["name"].lower() for it in items}
    return {"profile": profile, "packages": len(items) - 1, "installed_mb": round(sizes / 1e6),
            "torch": "torch" in names, "largest": [f"{n} {s / 1e6:.0f} MB" for s, n in heavy[:6]],
            "size_unknown": unknown}


def main(argv: list[str]) -> int:
    for profile in argv or list(PROFILES):
        print(json.dumps(measure(profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
