"""Analysis and report section for the issue-23 stimuli (universal, subspace, lines / planes).

:func:`beyond_results` reads one recorded day (and its plan's ``beyond_json``) and computes,
for IT (the recorded counts), for the designing model (its predictions of the shown
stimuli) and, in the simulator, for the truth (the sites' expected counts):

- per epsilon, the mean signed change (``s * (r(shown) - r(parent))``, spikes) under the
  model's universal delta on held-out images and on its design images, under the site's
  per-image targeted perturbations, and under random shared deltas of the same norm (signed
  by the model's predicted sign, the bias-corrected convention); in the simulator also under
  the white-box universal delta designed on the true expected counts (the upper bound);
- the subspace numbers the plan stored and the change along the top singular direction;
- per line: slope and curvature along the designed direction u and along the orthogonal
  random direction v (IT with bootstrap CIs over repeats; model and truth noise-free);
  per plane: the grid of mean responses for the iso-response contours.

:func:`beyond_section` is the report's hook: figures and summary lines.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from analysis.bootstrap import Estimate, bootstrap_mean
from analysis.geometry import fit_line, grid_means, noise_free_fit
from analysis.universal import participation_ratio
from modelfit.features import images_to_tensor
from rig.config import Config, config_from_toml_text
from rig.paths import day_path, model_path, plan_path
from rig.store.reader import DayCache, DayData, read_day

log = logging.getLogger(__name__)
N_BOOT = 1000


def _signed_rows(values: np.ndarray, d: DayData, rows: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``sign * (v[row, site] - v[parent, site])`` per row."""
    st = d.stimuli
    return sign * (values[rows, st.site[rows]] - values[st.parent[rows], st.site[rows]])


def _predictions(cfg: Config, folder: Path, d: DayData) -> np.ndarray:
    """The designing model's f(x) (spikes) for every stimulus, in channel columns (NaN elsewhere)."""
    from modelfit.store import load_fitted

    fitted = load_fitted(model_path(folder, d.day - 1))
    module = fitted.module(weights=cfg.model.weights or None, device=cfg.model.device).eval()
    out = np.full((len(d.stimuli), d.n_channels), np.nan)
    with torch.no_grad():
        for i in range(0, len(d.stimuli), 64):
            x = images_to_tensor(d.stimuli.pixels[i:i + 64]).to(cfg.model.device)
            out[i:i + 64][:, fitted.site_channels] = module(x).double().cpu().numpy()
    return out


def _truth_counts(cfg: Config, d: DayData):
    """(expected counts (n_stim, C), the differentiable count module) of the simulated sites."""
    from rig.backends.factory import build_sim_monkey
    from rig.truth.whitebox import TrueCountModule

    monkey = build_sim_monkey(cfg)
    window = (d.window_ms[0] / 1000.0, d.window_ms[1] / 1000.0)
    on_s = cfg.rsvp.stim_on_ms / 1000.0
    expected = monkey.expected_counts(monkey.true_rates(d.stimuli.pixels), window, on_s)
    return expected, TrueCountModule(monkey, window, on_s).eval()


def _est(values: Sequence[float] | np.ndarray, seed: int) -> Estimate:
    return bootstrap_mean(np.asarray(values, float), N_BOOT, seed=seed)


def universal_table(d: DayData, sources: dict[str, np.ndarray], seed: int) -> dict:
    """Per epsilon and condition, the mean signed change (spikes) with CIs over (site, direction, image) units."""
    st = d.stimuli
    out: dict = {}
    for ie, e in enumerate(st.epsilons):
        if e <= 0:
            continue
        uni = np.flatnonzero((st.kind == "universal") & (st.epsilon_index == ie))
        rnd = np.flatnonzero((st.kind == "universal_random") & (st.epsilon_index == ie))
        tgt = np.flatnonzero((st.kind == "targeted") & (st.epsilon_index == ie)
                             & np.isin(st.site, np.unique(st.site[uni])))
        sub = np.flatnonzero((st.kind == "subspace") & (st.epsilon_index == ie))
        row: dict = {}
        for name, v in sources.items():
            held, design = uni[st.design_role[uni] == 2], uni[st.design_role[uni] == 1]
            rsign = np.sign(st.predicted_change[rnd])
            row[f"{name}/universal_heldout"] = _est(_signed_rows(v, d, held, st.direction[held]), seed)
            row[f"{name}/universal_design"] = _est(_signed_rows(v, d, design, st.direction[design]), seed)
            row[f"{name}/targeted"] = _est(_signed_rows(v, d, tgt, st.direction[tgt]), seed)
            row[f"{name}/random_heldout"] = _est(_signed_rows(v, d, rnd, rsign), seed)
            if len(sub):
                row[f"{name}/subspace_new"] = _est(_signed_rows(v, d, sub, st.direction[sub]), seed)
        out[float(e)] = row
    return out


