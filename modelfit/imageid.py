"""An image's identity: the sha1 of its uint8 bytes, the one spelling of it.

Torch-free, so the presenter process, the day file and the feature cache all use it.
"""
from __future__ import annotations

import hashlib

import numpy as np


def sha1_of(pixels: np.ndarray) -> str:
    """sha1 hex digest of one image's uint8 bytes (C order, H x W x 3)."""
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()
