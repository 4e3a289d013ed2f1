"""The window and everything drawn on it: images, grey mask, fixation point, photodiode patch.

Made once per presenter process (PsychoPy's callOnFlip demo: window and stimuli first,
then a flat loop of frames). Units are pixels; sizes come from degrees via ``geometry``
and the monitor description. The background is mid grey (RGB 128): the mask is that grey
screen with the fixation point; images are drawn without the point, so the screen shows
exactly the stored uint8 pixels (scaled to the configured size in degrees).

The photodiode patch is a square in the bottom-left corner: white while an image is up,
black otherwise, so its rising edge is the stimulus onset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rig.presenter.geometry import deg_to_px

FIXATION_DOT_DEG = 0.2        # diameter of the fixation point, degrees
SCALINGS = ("smooth", "integer")   # bilinear to the size in degrees | nearest neighbour by a whole factor


def integer_factor(target_px: float, width_px: int) -> int:
    """The whole-number scale factor nearest ``target_px / width_px`` (at least 1)."""
    return max(1, int(round(target_px / max(1, width_px))))


def load_gamma(name: str) -> dict:
    """A PsychoPy Monitor Center monitor by name: its gamma (per gun) for the window's lookup table."""
    from psychopy import monitors

    if name not in monitors.getAllMonitors():
        raise ValueError(f"display.gamma_monitor = {name!r} is not a PsychoPy Monitor Center monitor; known: "
                         f"{', '.join(monitors.getAllMonitors()) or 'none'} (calibrate it in Monitor Center first)")
    mon = monitors.Monitor(name)
    grid = mon.getGammaGrid()
    if grid is None or np.asarray(grid).shape[0] < 4:
        raise ValueError(f"Monitor Center monitor {name!r} has no gamma calibration; run its gamma calibration")
    grid = np.asarray(grid, float)
    return {"name": name, "monitor": mon, "gamma_rgb": [float(g) for g in grid[1:4, 2]],
            "gamma_grid": grid.tolist(), "applied": False}
PHOTODIODE_PX = 48            # side of the photodiode patch, pixels


@dataclass(frozen=True)
class Monitor:
    """The physical screen: width in cm and pixels, viewing distance in cm."""

    width_cm: float
    distance_cm: float
    width_px: int
    height_px: int

    def px(self, size_deg: float) -> float:
        """Pixels spanned by a centred stimulus of ``size_deg`` degrees."""
        return deg_to_px(size_deg, self.width_cm, self.width_px, self.distance_cm)


