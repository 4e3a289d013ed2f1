"""Feature extraction speed on this machine: fp32 vs channels_last vs bf16 autocast (ResNet50 at 224 px).

Prints images/s for each mode side by side, and the bf16 error against fp32 features
(relative L2 error over the batch, and the worst single feature's error relative to the
feature scale). Random-init weights (nothing downloaded); speed does not depend on them.

    python benchmarks/features_bench.py [--n 32] [--batch 16] [--backbone resnet50] [--layer layer4]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from modelfit.backbone import build_backbone
from modelfit.features import FeatureExtractor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images per timed pass")
    ap.add_argument("--batch", type=int, default=16, help="images per forward")
    ap.add_argument("--size", type=int, default=224, help="image side, pixels")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per mode (best is reported)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(a.n, a.size, a.size, 3), dtype=np.uint8)
    modes = [("fp32", False, False), ("fp32 + channels_last", True, False),
             ("bf16", False, True), ("bf16 + channels_last", True, True)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.backbone}/{a.layer}, "
          f"{a.n} images at {a.size} px, batch {a.batch}; MALLOC_MMAP_THRESHOLD_="
          f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    results = {}
    for label, cl, bf16 in modes:
        fx = FeatureExtractor(build_backbone(a.backbone, a.layer), batch_size=a.batch, channels_last=cl,
                              bf16=bf16)
        fx.transform(pixels[: a.batch])  # warm-up (oneDNN kernel selection)
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            feats = fx.transform(pixels)
            best = min(best, time.perf_counter() - t)
        results[label] = (a.n / best, feats)
    ref = results["fp32"][1]
    scale = np.abs(ref).mean()
    print(f"\n{'mode':<22} {'images/s':>9} {'speed-up':>9} {'rel L2 err':>11} {'max err/mean|f|':>16}")
    for label, (ips, feats) in results.items():
        rel = np.linalg.norm(feats - ref) / np.linalg.norm(ref)
        worst = np.abs(feats - ref).max() / scale
        print(f"{label:<22} {ips:>9.2f} {ips / results['fp32'][0]:>8.2f}x {rel:>11.2e} {worst:>16.2e}")


if __name__ == "__main__":
    main()
