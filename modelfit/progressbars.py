"""Progress bars: one process-wide switch, decided once by the command line (``--no-progress``).

Every tqdm bar of the library packages (modelfit, stimuli, sim, rig) is made by :func:`bar`,
so no library function takes a ``progress`` argument. Bars are on by default and then follow
tqdm's own rule (drawn only while stderr is a terminal); ``progress_bars(False)`` turns every
bar of this process off. The one-line-per-step output goes through ``logging`` and does not
depend on this switch. (This module sits in ``modelfit``, the package every other one may import.)
"""
from __future__ import annotations

from typing import Any

_STATE = {"enabled": True}


def progress_bars(enabled: bool) -> None:
    """Turn every progress bar of this process on (tqdm's default: only on a terminal) or off."""
    _STATE["enabled"] = bool(enabled)


def bars_enabled() -> bool:
    """Whether :func:`bar` may draw (the process-wide switch)."""
    return _STATE["enabled"]


def bar(iterable: Any = None, **kw: Any):
    """``tqdm(iterable, **kw)``, switched off when :func:`progress_bars` turned bars off.

    A caller's own ``disable=True`` (e.g. a bar not worth drawing for one batch) still applies;
    otherwise ``disable=None`` (tqdm: draw only when the output is a terminal).
    """
    from tqdm.auto import tqdm

    if not _STATE["enabled"]:
        kw["disable"] = True
    else:
        kw.setdefault("disable", None)
    return tqdm(iterable, **kw)
