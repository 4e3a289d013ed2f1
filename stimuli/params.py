"""The perturbation optimiser's settings (``[perturb]``), without torch: the config validates
with them and the engine (``stimuli.perturb``) runs with them."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "tf32", "bf16", "auto")
MEMORY_FORMATS = ("contiguous", "channels_last", "auto")
COMPILE_MODES = ("off", "on", "auto")


@dataclass
class PerturbParams:
    """Optimiser settings; ``rig.config.PerturbConfig`` (``[perturb]``) is this class with its own defaults."""

    restarts: int = 100
    steps: int = 40                       # passes per restart (both phases)
    first_phase_fraction: float = 0.5     # fraction of steps in the enlarged ball
    first_phase_radius_factor: float = 2.0
    step_decay: float = 0.9               # step *= decay after a pass without progress
    step_growth: float = 1.0              # step *= growth after a pass with progress (1 = paper)
    prune: bool = True
    prune_keep_fraction: float = 0.25     # fraction of the live restarts kept at each checkpoint
    prune_after_fraction: float = 0.25    # first checkpoint, as a fraction of steps
    prune_rounds: int = 1                 # checkpoints at 1x, 2x, ... prune_after_fraction of the steps
    early_stop: bool = True
    early_stop_patience: int = 5          # passes
    early_stop_tolerance: float = 1e-4    # relative improvement counted as progress
    random_controls_per_image: int = 1    # model-free controls per problem and epsilon
    max_batch_rows: int = 64              # rows per forward/backward batch; 0 = as large as fits (measured)
    precision: str = "fp32"               # the gradient passes: fp32, tf32 (CUDA), bf16 or auto (per device)
    memory_format: str = "contiguous"     # the whole step's layout: contiguous (NCHW), channels_last or auto
    compile: str = "off"                  # torch.compile the network: off, on or auto (where it pays)
    # issue 19: transfer-oriented design (stimuli.transfer); these values = off
    grad_smoothing_px: float = 0.0        # Gaussian sigma applied to the input gradient, pixels
    lowpass_fraction: float = 0.0         # keep the lowest fraction of DCT coefficients per side
    eot_samples: int = 1                  # gradient averaged over this many transformed inputs
    eot_shift_px: int = 0                 # largest circular shift of an EOT sample, pixels
    eot_scale: float = 0.0                # EOT rescaling within 1 +- this
    eot_noise: float = 0.0                # EOT Gaussian pixel noise std (pixels in [0,1])

    @classmethod
    def from_config_section(cls, section) -> "PerturbParams":
        """From ``cfg.perturb`` (a dataclass or mapping); unknown keys are ignored."""
        if dataclasses.is_dataclass(section) and not isinstance(section, type):
            data = dataclasses.asdict(section)
        else:
            data = dict(section)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def problems(self) -> list[tuple[str, object, str]]:
        """Every impossible field as (name, value, what is expected); [] if all are fine.
        ``rig.config``'s ``[perturb]`` section is validated with this too."""
        out = []
        for k in ("restarts", "steps", "early_stop_patience", "prune_rounds"):
            v = getattr(self, k)
            if int(v) != v or v < 1:
                out.append((k, v, "an integer >= 1"))
        if int(self.max_batch_rows) != self.max_batch_rows or self.max_batch_rows < 0:
            out.append(("max_batch_rows", self.max_batch_rows, "an integer >= 1, or 0 (as large as fits the device)"))
        for k, allowed in (("precision", PRECISIONS), ("memory_format", MEMORY_FORMATS), ("compile", COMPILE_MODES)):
            if getattr(self, k) not in allowed:
                out.append((k, getattr(self, k), "one of " + ", ".join(repr(a) for a in allowed)))
        if self.random_controls_per_image < 0:
            out.append(("random_controls_per_image", self.random_controls_per_image, "an integer >= 0"))
        for k in ("first_phase_fraction", "prune_after_fraction"):
            if not 0 <= getattr(self, k) < 1:
                out.append((k, getattr(self, k), "a fraction in [0, 1)"))
        if not 0 < self.prune_keep_fraction <= 1:
            out.append(("prune_keep_fraction", self.prune_keep_fraction, "a fraction in (0, 1]"))
        if not self.first_phase_radius_factor >= 1:
            out.append(("first_phase_radius_factor", self.first_phase_radius_factor, "a factor >= 1"))
        if not 0 < self.step_decay < 1:
            out.append(("step_decay", self.step_decay, "a factor in (0, 1)"))
        if not 1 <= self.step_growth <= 4:
            out.append(("step_growth", self.step_growth, "a factor in [1, 4] (1 = the paper's decay-only rule)"))
        if not self.early_stop_tolerance >= 0:
            out.append(("early_stop_tolerance", self.early_stop_tolerance, "a relative tolerance >= 0"))
        # sanity limits: beyond these a value is a typing slip (a machine that never finishes or runs out of memory)
        for k, high in (("restarts", 1_000_000), ("steps", 1_000_000), ("early_stop_patience", 1_000_000),
                        ("prune_rounds", 1000), ("random_controls_per_image", 1000), ("max_batch_rows", 10_000_000),
                        ("early_stop_tolerance", 1e6)):
            if getattr(self, k) > high:
                out.append((k, getattr(self, k), f"a value <= {high:g}"))
        return out + transfer_problems(self)

    @property
    def resolved(self) -> bool:
        """True when no setting is left to the device (no ``auto``, a batch size > 0)."""
        return (self.max_batch_rows > 0 and "auto" not in (self.precision, self.memory_format, self.compile))

    def validated(self) -> "PerturbParams":
        """Raise ValueError naming the first impossible field; return self."""
        for name, value, expected in self.problems():
            raise ValueError(f"PerturbParams.{name} = {value!r} is impossible; expected {expected}")
        return self

    # derived schedule (in passes)
    @property
    def first_phase_passes(self) -> int:
        if self.first_phase_radius_factor == 1:
            return 0
        return min(int(round(self.first_phase_fraction * self.steps)), self.steps - 1)

    @property
    def prune_checkpoints(self) -> tuple[int, ...]:
        """Pass counts after which a problem's live restarts are pruned; () = no pruning."""
        if not self.prune or self.kept_of(self.restarts) >= self.restarts:
            return ()
        at = {int(round(j * self.prune_after_fraction * self.steps)) for j in range(1, self.prune_rounds + 1)}
        return tuple(sorted(c for c in at if 0 < c < self.steps))

    def kept_of(self, live: int) -> int:
        """Restarts kept at a checkpoint out of ``live`` (at least 1)."""
        return max(1, math.ceil(self.prune_keep_fraction * live - 1e-9))


