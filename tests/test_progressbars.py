"""Progress bars are one process-wide setting decided by the command line (``--no-progress``),
and the wire's verbose event lines go to stderr through logging (issue 22)."""
from __future__ import annotations

import io
import logging

import pytest

from modelfit.progressbars import bar, bars_enabled, progress_bars
from rig.cli import build_parser, install_console_logging, main


@pytest.fixture(autouse=True)
def _bars_back_on():
    yield
    progress_bars(True)


def test_the_switch_turns_every_bar_off_and_back_to_tqdms_rule():
    stream = io.StringIO()
    progress_bars(False)
    assert not bars_enabled()
    off = bar(range(3), file=stream)
    assert off.disable and list(off) == [0, 1, 2] and stream.getvalue() == ""
    progress_bars(True)
    on = bar(total=2, file=stream)            # tqdm's own rule: a StringIO is not a terminal, so it is off
    assert on.disable
    drawn = bar(total=2, file=stream, disable=False)   # a caller may still force a bar
    drawn.update(2)
    drawn.close()
    assert "2/2" in stream.getvalue()
    assert bar(total=2, file=stream, disable=True).disable   # and a caller's own "not worth a bar" stays


def test_the_cli_decides_the_switch_once_per_command(tmp_path):
    assert main(["report", str(tmp_path / "missing"), "--no-progress"]) == 2   # a bad folder: exits 2 after parsing
    assert not bars_enabled()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert bars_enabled()


def test_every_command_with_bars_offers_no_progress():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_flag = []
    for p in sub.choices.values():
        groups = [a for a in p._actions if a.dest == "subcommand" or getattr(a, "choices", None)]
        parsers = [p] + [c for g in groups if isinstance(g.choices, dict) for c in g.choices.values()]
        for q in parsers:
            if any("--no-progress" in a.option_strings for a in q._actions):
                with_flag.append(q.prog)
    for prog in ("itloop day run", "itloop day plan", "itloop day analyze", "itloop day replay",
                 "itloop model fit", "itloop simulate", "itloop report", "itloop stimuli generate"):
        assert prog in with_flag, (prog, with_flag)


def test_the_wire_event_lines_go_to_stderr_even_under_the_cli_handler(capsys):
    from rig.link.eventlog import event_logger

    install_console_logging()   # the CLI's stdout handler on the library loggers
    log = event_logger("rig.link.test_events", "controller")
    log.info("presenter p1 connected")
    logging.getLogger("rig.link.test_events").info("second line")
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[controller ") and lines[0].endswith("] presenter p1 connected")
    assert event_logger("rig.link.test_events", "controller") is log and len(log.handlers) == 1   # idempotent