def _best_universal(obj, design: torch.Tensor, site: int, e: float, sign: int, params, seed: int):
    """The white-box universal delta: the loop's budget, then restarts and steps both doubled; the
    better design-set objective wins. Returns (solution, relative change of the objective on doubling)."""
    from stimuli.universal import solve_universal

    first = solve_universal(obj, design, site, e, sign, params, seed=seed)
    doubled = solve_universal(obj, design, site, e, sign, replace(params, restarts=2 * params.restarts,
                                                                   steps=2 * params.steps), seed=seed + 1)
    best = doubled if doubled.objective > first.objective else first
    change = abs(doubled.objective - first.objective) / max(abs(first.objective), WHITEBOX_FLOOR_SPIKES)
    return best, change


WHITEBOX_FLOOR_SPIKES = 0.05   # objectives below this many expected spikes count as converged


def whitebox_universal(cfg: Config, d: DayData, module, seed: int) -> tuple[dict[float, Estimate], list[float]]:
    """Simulator only: per epsilon, the true signed change on held-out images under a universal delta
    designed on the TRUE expected counts of the design images (at least the loop's budget, then
    both restarts and steps doubled, the better kept), and each problem's relative change on doubling."""
    from rig.steps.beyond import universal_params
    from stimuli.objective import SiteObjective
    from stimuli.params import PerturbParams
    from stimuli.universal import shared_delta_stimuli

    st = d.stimuli
    params = replace(universal_params(cfg, PerturbParams.from_config_section(asdict(cfg.perturb))), prune=False)
    params = replace(params, restarts=max(4, params.restarts), steps=max(16, params.steps))
    obj = SiteObjective(module, "cpu", use_split=False)
    per_eps: dict[float, list] = {}
    changes: list[float] = []
    uni = np.flatnonzero(st.kind == "universal")
    with obj.session():
        for sid in np.unique(st.shared_delta[uni]):
            rows = uni[st.shared_delta[uni] == sid]
            design = st.parent[rows[st.design_role[rows] == 1]]
            held = st.parent[rows[st.design_role[rows] == 2]]
            site, sign, e = int(st.site[rows[0]]), int(st.direction[rows[0]]), float(st.epsilon_requested[rows[0]])
            sol, change = _best_universal(obj, images_to_tensor(st.pixels[design]), site, e, sign, params,
                                          seed + 2 * int(sid))
            changes.append(change)
            shown, _ = shared_delta_stimuli(st.pixels, held, sol.delta.permute(1, 2, 0).double().numpy(), e)
            with torch.no_grad():
                f = module(images_to_tensor(np.concatenate([shown, st.pixels[held]]))).double().numpy()[:, site]
            per_eps.setdefault(e, []).extend((sign * (f[:len(held)] - f[len(held):])).tolist())
    return {e: _est(v, seed) for e, v in sorted(per_eps.items())}, changes


