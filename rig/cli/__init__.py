"""The ``itloop`` command line.

Each area registers its own subcommands from the module named in ``COMMAND_MODULES``
(a ``register(subparsers)`` function); every subcommand's ``func(args) -> int`` returns
the exit code. A :class:`rig.errors.UserError` (or a config, image or day-file error)
is printed as one ``itloop: error: ...`` line with exit code 2.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from modelfit.progressbars import progress_bars
from rig import __version__
from rig.config import ConfigError
from rig.errors import UserError
from rig.store.dayfile import DayFileError
from stimuli.images import ImageFolderError

COMMAND_MODULES = [
    "rig.cli.day",
    "rig.cli.present",
    "rig.cli.model",
    "rig.cli.stimuli",
    "rig.cli.loop",
    "rig.cli.eye",
    "rig.cli.simrig",
]

# packages of the optional profiles (pyproject extras): a command that needs one says which install adds it
_CONTROLLER = "install the controller profile: pip install 'itloop[controller]' (README: Installing)"
OPTIONAL_PACKAGES = {"torch": _CONTROLLER, "torchvision": _CONTROLLER, "sklearn": _CONTROLLER, "dask": _CONTROLLER,
                     "distributed": _CONTROLLER, "matplotlib": _CONTROLLER, "scipy": _CONTROLLER,
                     "efficientnet_lite_pytorch": _CONTROLLER,
                     "psychopy": "install the presenter profile: pip install 'itloop[presenter]'",
                     "pynwb": "pip install 'itloop[nwb]'", "spikeinterface": "pip install 'itloop[sorting]'",
                     "neuroconv": "pip install 'itloop[dandi]'"}

USER_ERRORS = (UserError, ConfigError, DayFileError, ImageFolderError)
# more problems a user can fix (a missing weights file, a presenter that never connected or
# went away mid-session: the day stays resumable), from modules too heavy to import just
# for --help: (module, class name), checked only if that module was loaded
LAZY_USER_ERRORS = (("modelfit.backbone", "WeightsError"), ("modelfit.backbone", "BackboneError"),
                    ("rig.link.client", "PresenterError"))
# errnos of a file system that refuses a write: one line naming the path, not a traceback
_FS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR,
              errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def file_system_message(exc: BaseException) -> str | None:
    """One line for an OSError about a path (read-only or full folder ...), else None."""
    if not isinstance(exc, OSError) or exc.errno not in _FS_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "the output folder"
    extra = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space and run again (a recording resumes with --resume)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to (or fix its permissions)"
    else:
        fix = "check the path"
    return f"{where}{extra}: {exc.strerror or exc}; {fix}"


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, USER_ERRORS):
        return True
    return any(isinstance(exc, getattr(sys.modules[m], name)) for m, name in LAZY_USER_ERRORS if m in sys.modules)


LIBRARY_LOGGERS = ("rig", "modelfit", "stimuli", "analysis", "sim")


class _ConsoleHandler(logging.Handler):
    """Print each library log line (one line per step) to the current stdout; warnings and
    errors as they are, lines at INFO without a level prefix. Written through ``tqdm.write``,
    so a line that comes while a progress bar is drawn does not break the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # a closed stdout must not break a recording
            self.handleError(record)


def install_console_logging() -> None:
    """The CLI's one logging handler on the library packages' loggers (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
            logger.addHandler(_ConsoleHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itloop",
        description="Closed-loop controller for IT recording experiments with model-designed perturbations.",
    )
    parser.add_argument("--version", action="version", version=f"itloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    install_console_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    progress_bars(not getattr(args, "no_progress", False))   # decided once, for every bar of this process
    func = getattr(args, "func", None)
    if func is None:
        # a command group given without its subcommand: show that group's help
        helper = getattr(args, "help_parser", parser)
        helper.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in OPTIONAL_PACKAGES:
            raise
        print(f"itloop: error: this command needs {exc.name.split('.')[0]}, which this install lacks; "
              f"{OPTIONAL_PACKAGES[exc.name.split('.')[0]]}", file=sys.stderr)
        return 2
    except Exception as exc:
        fs = file_system_message(exc)
        if fs is None and not is_user_error(exc):
            raise
        print(f"itloop: error: {fs or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("itloop: interrupted; nothing recorded was lost (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
