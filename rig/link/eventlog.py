"""The verbose event lines of both ends of the wire, on stderr: ``[controller 12:00:01] presenter ... connected``.

Each end (the controller's :mod:`rig.link.client`, the presenter's :mod:`rig.presenter.server`)
logs its events through :func:`event_logger`: a logger whose one handler writes each line,
tagged with the end and the wall-clock time, to whatever ``sys.stderr`` is when the line is
written (a terminal, a log file, a test's capture). Its lines stay out of the command line's
stdout handler: they are the process's diagnostics, not its output.
"""
from __future__ import annotations

import logging
import sys


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler on the ``sys.stderr`` of the moment (as :data:`logging.lastResort` is)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def event_logger(name: str, tag: str) -> logging.Logger:
    """The logger ``name`` set up to write INFO lines as ``[tag HH:MM:SS] message`` on stderr (idempotent)."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(f"[{tag} %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