def line_table(d: DayData, info: dict, sources: dict[str, np.ndarray], seed: int) -> list[dict]:
    """Per line: slope and curvature along u and v (IT with CIs; model and truth noise-free) and the plane grids."""
    st = d.stimuli
    pres = d.presentations
    ok = np.asarray(pres["valid"], bool)
    p_stim, p_trial, p_counts = np.asarray(pres["stim_index"])[ok], np.asarray(pres["trial_index"])[ok], d.counts[ok]
    out = []
    for line in info.get("lines", []):
        rows = np.flatnonzero((st.kind == "line") & (st.shared_delta == line["id"]))
        if not len(rows):
            continue
        site, image = int(st.site[rows[0]]), int(st.parent[rows[0]])
        cu, cv = st.coord_u[rows], st.coord_v[rows]
        step = line["t_max"] / max(1, int(line.get("steps_per_side", 3)))
        on_u, on_v = np.abs(cv) < 0.2 * step, np.abs(cu) < 0.2 * step
        res: dict = {"id": line["id"], "site": site, "image": image}
        for axis, mask, coord in (("u", on_u, cu), ("v", on_v, cv)):
            pts = np.concatenate([[image], rows[mask]])
            t_pts = np.concatenate([[0.0], coord[mask]])
            sel = np.flatnonzero(np.isin(p_stim, pts) & np.isfinite(p_counts[:, site]))
            t_of = dict(zip(pts.tolist(), t_pts.tolist()))
            t_all = np.array([t_of[int(s)] for s in p_stim[sel]])
            # whole trials are resampled: a trial's gain is shared by its presentations
            res[f"it_{axis}"] = fit_line(t_all, p_counts[sel, site], n_boot=N_BOOT, seed=seed, clusters=p_trial[sel])
            for name, v in sources.items():
                if name != "it":
                    res[f"{name}_{axis}"] = noise_free_fit(t_pts, v[pts, site])
        if (~(on_u | on_v)).any():
            # the plane's grid: levels every t_max / plane_steps_per_side on both axes (line points on them included)
            pstep = line["t_max"] / max(1, int(line.get("plane_steps_per_side", 1)))
            c = np.stack([np.concatenate([[0.0], cu]), np.concatenate([[0.0], cv])], 1)
            level = np.round(c / pstep) * pstep
            keep = np.all(np.abs(c - level) < 0.2 * pstep, axis=1)
            pts = np.concatenate([[image], rows])[keep]
            res["plane"] = {name: grid_means(level[keep], v[pts, site]) for name, v in sources.items()}
        out.append(res)
    return out


def beyond_results(cfg: Config, folder: Path, day: int, cache: DayCache) -> dict | None:
    """Everything the section needs about ``day``; None when the day has no issue-23 stimuli."""
    d = cache.read(day_path(folder, day))
    kinds = set(np.asarray(d.stimuli.kind, str))
    if not kinds & {"universal", "universal_random", "subspace", "line"}:
        return None
    cfg = config_from_toml_text(d.config_text)
    plan = read_day(plan_path(folder, day)) if plan_path(folder, day).exists() else None
    info = json.loads(plan.attrs.get("beyond_json", "{}")) if plan is not None else {}
    columns = np.asarray(d.model.get("site_channels", np.arange(d.n_channels)), np.int64)
    for entry in info.get("subspace", []) + info.get("shared", []) + info.get("lines", []):
        entry["site"] = int(columns[entry["site"]])       # the plan names sites by model column; report channels
    for line in info.get("lines", []):
        line.setdefault("steps_per_side", cfg.geometry.steps_per_side)
        line.setdefault("plane_steps_per_side", cfg.geometry.plane_steps_per_side)
    sources = {"it": d.mean_responses().astype(float), "model": _predictions(cfg, folder, d)}
    simulated = "sim" in str(d.attrs.get("backend", ""))
    module = None
    if simulated:
        sources["truth"], module = _truth_counts(cfg, d)
    seed = cfg.day_seed(day)
    res = {"day": day, "info": info, "simulated": simulated, "universal": universal_table(d, sources, seed),
           "lines": line_table(d, info, sources, seed), "data": d, "sources": sources}
    if simulated and cfg.universal.whitebox and "universal" in kinds:
        log.info("ground truth: white-box universal deltas on the simulated sites' expected counts")
        res["whitebox_universal"], res["whitebox_universal_change"] = whitebox_universal(cfg, d, module, seed)
    return res


def beyond_section(cfg: Config, folder: Path, out: Path, day: int, cache: DayCache, figs: list) -> list[str]:
    """The report hook: figures (appended to ``figs``) and summary lines for the last day."""
    from analysis import geometry_plots as gp

    res = beyond_results(cfg, Path(folder), day, cache)
    if res is None:
        return []
    lines = [(f"Beyond the paper (day {day}): site-universal perturbations, the subspace of designs, response "
             "geometry. Changes are signed (s · Δr, spikes per window; random shared deltas signed by the model's "
             "predicted sign); CIs: 95% bootstrap over (site, direction, image) units; slopes and curvatures: 95% "
             "BCa bootstrap over trials, in spikes per unit L2 norm (per unit² for curvature).")]
    if res["universal"]:
        figs.append(gp.plot_universal_vs_epsilon(out / "universal_heldout.png", res["universal"],
                                                 res.get("whitebox_universal")))
        figs.append(gp.plot_universal_examples(out / "universal_examples.png", res["data"]))
        lines += _universal_lines(res)
    if res["info"].get("subspace"):
        figs.append(gp.plot_subspace(out / "subspace.png", res["info"]["subspace"]))
        lines += _subspace_lines(res["info"]["subspace"])
    if res["lines"]:
        figs.append(gp.plot_curvature(out / "curvature.png", res["lines"]))
        lines += _line_lines(res["lines"])
        planes = [r for r in res["lines"] if "plane" in r]
        if planes:
            figs.append(gp.plot_iso_plane(out / "iso_response_plane.png", planes[0]))
    (out / "beyond.json").write_text(json.dumps(_jsonable(res), indent=1))
    return lines


