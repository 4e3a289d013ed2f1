"""Presenter benchmark (run under Xvfb: ``xvfb-run -a python benchmarks/presenter_bench.py``).

Measures: texture preload time for 1,000 and 10,000 images (Stage.preload, in process),
the whole protocol path for 1,000 images (send uint8 frames + sha1 check + preload in a
presenter subprocess), and draw+flip overhead per frame (no vsync under Xvfb, so this is
the CPU cost of a frame, the part that must stay well under a refresh period).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def bench_preload(stage, n: int, side: int) -> float:
    px = _images(n, side)
    t0 = time.perf_counter()
    stage.preload(px)
    stage.win.flip()
    dt = time.perf_counter() - t0
    stage.images = []
    return dt


def bench_frames(stage, n_frames: int) -> tuple[float, float]:
    """(ms per draw+flip of an image frame, ms per frame of the real trial loop incl. polling)."""
    from rig.presenter.trial import run_frames

    stage.preload(_images(8, 224))
    t0 = time.perf_counter()
    for i in range(n_frames):
        stage.draw("stim_on", i % 8)
        stage.win.flip()
    per_flip = (time.perf_counter() - t0) / n_frames * 1000
    order = [i % 8 for i in range(n_frames // 12)]
    t0 = time.perf_counter()
    log = run_frames(stage, order, 0, 6, 6, should_abort=lambda: None)
    per_loop = (time.perf_counter() - t0) / len(log.frame_time_s) * 1000
    stage.images = []
    return per_flip, per_loop


def bench_protocol(n: int, side: int) -> tuple[float, float]:
    """Seconds to send+verify n images and to preload them, through a presenter subprocess."""
    from rig.link.client import PresenterClient
    from stimuli.stimset import sha1_of

    px = _images(n, side, 1)
    ids = [sha1_of(p) for p in px]
    with PresenterClient(session="bench", dead_after_s=10.0) as c:
        proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "present", "--endpoint", c.endpoint, "--windowed",
                                 "400x300", "--refresh-hz", "60", "--quiet"])
        try:
            c.wait_for_presenter(60)
            c.configure(stim_on_ms=100, mask_ms=100)
            t0 = time.perf_counter()
            c.load_stimuli(px, ids, preload=False)
            t_send = time.perf_counter() - t0
            t_pre = c.preload()["seconds"]
            c.shutdown()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return t_send, t_pre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1,000 images only")
    args = ap.parse_args()
    from rig.presenter.stage import Monitor, Stage

    stage = Stage(Monitor(53.0, 57.0, 1920, 1080), window_px=(800, 600))
    rows = []
    for n, side in ([(1000, 32), (1000, 224)] + ([] if args.quick else [(10000, 32)])):
        dt = bench_preload(stage, n, side)
        rows.append((f"preload {n:,} images {side}x{side}", f"{dt:.2f} s", f"{dt / n * 1000:.2f} ms/image"))
    per_flip, per_loop = bench_frames(stage, 600)
    rows.append(("draw+flip, 224 px image, 800x600 window", f"{per_flip:.2f} ms/frame", "no vsync (Xvfb)"))
    rows.append(("trial loop per frame (draw, poll, stamp, flip)", f"{per_loop:.2f} ms/frame", "no vsync (Xvfb)"))
    stage.close()
    t_send, t_pre = bench_protocol(1000, 224)
    rows.append(("protocol: send+sha1-verify 1,000 x 224 px", f"{t_send:.2f} s", f"{t_send:.2f} ms/image"))
    rows.append(("protocol: preload those 1,000 in presenter", f"{t_pre:.2f} s", f"{t_pre:.2f} ms/image"))
    w = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{w}}  {'value':>14}  note")
    for name, val, note in rows:
        print(f"{name:<{w}}  {val:>14}  {note}")


if __name__ == "__main__":
    main()
