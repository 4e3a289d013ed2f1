"""Builtin natural images: deterministic crops of photographs shipped inside installed packages.

No download: the photographs come with packages itloop already depends on (scikit-learn's
sample images, matplotlib's sample data, PsychoPy's demo images). There are 18 distinct
photographs (:data:`PHOTOS`, licences in the README); crops of one photograph resemble
each other, so every crop records its photograph (:func:`photo_of`) and cross-validation
groups by it.

Crop ``i`` of seed ``s`` is drawn from its own generator ``default_rng([s, i])``: the
photograph (a seeded permutation, cycled, so the photographs are used evenly), a square
window covering 10-40 % of the photograph's shorter side (at least ``size_px`` pixels where the
photograph is large enough: crops are not upsampled) at a uniform position, and a
horizontal flip with probability 1/2; the window is resized to ``size_px`` (antialiased).
The same ``(n, size_px, seed)`` gives the same pixels in every process.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

# (package, path inside it, credit and licence): every distinct photograph found in them
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("sklearn", "datasets/images/china.jpg", "danielbuechele (Flickr), CC BY 2.0"),
    ("sklearn", "datasets/images/flower.jpg", "vultilion (Flickr), CC BY 2.0"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "US Navy photograph, public domain"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/face01.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/face02.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/face03.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/house01.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/house02.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Design Templates/randomisedBlocks/stims/house03.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Experiments/BART/assets/background.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/builder/Feature Demos/panorama/panImg.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/stimuli/beach.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/stimuli/face.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/iohub/eyetracking/gcCursor/images/canal.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/iohub/eyetracking/gcCursor/images/fall.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/iohub/eyetracking/gcCursor/images/lake.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/iohub/eyetracking/gcCursor/images/party.jpg", "PsychoPy demos, GPL-3.0+"),
    ("psychopy", "demos/coder/iohub/eyetracking/gcCursor/images/swimming.jpg", "PsychoPy demos, GPL-3.0+"),
)
MAX_SIDE_PX = 1024          # photographs are reduced to this longer side once, before cropping
CROP_FRACTION = (0.1, 0.4)   # crop side, as a fraction of the photograph's shorter side (measured in the README:
#                              smaller crops of one photograph resemble each other less; photograph-grouped r of
#                              lite0 layer3/grid2 on the simulated sites 0.29 with 35-100 %, 0.44 with 10-40 %)


class PhotoError(ValueError):
    """A shipped photograph that cannot be found or read; the message names the package."""


def photo_key(k: int) -> str:
    """Short name of photograph ``k``: ``package:file name``."""
    pkg, rel, _ = PHOTOS[k]
    return f"{pkg}:{Path(rel).name}"


def _photo_path(pkg: str, rel: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise PhotoError(f"the builtin images need the package {pkg!r} (it ships the photograph {rel}); "
                         f"install it, or set images.source to a folder of images or to 'pink-noise'")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise PhotoError(f"photograph {path} is missing from the installed {pkg!r}; reinstall {pkg}, or set "
                         "images.source to a folder of images or to 'pink-noise'")
    return path


@functools.lru_cache(maxsize=len(PHOTOS))
def load_photo(k: int) -> np.ndarray:
    """Photograph ``k`` as RGB uint8 ``(h, w, 3)``, longer side reduced to at most ``MAX_SIDE_PX``."""
    from PIL import Image

    path = _photo_path(*PHOTOS[k][:2])
    with Image.open(path) as im:
        im.draft("RGB", (MAX_SIDE_PX, MAX_SIDE_PX))   # JPEG: decode at a reduced scale (the panorama is 52 MP)
        im = im.convert("RGB")
        scale = MAX_SIDE_PX / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def crop_spec(i: int, seed: int) -> tuple[int, float, float, float, bool]:
    """(photograph, side fraction, left fraction, top fraction, flipped) of crop ``i``."""
    order = np.random.default_rng([int(seed), 0x9407]).permutation(len(PHOTOS))
    rng = np.random.default_rng([int(seed), int(i)])
    k = int(order[i % len(PHOTOS)])
    frac = float(rng.uniform(*CROP_FRACTION))
    return k, frac, float(rng.random()), float(rng.random()), bool(rng.random() < 0.5)


def photo_crops(n: int, size_px: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` deterministic crops, RGB uint8 ``(n, size_px, size_px, 3)``, and each crop's name
    ``package:photo.jpg#crop<i>`` (its photograph before the ``#``, see :func:`photo_of`)."""
    from PIL import Image

    if n < 0 or size_px < 1:
        raise ValueError(f"photo_crops needs n >= 0 and size_px >= 1; got n={n}, size_px={size_px}")
    out = np.empty((n, size_px, size_px, 3), dtype=np.uint8)
    names = []
    for i in range(n):
        k, frac, fx, fy, flip = crop_spec(i, seed)
        photo = load_photo(k)
        h, w = photo.shape[:2]
        side = min(min(h, w), max(size_px, round(frac * min(h, w))))   # never upsampled where the photo allows
        left, top = round(fx * (w - side)), round(fy * (h - side))
        im = Image.fromarray(photo[top:top + side, left:left + side])
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(im.resize((size_px, size_px), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)
        names.append(f"{photo_key(k)}#crop{i:05d}")
    return out, names


def photo_of(name: str) -> str:
    """The source photograph of a stimulus name (the part before ``#``; the name itself otherwise)."""
    return str(name).split("#", 1)[0]
