"""The headline table (README demo table) is made from the analysis files of a run."""
import json
from pathlib import Path

import pytest

from rig.results.headline import (
    BEGIN,
    END,
    EXTRA_ROWS,
    ROWS,
    headline_table,
    replace_block,
)

ROOT = Path(__file__).resolve().parents[1]


def _est(v, lo, hi):
    return {"value": v, "lo": lo, "hi": hi, "n": 10}


def _analysis(day, scale):
    eps = [0.5, 2.0]
    return {"day": day, "epsilons": eps,
            "targeted_signed": [_est(1.0 * scale, 0.9 * scale, 1.1 * scale), _est(2.0 * scale, 1.8 * scale, 2.2 * scale)],
            "targeted_minus_random": [_est(0.5 * scale, 0.25, 0.75), _est(1.5, 1.0, 2.0)],
            "targeted_over_random_text": ["not estimable: random at the noise floor", "3.10x [2.00, 4.50]"],
            "predictivity": {"r": 0.5, "r / sqrt(ceiling)": 0.56, "r^2 / ceiling": 0.31},
            "truth": {"fraction_true_achieved": [_est(0.5, 0.4, 0.6), _est(None, None, None)]},
            "predicted_vs_measured_r": _est(0.75, 0.5, 0.9)}


def test_table_has_first_and_last_day_with_intervals(tmp_path):
    for day, scale in ((1, 1.0), (2, 1.5), (3, 2.0)):
        (tmp_path / f"day_{day:03d}.analysis.json").write_text(json.dumps(_analysis(day, scale)))
    table = headline_table(tmp_path)
    lines = table.strip().split("\n")
    assert lines[0] == "| eps 0.5 / 2 | day 1 | day 3 |"
    assert "| bias-corrected sensitivity / sigma | 1.00 [0.90, 1.10] / 2.00 [1.80, 2.20] | 2.00 [1.80, 2.20] / 4.00 [3.60, 4.40] |" in lines
    assert "| targeted - random, floor-corrected RMS change / sigma (95% CI) | 0.50 [0.25, 0.75] " \
           "/ 1.50 [1.00, 2.00] |" in table
    assert "not estimable: random at the noise floor / 3.10x [2.00, 4.50]" in table   # ratio only where estimable
    for name in ("median r |", "median r / sqrt(ceiling) |", "median r^2 / ceiling |"):
        assert name in table
    assert "0.50 [0.40, 0.60] / n/a" in table  # a missing value says so
    assert "| model-predicted vs measured change, Pearson r | 0.75 [0.50, 0.90]" in table
    with pytest.raises(FileNotFoundError):
        headline_table(tmp_path / "empty")
    a = _analysis(4, 1.0)
    a["targeted_signed"][0] = _est(2.0, 0.9, 1.1)   # an estimate outside its own interval is never printed with it
    (tmp_path / "day_004.analysis.json").write_text(json.dumps(a))
    assert "2.00 (no interval: its bootstrap interval excludes the estimate)" in headline_table(tmp_path)


def test_readme_holds_a_generated_table():
    text = (ROOT / "README.md").read_text()
    assert BEGIN in text and END in text, "the README's demo table must sit between the headline-table markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().split("\n")
    assert block[0].startswith("| eps ") and block[1].startswith("| --- |")
    labels = [ln.split("|")[1].strip() for ln in block[2:]]
    assert set(labels) <= {label for label, *_ in ROWS} | set(EXTRA_ROWS)
    assert replace_block(text, "X\n").count(BEGIN) == 1
