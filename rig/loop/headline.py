"""The headline table of an experiment (first vs last closed-loop day), made from the
``day_DDD.analysis.json`` files that ``itloop day analyze`` / ``simulate`` write.

The README's demo table is this table, pasted by ``bash .ci/readme-table`` from a demo
run's ``report/headline.md``: the numbers in the README always come from a run.
"""
from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- headline-table:begin -->", "<!-- headline-table:end -->"


def _cell(v: dict | None, fmt: str, ci: bool, suffix: str = "") -> str:
    """'1.23x [1.01, 1.40]' from {"value", "lo", "hi"}; 'n/a' where the value is missing."""
    if not v or v.get("value") is None:
        return "n/a"
    s = format(v["value"], fmt) + suffix
    if ci and v.get("lo") is not None and v.get("hi") is not None:
        s += f" [{format(v['lo'], fmt)}, {format(v['hi'], fmt)}]"
    return s


def _row(a: dict, key: str, sub: str | None, fmt: str, eps: list[float], ci: bool, suffix: str) -> str:
    """One day's cells at ``eps``: per-epsilon values are lists aligned with the day's ``epsilons``."""
    src = a.get(key, [])
    if sub is not None:
        src = src.get(sub, []) if isinstance(src, dict) else []
    values = dict(zip(a["epsilons"], src)) if isinstance(src, list) else {}
    return " / ".join(_cell(values.get(e), fmt, ci, suffix) for e in eps)


ROWS = [  # (label, analysis.json key, sub-key, number format, suffix)
    ("bias-corrected sensitivity / sigma", "targeted_signed", None, ".2f", ""),
    ("targeted / random-direction abs(dr)", "targeted_over_random", None, ".1f", "x"),
    ("fraction of the true (white-box) sensitivity reached, noise-free", "truth", "fraction_true_achieved", ".2f", ""),
]


def headline_table(folder: str | Path, ci: bool = True) -> str:
    """Markdown table: rows = headline quantities per epsilon, columns = first and last day."""
    folder = Path(folder)
    files = sorted(folder.glob("day_[0-9][0-9][0-9].analysis.json"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no day_DDD.analysis.json; run `itloop day analyze` first")
    days = [json.loads(f.read_text()) for f in files]
    chosen = [days[0]] if len(days) == 1 else [days[0], days[-1]]
    eps = [float(e) for e in chosen[-1]["epsilons"]]
    head = "| eps " + " / ".join(f"{e:g}" for e in eps) + " | " + " | ".join(f"day {a['day']}" for a in chosen) + " |"
    lines = [head, "| --- |" + " --- |" * len(chosen)]
    for label, key, sub, fmt, suffix in ROWS:
        if not any(key in a for a in chosen):
            continue
        cells = [_row(a, key, sub, fmt, eps, ci, suffix) for a in chosen]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    r = [_cell(a.get("predicted_vs_measured_r"), ".2f", ci) for a in chosen]
    lines.append("| model-predicted vs measured change, Pearson r | " + " | ".join(r) + " |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between the BEGIN and END markers replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the text has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"