def _universal_lines(res: dict) -> list[str]:
    out = []
    for e, row in res["universal"].items():
        parts = [f"{k.replace('/', ' ')} {v}" for k, v in row.items() if k.startswith(("it/", "truth/"))]
        wb = res.get("whitebox_universal", {}).get(e)
        if wb is not None:
            parts.append(f"truth white-box universal heldout {wb}")
        out.append(f"Universal, eps {e:g}: " + "; ".join(parts) + ".")
    ch = np.asarray(res.get("whitebox_universal_change", []))
    if len(ch):
        out.append(f"White-box universal deltas: doubling restarts and steps changed the design-set objective by a "
                   f"median {100 * np.median(ch):.2g}% (max {100 * ch.max():.2g}%); {int(np.sum(ch < 0.02))} of {len(ch)} "
                   "problems moved by < 2% (converged; the rest are lower bounds of the upper bound).")
    return out


def _subspace_lines(subs: list[dict]) -> list[str]:
    out = []
    for s in subs:
        sv = np.asarray(s["singular_values"])
        fr = ", ".join(f"k={k}: {f:.2g} (random {min(k, s['dim']) / s['dim']:.1e})"
                       for k, f in zip(s["k"], s["heldout_fraction"]))
        out.append(f"Subspace, channel {s['site']}: {len(sv)} designs, participation ratio "
                   f"{participation_ratio(sv):.2f}; held-out design's share in the others' top-k: {fr}.")
    return out


def coverage(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """How many IT 95% CIs contain the truth's value: {"slope": (inside, n), "curvature": (inside, n)}."""
    out = {}
    for i, what in enumerate(("slope", "curvature")):
        hits = [getattr(r[f"it_{a}"], what).lo <= r[f"truth_{a}"][i] <= getattr(r[f"it_{a}"], what).hi
                for r in rows for a in ("u", "v") if f"truth_{a}" in r]
        out[what] = (int(sum(hits)), len(hits))
    return out


def curvature_contrast(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean |curvature| along the designed and the random orthogonal direction, per source."""
    def curv(r: dict, src: str, a: str) -> float:
        return r[f"it_{a}"].curvature.value if src == "it" else r[f"{src}_{a}"][1]

    return {src: (float(np.mean([abs(curv(r, src, "u")) for r in rows])), float(np.mean([abs(curv(r, src, "v")) for r in rows])))
            for src in ("it", "model", "truth") if all(f"{src}_u" in r for r in rows)}


def _line_lines(rows: list[dict]) -> list[str]:
    cov = coverage(rows)
    out = [f"Lines: truth inside IT's 95% CI for {cov['slope'][0]} of {cov['slope'][1]} slopes and "
           f"{cov['curvature'][0]} of {cov['curvature'][1]} curvatures." if cov["slope"][1] else "Lines: no truth (not simulated).",
           "Mean |curvature| (spikes / L2 unit²) along the designed vs the random orthogonal direction: "
           + "; ".join(f"{k} {u:.3g} vs {v:.3g}" for k, (u, v) in curvature_contrast(rows).items()) + "."]
    for r in rows:
        for axis, name in (("u", "designed"), ("v", "random orthogonal")):
            it = r[f"it_{axis}"]
            parts = [f"IT slope {it.slope}, curvature {it.curvature}"]
            for src in ("model", "truth"):
                if f"{src}_{axis}" in r:
                    b, c = r[f"{src}_{axis}"]
                    parts.append(f"{src} slope {b:.3g}, curvature {c:.3g}")
            out.append(f"Line {r['id']} (channel {r['site']}, image {r['image']}), {name} direction: " + "; ".join(parts) + ".")
    return out


def _jsonable(res: dict) -> dict:
    def conv(v):
        if isinstance(v, Estimate):
            return {"value": v.value, "lo": v.lo, "hi": v.hi}
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, np.ndarray):
            return v.tolist()
        if hasattr(v, "slope") and hasattr(v, "curvature"):
            return {"slope": conv(v.slope), "curvature": conv(v.curvature)}
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return {k: conv(v) for k, v in res.items() if k not in ("data", "sources")}
