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
    if ci and v.get("lo") is not None and v.get("hi") is not None and not v["lo"] <= v["value"] <= v["hi"]:
        return s + " (no interval: its bootstrap interval excludes the estimate)"
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
    ("targeted - random, floor-corrected RMS change / sigma (95% CI)", "targeted_minus_random",
     None, ".2f", ""),
    ("floor-corrected targeted sensitivity, RMS change / sigma", "floor_corrected_targeted", None, ".2f", ""),
    ("bias-corrected sensitivity / sigma", "targeted_signed", None, ".2f", ""),
    ("fraction of the true (white-box) sensitivity reached, noise-free", "truth", "fraction_true_achieved", ".2f", ""),
]


RATIO_ROW = "targeted / random (floor-corrected; only where random is significantly above the noise floor)"
EXTRA_ROWS = (RATIO_ROW, "model-predicted vs measured change, Pearson r", "designing model, median r",
              "designing model, median r / sqrt(ceiling)", "designing model, median r^2 / ceiling")


def _ratio_row(a: dict, eps: list[float]) -> str:
    texts = dict(zip(a["epsilons"], a.get("targeted_over_random_text", [])))
    return " / ".join(texts.get(e) or "n/a" for e in eps)


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
    if any("targeted_over_random_text" in a for a in chosen):
        lines.append(f"| {RATIO_ROW} | " + " | ".join(_ratio_row(a, eps) for a in chosen) + " |")
    r = [_cell(a.get("predicted_vs_measured_r"), ".2f", ci) for a in chosen]
    lines.append("| model-predicted vs measured change, Pearson r | " + " | ".join(r) + " |")
    for name in ("r", "r / sqrt(ceiling)", "r^2 / ceiling"):
        vals = [a.get("predictivity", {}).get(name) for a in chosen]
        if any(v is not None for v in vals):
            lines.append(f"| designing model, median {name} | "
                         + " | ".join("n/a" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def _e(v: dict | None, fmt: str = ".2f") -> str:
    return _cell(v, fmt, True)


def _no_change(v: dict | None) -> str:
    """' - no significant difference (minimum detectable effect m sigma)' when the 95% CI holds 0.

    The MDE at 80% power is 2.80 standard errors, the SE read off the CI as its width / 3.92."""
    if not v or v.get("lo") is None or v.get("hi") is None or not v["lo"] <= 0 <= v["hi"]:
        return ""
    return f" - no significant difference (minimum detectable effect {2.80 * (v['hi'] - v['lo']) / 3.92:.2f} sigma)"


def describe_day(a: dict) -> list[str]:
    """Terminal / report lines of one day's analysis.json: per epsilon targeted - random with its CI,
    the floor-corrected magnitudes, the noise-floor test and the ratio only where estimable."""
    lines = []
    for k, e in enumerate(a["epsilons"]):
        def at(key, k=k):
            v = a.get(key)
            return v[k] if isinstance(v, list) and k < len(v) else None
        diff = at("targeted_minus_random")
        line = (f"eps {e:g}: targeted - random {_e(diff)} sigma{_no_change(diff)} (floor-corrected RMS: "
                f"targeted {_e(at('floor_corrected_targeted'))}, random {_e(at('floor_corrected_random'))}")
        p = at("random_above_floor_p_holm")
        line += (f"; random above the noise floor: Holm p = {p:.2g}" if p is not None else "") + ")"
        if at("targeted_over_random_text"):
            line += f"; targeted/random {at('targeted_over_random_text')}"
        line += f"; raw |dr| {_e(at('targeted_abs'))}; bias-corrected {_e(at('targeted_signed'))}"
        truth = a.get("truth", {}).get("fraction_true_achieved")
        if truth and k < len(truth) and truth[k]:
            line += f"; fraction of the true sensitivity {_e(truth[k])}"
        lines.append(line)
    return lines


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between the BEGIN and END markers replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the text has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"
