"""Day-over-day change: paired over the same problems, on images the later model did not train on."""
from types import SimpleNamespace

import numpy as np
import pytest

from rig.paths import day_path
from rig.steps.dayoverday import day_over_day

N_PARENTS, SITES = 8, np.array([0, 1])


def _day(rng, shift: float, parent_ids: list[str]):
    """2 sites x 8 clean parents each x 1 epsilon x 2 directions; measured change = dir * (1 + shift) + noise."""
    kind, parent, site, direction, pred = [], [], [], [], []
    n_clean = len(parent_ids)
    kind += ["clean"] * n_clean
    parent += [-1] * n_clean
    site += [-1] * n_clean
    direction += [0] * n_clean
    pred += [np.nan] * n_clean
    resp = [np.full((n_clean, 2), 10.0)]
    for s in SITES:
        for p in range(s * N_PARENTS, (s + 1) * N_PARENTS):
            for d in (1, -1):
                kind.append("targeted")
                parent.append(p)
                site.append(int(s))
                direction.append(d)
                pred.append(float(d))
                row = np.full((1, 2), 10.0)
                row[0, s] += d * (1.0 + shift) + rng.normal(0, 0.3)
                resp.append(row)
    n = len(kind)
    stim = SimpleNamespace(kind=np.array(kind), parent=np.array(parent), site=np.array(site),
                           direction=np.array(direction), predicted_change=np.array(pred),
                           epsilons=np.array([1.0]), epsilon_index=np.zeros(n, np.int64))
    ids = list(parent_ids) + [f"pert{k}" for k in range(n - n_clean)]
    r = np.concatenate(resp)
    return SimpleNamespace(stimuli=stim, stim_ids=ids, mean_responses=lambda: r)


class _Cache:
    def __init__(self, days: dict) -> None:
        self.days = days

    def read(self, path):
        return self.days[int(str(path.name)[4:7])]


def test_day_over_day_is_paired_and_says_the_later_model_saw_the_images(tmp_path):
    """The later model pools days 0..D-1, day 1 included, so it has seen every clean image
    that both days perturbed: the table must say the comparison is not out-of-sample."""
    rng = np.random.default_rng(0)
    parents = [f"img{k}" for k in range(2 * N_PARENTS)]
    days = {0: SimpleNamespace(stim_ids=parents), 1: _day(rng, 0.0, parents), 2: _day(rng, 0.0, parents),
            3: _day(rng, 0.5, parents)}
    for d in days:
        day_path(tmp_path, d).touch()
    last = SimpleNamespace(day=3, sites=SITES, sigma=np.ones(2), data=days[3])
    out = day_over_day(tmp_path, last, _Cache(days), n_boot=999)
    assert out["first_day"] == 1 and out["last_day"] == 3
    e = out["epsilons"]["1"]
    assert e["out_of_sample"] is False and "not an out-of-sample comparison" in e["images"]
    assert e["difference"]["n"] == 2 * N_PARENTS                          # one unit per (site, image)
    assert e["difference"]["value"] == pytest.approx(0.5, abs=0.1)        # the 0.5-sigma gain, paired
    d = e["difference"]
    assert d["lo"] <= d["value"] <= d["hi"] and d["lo"] > 0
    assert e["significant"] and e["p_holm"] < 0.05 and 0 < e["mde"] < 0.5