class Stage:
    """A PsychoPy window plus the session's preloaded image textures."""

    def __init__(self, monitor: Monitor, *, window_px: tuple[int, int] | None = None,
                 fullscreen: bool = False, photodiode: bool = True, screen: int = 0,
                 scaling: str = "smooth", gamma_monitor: str = ""):
        from psychopy import logging, visual

        logging.console.setLevel(logging.ERROR)
        if scaling not in SCALINGS:
            raise ValueError(f"image scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")
        self.monitor = monitor
        self.scaling = scaling
        self.gamma = load_gamma(gamma_monitor) if gamma_monitor else None
        size = tuple(window_px) if window_px else (monitor.width_px, monitor.height_px)
        # the gamma goes into the display's lookup table after the window exists (``win.gamma``), so a
        # display without one (Xvfb has no XF86VidMode) is reported instead of ending the presenter
        self.win = visual.Window(size=size, fullscr=fullscreen, screen=screen, winType="pyglet",
                                 units="pix", color=(0, 0, 0), colorSpace="rgb", allowGUI=not fullscreen,
                                 waitBlanking=True, checkTiming=False)
        if self.gamma:
            self.gamma["applied"] = self._apply_gamma(self.gamma["gamma_rgb"])
        self.win.mouseVisible = not fullscreen
        self.size_px = tuple(int(s) for s in self.win.size)
        self._visual = visual
        dot = max(2.0, monitor.px(FIXATION_DOT_DEG))
        self.fixation = visual.Circle(self.win, radius=dot / 2, edges=32, units="pix",
                                      fillColor=(1, 1, 1), lineColor=None)
        self.photodiode = photodiode
        w, h = self.size_px
        corner = (-w / 2 + PHOTODIODE_PX / 2, -h / 2 + PHOTODIODE_PX / 2)
        self.patch_on = visual.Rect(self.win, width=PHOTODIODE_PX, height=PHOTODIODE_PX, pos=corner,
                                    units="pix", fillColor=(1, 1, 1), lineColor=None)
        self.patch_off = visual.Rect(self.win, width=PHOTODIODE_PX, height=PHOTODIODE_PX, pos=corner,
                                     units="pix", fillColor=(-1, -1, -1), lineColor=None)
        self.images: list = []
        self.current: tuple[str, int] = ("blank", -1)
        self.image_size_px = monitor.px(8.0)

    # ------------------------------------------------------------------ setup
    def set_image_size(self, size_deg: float) -> float:
        """Draw images ``size_deg`` wide (height keeps the aspect ratio); returns pixels."""
        self.image_size_px = self.monitor.px(size_deg)
        for stim in self.images:
            stim.size = self._size_for(stim)
        return self.image_size_px

    def set_scaling(self, scaling: str) -> None:
        """"smooth" or "integer"; applies to the preloaded textures too."""
        if scaling not in SCALINGS:
            raise ValueError(f"image scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")
        self.scaling = scaling
        for stim in self.images:
            stim.interpolate = scaling == "smooth"
            stim.size = self._size_for(stim)

    def _size_for(self, stim) -> tuple[float, float]:
        w, h = stim._itloop_shape
        if self.scaling == "integer":
            k = integer_factor(self.image_size_px, w)
            return (float(k * w), float(k * h))
        return (self.image_size_px, self.image_size_px * h / w)

    def shown_size_px(self, width_px: int) -> float:
        """Width on screen of an image ``width_px`` wide under this stage's scaling."""
        return float(integer_factor(self.image_size_px, width_px) * width_px) if self.scaling == "integer" \
            else self.image_size_px

    def _apply_gamma(self, gamma_rgb: list[float]) -> bool:
        """Load a gamma per gun into the display's lookup table; False where the display refuses (Xvfb)."""
        try:
            self.win.gamma = gamma_rgb
            return True
        except Exception:  # a display without a gamma ramp: report, keep going
            return False

    def preload(self, pixels: np.ndarray | Sequence[np.ndarray], on_image: Callable[[int], None] | None = None) -> None:
        """Make one texture per image (uint8 (n, H, W, 3), or a sequence of (H, W, 3) of several sizes);
        ``on_image(i)`` is called after image ``i``."""
        from PIL import Image

        self.images = []
        for i, px in enumerate(pixels):
            stim = self._visual.ImageStim(self.win, image=Image.fromarray(np.ascontiguousarray(px)),
                                          units="pix", interpolate=self.scaling == "smooth")
            stim._itloop_shape = (px.shape[1], px.shape[0])
            stim.size = self._size_for(stim)
            self.images.append(stim)
            if on_image is not None:
                on_image(i)

    # ------------------------------------------------------------------ drawing
    def draw(self, kind: str, image: int = -1) -> None:
        """Draw one frame into the back buffer. ``kind``: fix_on, stim_on, mask_on, blank, abort_blank.

        Every draw is followed by a flip, so the last drawn frame is what the screen shows.
        """
        self.current = (kind, image)
        if kind == "stim_on":
            self.images[image].draw()
        elif kind in ("fix_on", "mask_on"):
            self.fixation.draw()
        if self.photodiode:
            (self.patch_on if kind == "stim_on" else self.patch_off).draw()

    def draw_target(self, x_px: float, y_px: float) -> None:
        """One calibration target at (x, y) pixels from the centre (y up), on the grey screen."""
        self.current = ("blank", -1)
        self.fixation.pos = (x_px, y_px)
        self.fixation.draw()
        self.fixation.pos = (0, 0)
        if self.photodiode:
            self.patch_off.draw()

    def capture(self, buffer: str = "back") -> np.ndarray:
        """The window as uint8 (H, W, 3), top row first ('back': what the next flip shows)."""
        return np.asarray(self.win._getFrame(buffer=buffer), dtype=np.uint8)

    def capture_screen(self) -> np.ndarray:
        """What the screen shows now, uint8 (H, W, 3): the current frame redrawn off screen
        (reading the front buffer is unreliable on many drivers, Xvfb included)."""
        self.win.clearBuffer()
        self.draw(*self.current)
        out = self.capture("back")
        self.win.clearBuffer()
        return out

    def measure_refresh_hz(self) -> float | None:
        """PsychoPy's measurement of the refresh rate (None if unstable)."""
        return self.win.getActualFrameRate(nIdentical=20, nMaxFrames=240, nWarmUpFrames=20, threshold=1)

    def show_blank(self) -> None:
        self.draw("blank")
        self.win.flip()

    def close(self) -> None:
        try:
            self.win.close()
        except Exception:  # closing a dead window must not hide the real error
            pass
