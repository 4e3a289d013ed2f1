"""Clean image sets: from a user folder, or built in (no download).

``images.source``: a folder path; ``"builtin"``, deterministic crops of the photographs
that ship inside installed packages (:mod:`stimuli.photos`); or ``"pink-noise"``, the
generated 1/f textures with shapes (:func:`builtin_images`, the builtin set before natural
photographs). Every image comes out as RGB uint8 ``(n, size, size, 3)``: exactly what is
displayed, with one name per image that starts with its source (photograph, file or
texture; see :func:`stimuli.photos.photo_of`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderError(ValueError):
    """An image folder that cannot be used; the message says which file and why."""


MAX_SOURCE_PIXELS = 64_000_000   # larger source images are refused before decoding (a 4-byte/px bomb = 256 MB)


def load_folder(folder: str | Path, size_px: int, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read every image in ``folder`` (sorted by name), resize the shorter side to ``size_px``,
    centre-crop to ``size_px`` x ``size_px`` and convert to RGB uint8.

    Returns ``(pixels (n, size_px, size_px, 3) uint8, file names)``. Raises
    :class:`ImageFolderError` naming the folder or the unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"image folder {folder} does not exist or is not a folder; set images.source to a folder of images or to 'builtin'")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageFolderError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images or set images.source = 'builtin'")
    if limit is not None:
        files = files[:limit]
    out = np.empty((len(files), size_px, size_px, 3), dtype=np.uint8)
    upscaled: list[tuple[int, str]] = []       # (shorter side, name) of images smaller than size_px
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                w, h = im.size                      # from the header: nothing decoded yet
                if w * h > MAX_SOURCE_PIXELS:
                    raise ImageFolderError(f"image {path} is {w} x {h} pixels, more than {MAX_SOURCE_PIXELS:,} "
                                           "(a decompression bomb or an oversized photo); remove or shrink it")
                im = im.convert("RGB")
                if min(w, h) < size_px:
                    upscaled.append((min(w, h), path.name))
                scale = size_px / min(w, h)
                nw, nh = max(size_px, round(w * scale)), max(size_px, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - size_px) // 2, (nh - size_px) // 2
                out[i] = np.asarray(im.crop((left, top, left + size_px, top + size_px)), dtype=np.uint8)
        except ImageFolderError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageFolderError(f"image {path} refused as a possible decompression bomb ({exc}); remove it") from None
        except (UnidentifiedImageError, OSError, ValueError, MemoryError) as exc:
            raise ImageFolderError(f"image {path} cannot be read ({exc}); remove or replace it") from None
    if upscaled:
        side, name = min(upscaled)
        logging.getLogger(__name__).warning(
            "%d of %d images in %s are smaller than images.size_px = %d and are upscaled to it (smallest: %s, "
            "shorter side %d px)", len(upscaled), len(files), folder, size_px, name, side)
    return out, [p.name for p in files]


def _pink_noise(rng: np.random.Generator, size: int, alpha: float) -> np.ndarray:
    """One channel of 1/f^alpha noise, zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**alpha
    spec[0, 0] = 0
    img = np.fft.irfft2(spec, s=(size, size))
    return img / (img.std() + 1e-12)


def builtin_images(n: int, size_px: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` naturalistic images, deterministic from ``seed``: RGB uint8 (n, size_px, size_px, 3).

    Each image is coloured 1/f noise (natural-image amplitude spectrum) with a few
    object-like shapes (ellipses and oriented gratings) in front, so that a network's
    features vary from image to image as they do for photographs. No download needed.
    """
    if n < 0 or size_px < 1:
        raise ValueError(f"builtin_images needs n >= 0 and size_px >= 1; got n={n}, size_px={size_px}")
    out = np.empty((n, size_px, size_px, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        alpha = rng.uniform(0.9, 1.6)
        mix = rng.normal(size=(3, 3)) * 0.3 + np.eye(3)
        base = np.stack([_pink_noise(rng, size_px, alpha) for _ in range(3)], -1) @ mix.T
        img = 0.5 + 0.12 * base + rng.uniform(-0.15, 0.15, size=3)
        for _ in range(rng.integers(1, 5)):
            cx, cy = rng.uniform(0.15, 0.85, size=2)
            a, b = rng.uniform(0.06, 0.3, size=2)
            th = rng.uniform(0, np.pi)
            dx, dy = xx - cx, yy - cy
            u = (dx * np.cos(th) + dy * np.sin(th)) / a
            v = (-dx * np.sin(th) + dy * np.cos(th)) / b
            mask = 1.0 / (1.0 + np.exp(np.minimum((u**2 + v**2 - 1.0) * 12.0, 50.0)))
            colour = rng.uniform(0.05, 0.95, size=3)
            if rng.random() < 0.4:
                freq = rng.uniform(4, 20)
                grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u * a + rng.uniform(0, 2 * np.pi))
                fill = colour[None, None, :] * grating[..., None] + (1 - grating[..., None]) * (1 - colour)
            else:
                shade = 0.8 + 0.2 * np.clip(1 - (u + v) * 0.3, 0, 1)
                fill = colour[None, None, :] * shade[..., None]
            img = img * (1 - mask[..., None]) + fill * mask[..., None]
        out[i] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return out


BUILTIN_SOURCES = ("builtin", "pink-noise")


def clean_images(source: str, size_px: int, n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The configured clean set: ``source`` is ``"builtin"`` (photograph crops),
    ``"pink-noise"`` (generated textures) or a folder path.

    Returns ``(pixels, names)``; a folder with fewer than ``n`` images gives all it has.
    A photograph crop's name is ``package:photo.jpg#crop<i>``, grouping crops of one photograph.
    """
    if source == "builtin":
        from stimuli.photos import photo_crops

        return photo_crops(n, size_px, seed)
    if source == "pink-noise":
        return builtin_images(n, size_px, seed), [f"pink-noise-{seed}-{i:05d}" for i in range(n)]
    return load_folder(source, size_px, limit=n)
