"""GPU readiness of the perturbation engine, measured in one run on a CUDA machine.

    .venv/bin/python benchmarks/gpu_check.py [--quick] [--backbone resnet50] [--size 224]

Without CUDA it prints that nothing was measured and exits 0. On a CUDA device it prints:

(a) engine rows/s vs the bare backbone's forward+input-backward rows/s at the same batch
    (target ratio >= 0.9);
(b) fp32 vs bf16 vs bf16+channels_last: engine rows/s and the mean reached objective
    s*(f_i(x+delta) - f_i(x)), every mode's deltas re-scored in fp32 (target: |mean
    difference| <= 1 % of fp32's);
(c) torch.compile of the backbone on/off: engine rows/s (compile time printed apart);
(d) the largest batch (rows) whose forward+input-backward fits in memory (doubling from 64
    until CUDA runs out of memory, then bisecting), and rows/s there;
(e) the projected time of a paper-scale day (21 sites x 42 images x 4 epsilons x 2
    directions, 100 restarts x 40 steps, restart pruning as config.toml sets it) at the
    best measured rows/s.

Model: the backbone (random init: no weights are downloaded) with a random readout on
z-scored features, as benchmarks/perturb_bench.py builds it. ``--device cpu`` runs the same
code on CPU (for checking the script itself; the numbers are not GPU numbers).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def site_model(name: str, n_sites: int, size: int, device: str):
    from modelfit.backbone import build_backbone
    from modelfit.readout import SiteModel

    bb = build_backbone(name, "layer4", None)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (16, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        f = bb(x).numpy()
    d = f.shape[1]
    m = SiteModel(bb, f.mean(0), f.std(0) + 1e-6, rng.normal(0, 1 / np.sqrt(d), (n_sites, d)), np.zeros(n_sites))
    return m.to(device)


def images(n: int, size: int, device: str) -> torch.Tensor:
    from stimuli.images import builtin_images

    return (torch.from_numpy(builtin_images(n, size, 1)).permute(0, 3, 1, 2).float() / 255).contiguous().to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_rows_per_s(model, x: torch.Tensor, batch: int, reps: int, channels_last: bool = False,
                    bf16: bool = False) -> float:
    dev = x.device
    w = torch.randn(batch, model.weight.shape[1], device=dev)
    xb = x[torch.arange(batch, device=dev) % len(x)].clone()
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if bf16 else None

    def once():
        xi = xb.clone().requires_grad_(True)
        if ctx:
            with ctx():
                f = model.backbone(xi)
        else:
            f = model.backbone(xi)
        torch.autograd.grad(f, xi, grad_outputs=w.to(f.dtype))

    for _ in range(2):
        once()
    sync(str(dev))
    t = time.perf_counter()
    for _ in range(reps):
        once()
    sync(str(dev))
    return batch * reps / (time.perf_counter() - t)


def problems(n_img: int, sites: list[int], eps: list[float]):
    img, site, e, s = [], [], [], []
    for i in range(n_img):
        for j in sites:
            for ee in eps:
                for sg in (1, -1):
                    img.append(i); site.append(j); e.append(ee); s.append(sg)
    return img, site, e, s


def engine_run(model, x, prob, params, device: str):
    """(rows/s, solutions) of the engine on ``prob`` (no pruning, no early stop: every row runs all steps)."""
    from stimuli.objective import SiteObjective
    from stimuli.perturb import solve

    obj = SiteObjective(model, device, channels_last=params.channels_last, bf16=params.bf16)
    img, site, e, s = prob
    with obj.session():
        solve(obj, x, img[:1], site[:1], e[:1], s[:1], type(params)(restarts=2, steps=2,
                                                                      max_batch_rows=params.max_batch_rows,
                                                                      channels_last=params.channels_last,
                                                                      bf16=params.bf16))
        sync(device)
        t = time.perf_counter()
        sols = solve(obj, x, img, site, e, s, params)
        sync(device)
        el = time.perf_counter() - t
    return sum(so.passes for so in sols) / el, sols


def fp32_objective(model, x, prob, sols, device: str) -> np.ndarray:
    from stimuli.objective import SiteObjective

    img, site, e, s = prob
    obj = SiteObjective(model, device)
    d = torch.stack([so.delta for so in sols]).to(device)
    x0 = x[torch.as_tensor(img, device=device)]
    st = torch.as_tensor(site, device=device)
    sg = torch.as_tensor(s, device=device).float()
    out = []
    with obj.session():
        for i in range(0, len(d), 64):
            f1 = obj.predict(x0[i:i + 64] + d[i:i + 64], st[i:i + 64])
            f0 = obj.predict(x0[i:i + 64], st[i:i + 64])
            out.append((sg[i:i + 64] * (f1 - f0)).cpu().numpy())
    return np.concatenate(out)


def largest_batch(model, x, limit: int, device: str) -> tuple[int, float]:
    """Largest forward+input-backward batch that fits (doubling, then bisection), and its rows/s."""
    def fits(b: int) -> bool:
        try:
            bare_rows_per_s(model, x, b, 1)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, 64
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if lo == 0:
        return 0, 0.0
    hi = min(hi, limit + 1)
    while hi - lo > max(8, lo // 16):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, bare_rows_per_s(model, x, lo, 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer problems and steps")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256, help="engine batch (max_batch_rows)")
    ap.add_argument("--max-batch", type=int, default=4096, help="stop the largest-batch search here")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
              "Run this on a machine with an NVIDIA GPU.")
        return 0
    from rig.config import load_config
    from stimuli.cost import run_passes
    from stimuli.perturb import PerturbParams

    dev = args.device
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; backbone {args.backbone} (random init) at {args.size} px")
    model = site_model(args.backbone, 4, args.size, dev)
    n_img, steps = (4, 10) if args.quick else (16, 20)
    x = images(n_img, args.size, dev)
    prob = problems(n_img, [0, 1], [1.0, 3.0])
    B = args.batch
    restarts = max(2, -(-B // len(prob[0])))   # enough rows to keep the batch full
    base = dict(restarts=restarts, steps=steps, prune=False, early_stop=False, max_batch_rows=B)
    print(f"problems: {len(prob[0])} x {restarts} restarts x {steps} steps, batch {B} rows")

    # (a) engine vs bare, fp32
    bare = bare_rows_per_s(model, x, B, 5)
    eng, sols32 = engine_run(model, x, prob, PerturbParams(**base), dev)
    print(f"(a) fp32: engine {eng:.1f} rows/s, bare backbone fwd+input-bwd {bare:.1f} rows/s, ratio {eng / bare:.3f} "
          "(target >= 0.9)")

    # (b) precision and memory format
    obj32 = fp32_objective(model, x, prob, sols32, dev)
    rows = [("fp32", eng, obj32.mean(), 0.0)]
    best = max(eng, 0.0)
    for label, kw in (("bf16", dict(bf16=True)), ("bf16+channels_last", dict(bf16=True, channels_last=True)),
                      ("fp32+channels_last", dict(channels_last=True))):
        r, sols = engine_run(model, x, prob, PerturbParams(**base, **kw), dev)
        o = fp32_objective(model, x, prob, sols, dev)
        rows.append((label, r, o.mean(), (o.mean() - obj32.mean()) / abs(obj32.mean())))
        best = max(best, r)
    print("(b) mode                  rows/s   speed vs fp32   mean objective (fp32 re-score)   difference vs fp32")
    for label, r, m, d in rows:
        print(f"    {label:<20} {r:9.1f}   {r / eng:12.2f}x   {m:30.5f}   {100 * d:+16.3f} %")

    # (c) torch.compile
    try:
        comp = site_model(args.backbone, 4, args.size, dev)
        t = time.perf_counter()
        comp.backbone = torch.compile(comp.backbone)
        engine_run(comp, x, prob, PerturbParams(**{**base, "steps": 2}), dev)   # compile + warm-up
        t_comp = time.perf_counter() - t
        r, _ = engine_run(comp, x, prob, PerturbParams(**base), dev)
        print(f"(c) torch.compile: engine {r:.1f} rows/s vs {eng:.1f} without ({r / eng:.2f}x); "
              f"compile + warm-up {t_comp:.1f} s")
        best = max(best, r)
    except Exception as exc:  # report, do not hide: compile needs a working toolchain
        print(f"(c) torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    # (d) largest batch
    if dev.startswith("cuda"):
        lb, lr = largest_batch(model, x, args.max_batch, dev)
        print(f"(d) largest forward+input-backward batch that fits: {lb} rows "
              f"(search capped at {args.max_batch}); {lr:.1f} rows/s there; "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB on the device")
        best = max(best, lr)
    else:
        print("(d) largest batch: only searched on CUDA")

    # (e) paper-scale day
    cfg = load_config()
    p = PerturbParams.from_config_section(cfg.perturb)
    size = run_passes(21 * 42, 21 * 42, [0.5, 1.0, 2.0, 3.0], p)
    print(f"(e) paper-scale day: {size.passes:,} passes (config.toml's pruning, no early stop) + "
          f"{size.forward_rows:,} forward rows; at {best:.1f} rows/s: {size.pass_equivalents / best / 3600:.2f} h "
          f"on this one device; at the fp32 engine rate {eng:.1f}: {size.pass_equivalents / eng / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
