"""Visual angle <-> screen pixels for a flat monitor viewed head-on (no PsychoPy needed)."""
from __future__ import annotations

import math


def deg_to_cm(size_deg: float, distance_cm: float) -> float:
    """Extent in cm on the screen of a centred stimulus spanning ``size_deg`` degrees.

    Exact for a flat screen: ``2 * d * tan(deg / 2)`` (8 deg at 57 cm -> 7.97 cm).
    """
    if not (size_deg >= 0 and distance_cm > 0):
        raise ValueError(f"size_deg={size_deg} must be >= 0 and distance_cm={distance_cm} > 0")
    return 2.0 * distance_cm * math.tan(math.radians(size_deg) / 2.0)


def deg_to_px(size_deg: float, width_cm: float, width_px: int, distance_cm: float) -> float:
    """Pixels spanned by a centred ``size_deg`` stimulus on a ``width_cm``/``width_px`` screen."""
    if not (width_cm > 0 and width_px >= 1):
        raise ValueError(f"monitor width_cm={width_cm} must be > 0 and width_px={width_px} >= 1")
    return deg_to_cm(size_deg, distance_cm) * width_px / width_cm


def px_per_deg(width_cm: float, width_px: int, distance_cm: float) -> float:
    """Pixels per degree at the screen centre (for logging and small objects)."""
    return deg_to_px(1.0, width_cm, width_px, distance_cm)
