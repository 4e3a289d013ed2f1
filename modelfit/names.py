"""The model backbones and layers a config may name, without importing torch.

:mod:`modelfit.backbone` builds them (its ``REGISTRY`` holds exactly :data:`BACKBONES`);
checks that run before anything heavy (``rig.steps.preflight`` in the live rig's controller)
read the names here.
"""
BACKBONES = ("resnet50", "resnet18", "tiny", "efficientnet-lite0")
LAYERS = ("layer3", "layer4.0", "layer4")


def pool_grid(pool: str) -> int:
    """Side ``k`` of the spatial grid a ``model.pool`` value average-pools features onto:
    ``"avg"`` -> 1 (global average, ``D = C``), ``"grid<k>"`` (k = 1..8) -> k (``D = C * k * k``,
    channel-major: feature ``c * k * k + row * k + col``). Raises ValueError otherwise."""
    p = str(pool)
    if p == "avg":
        return 1
    if p.startswith("grid") and p[4:].isdigit() and 1 <= int(p[4:]) <= 8:
        return int(p[4:])
    raise ValueError(f"model.pool = {pool!r} is not a pooling; use 'avg' (global average) or 'grid<k>' "
                     "(a k x k grid of average-pooled features, k = 1..8, e.g. 'grid2')")
