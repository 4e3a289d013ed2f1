"""The white-box truth is cached per (clean image, site, eps): a later call attacks only new
problems, returns the cached answers unchanged, and another key starts afresh."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rig.truth.whitebox import cached_whitebox, converged_whitebox
from stimuli.images import builtin_images
from stimuli.perturb import PerturbParams


class _Sites(nn.Module):
    """Three smooth sites of a 16-px image: a tanh of a fixed linear filter each (spikes)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) / 16

    def forward(self, x):
        return 5.0 * torch.tanh(torch.einsum("bchw,schw->bs", x - 0.5, self.w))


def test_cache_reuses_problems_across_calls_and_refuses_another_key(tmp_path):
    module = _Sites().eval()
    clean = builtin_images(4, 16, seed=1)
    params = PerturbParams(restarts=2, steps=6, prune=False, random_controls_per_image=0, max_batch_rows=64)
    eps = [0.5, 1.0]
    path = tmp_path / "groundtruth.npz"
    calls: list[int] = []
    first = [(0, 0), (1, 2)]
    a = cached_whitebox(path, {"sim": "a"}, module, clean, first, eps, params, seed=7,
                        on_compute=calls.append)
    direct = converged_whitebox(module, clean, first, eps, params, seed=7)
    np.testing.assert_array_equal(a.best, direct.best)   # the cache changes nothing about the answers
    assert a.restarts == 4 and a.steps == 12 and len(a.converged) == 2
    # a later day: the same two problems (other order, other clean-set position) plus two new ones
    clean2 = np.concatenate([clean[2:], clean[:2]])      # image 0 is now at index 2, image 1 at 3
    later = [(3, 2), (0, 1), (2, 0), (1, 1)]
    b = cached_whitebox(path, {"sim": "a"}, module, clean2, later, eps, params, seed=7,
                        on_compute=calls.append)
    assert calls == [2, 2]                               # only the two new problems were attacked
    np.testing.assert_array_equal(b.best[0], a.best[1])
    np.testing.assert_array_equal(b.best[2], a.best[0])
    assert np.all(b.best > 0)                            # every answer is a real improvement (spikes)
    # everything cached now: nothing is attacked
    cached_whitebox(path, {"sim": "a"}, module, clean2, later, eps, params, seed=7,
                    on_compute=calls.append)
    assert calls == [2, 2]
    # another simulator (or window, budget, step rules): the file starts afresh
    cached_whitebox(path, {"sim": "b"}, module, clean, first, eps, params, seed=7,
                    on_compute=calls.append)
    assert calls == [2, 2, 2]