# ----------------------------------------------------------------------------- issue 19: transfer options
TRANSFER_KEYS = ("grad_smoothing_px", "lowpass_fraction", "eot_samples", "eot_shift_px", "eot_scale", "eot_noise")
TRANSFER_OFF: dict[str, Any] = {"grad_smoothing_px": 0.0, "lowpass_fraction": 0.0, "eot_samples": 1, "eot_shift_px": 0,
                "eot_scale": 0.0, "eot_noise": 0.0}


def transfer_problems(p) -> list[tuple[str, object, str]]:
    """Impossible transfer settings of ``p`` (anything with the :data:`TRANSFER_KEYS`) as (name, value, expected)."""
    out = []
    if not p.grad_smoothing_px >= 0:
        out.append(("grad_smoothing_px", p.grad_smoothing_px, "a Gaussian sigma in pixels >= 0 (0 = off)"))
    if not 0 <= p.lowpass_fraction <= 1:
        out.append(("lowpass_fraction", p.lowpass_fraction, "a fraction of the DCT coefficients per side in [0, 1] (0 = off)"))
    if int(p.eot_samples) != p.eot_samples or p.eot_samples < 1:
        out.append(("eot_samples", p.eot_samples, "an integer >= 1 (1 = off)"))
    if int(p.eot_shift_px) != p.eot_shift_px or p.eot_shift_px < 0:
        out.append(("eot_shift_px", p.eot_shift_px, "an integer >= 0 (pixels)"))
    if not 0 <= p.eot_scale < 0.5:
        out.append(("eot_scale", p.eot_scale, "a relative scale range in [0, 0.5)"))
    if not p.eot_noise >= 0:
        out.append(("eot_noise", p.eot_noise, "a pixel noise std >= 0 (pixels in [0,1])"))
    return out
