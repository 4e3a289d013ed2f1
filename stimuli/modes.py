"""How the engine runs on a device: precision, memory layout, compilation and batch size.

``[perturb]`` ``precision`` (fp32, tf32, bf16), ``memory_format`` (contiguous, channels_last)
and ``compile`` (off, on) may each be ``auto``, and ``max_batch_rows`` may be 0 ("as large as
fits"); :func:`resolve_mode` and :func:`fitting_batch_rows` turn them into concrete choices
for one device, so a plan records what actually ran.

``auto`` per device:

- CUDA: bf16 + channels_last + compile (the combination that reached 10.8k rows/s, the ceiling,
  for ResNet50 at 224 px on an H200; DESIGN section 7), compile only where the run is long enough
  to repay the compilation (:data:`COMPILE_PAYS_AFTER_S`, when the run's length is known);
- CPU: bf16 + channels_last where the CPU has native bf16 (AVX-512 bf16 / AMX), fp32 +
  contiguous elsewhere. Measured on the 2-core development VM (AVX-512 + AMX, torch 2.14.1):
  bare forward+input-backward 2.2-3.2x the fp32 rate (tiny 64 px: 916 -> 2,891 rows/s;
  ResNet50 64 px: 31.6 -> 76.5), the engine 1.7-3.0x at the demo's size
  (``benchmarks/perturb_bench.py --parts m``). No compile on CPU: compiled, the engine ran
  0.85-1.18x (fp32) and 0.55-0.90x (bf16 + channels_last) of the uncompiled rate there, after
  41-107 s of compilation (same benchmark, alternating runs, two runs on a loaded machine).

One policy for the whole step (:class:`EngineMode`): the network runs in the mode's precision and
layout (a prepared copy of the user's module: weights converted once, not per step), the
engine's per-row state (iterates, gradients, box bounds) lives in the same layout in float32,
and the projection works in that layout's memory order, so no tensor changes layout inside a
step. fp32 + contiguous + no compile uses the user's module itself, unchanged (bit-identical
to the engine before modes existed).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from stimuli.params import PerturbParams

log = logging.getLogger(__name__)

# CUDA: compile where the uncompiled run would take at least this long (s): a ResNet50 compile
# takes on the order of a minute or two, so compilation then costs at most ~1/5 of the run
COMPILE_PAYS_AFTER_S = 600.0
# max_batch_rows = 0: the share of free memory a batch may use, and the largest batch chosen
BATCH_MEMORY_FRACTION = {"cuda": 0.7, "cpu": 0.25}
BATCH_ROWS_CAP = {"cuda": 4096, "cpu": 256}   # CPU rows/s is flat beyond a few dozen rows
# engine state per row besides the network (float32 images): delta, anchor, gradient, clean,
# lower, upper for a full batch plus as many parked rows (stimuli.cost.engine_state_bytes)
STATE_IMAGES_PER_ROW = 12


@dataclass(frozen=True)
class EngineMode:
    """A resolved engine mode: ``precision`` fp32 | tf32 | bf16, ``memory_format``
    contiguous | channels_last, ``compile`` on or off."""

    precision: str = "fp32"
    memory_format: str = "contiguous"
    compile: bool = False

    @classmethod
    def of(cls, params: PerturbParams) -> EngineMode:
        """The mode of resolved ``params`` (no ``auto`` left; see :func:`resolve_mode`)."""
        if "auto" in (params.precision, params.memory_format, params.compile):
            raise ValueError("PerturbParams still has an 'auto' setting; resolve it for a device first "
                             "(stimuli.modes.resolve_mode)")
        return cls(params.precision, params.memory_format, params.compile == "on")

    @property
    def plain(self) -> bool:
        """fp32, contiguous, not compiled: the user's module runs as it is."""
        return self == EngineMode()

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    @property
    def torch_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        return f"{self.precision}, {self.memory_format}, compile {'on' if self.compile else 'off'}"


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 bf16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_mode(params: PerturbParams, device: str | torch.device,
                 uncompiled_seconds: float | None = None) -> PerturbParams:
    """``params`` with precision, memory_format and compile chosen for ``device`` where ``auto``.

    ``uncompiled_seconds``: the run's expected time without compilation, if known; ``compile =
    "auto"`` compiles on CUDA unless it is known to be below :data:`COMPILE_PAYS_AFTER_S`, never
    on CPU (measured no faster there).
    """
    cuda = torch.device(device).type == "cuda"
    fast_cpu = not cuda and cpu_has_bf16()
    prec = params.precision if params.precision != "auto" else ("bf16" if cuda or fast_cpu else "fp32")
    fmt = params.memory_format
    if fmt == "auto":
        fmt = "channels_last" if cuda or fast_cpu else "contiguous"
    comp = params.compile
    if comp == "auto":
        short = uncompiled_seconds is not None and uncompiled_seconds < COMPILE_PAYS_AFTER_S
        comp = "on" if cuda and not short else "off"
    return dataclasses.replace(params, precision=prec, memory_format=fmt, compile=comp)


# ----------------------------------------------------------------------------- the network of a mode
Network = Callable[..., torch.Tensor]   # images (B, 3, H, W) -> features or predictions
_PREPARED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[EngineMode, str], Network]] = weakref.WeakKeyDictionary()


def engine_network(module: Network, mode: EngineMode, device: torch.device) -> Network:
    """The network the gradient passes run: ``module`` itself in the plain mode, otherwise a
    copy in eval mode without parameter gradients, on ``device``, with its weights in the mode's
    layout (converted once here, not inside every convolution of every step), compiled if asked
    (``dynamic=False``: the objective pads every batch to one size). Prepared once per process
    for each (module, mode, device). bf16 runs it under autocast (:func:`precision_context`):
    weights stay float32, so any module works (also ones holding plain float32 tensors)."""
    if mode.plain or not isinstance(module, nn.Module):
        return module
    cache = _PREPARED.setdefault(module, {})
    key = (mode, str(device))
    if key not in cache:
        net = copy.deepcopy(module).eval().to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        if mode.channels_last:
            net = net.to(memory_format=torch.channels_last)
        cache[key] = torch.compile(net, dynamic=False) if mode.compile else net
    return cache[key]


@contextlib.contextmanager
def precision_context(mode: EngineMode, device: torch.device, forward: bool = True):
    """The forward and input-backward's precision: bf16 = bfloat16 autocast (matmuls and
    convolutions in bf16, reductions and the engine's state in float32). On CUDA, TF32 tensor
    cores are allowed for fp32 convolutions and matmuls only in ``tf32`` (fp32 means IEEE fp32
    there; cuDNN's own default would be TF32). On CPU fp32 and tf32 are the same. ``forward``
    False: for the backward (no autocast; the forward's dtypes carry over)."""
    if mode.precision == "bf16" and forward:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    allow = mode.precision == "tf32"
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ----------------------------------------------------------------------------- batch size from memory
_FITTED_BATCH: dict[tuple, int] = {}


def _saved_bytes(objective, x: torch.Tensor, site: torch.Tensor, sign: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward+input-backward
    (the activations: a pass's memory peak on CPU), counted once per storage."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        objective.value_and_grad(x, site, sign)
    return sum(seen.values())


def fitting_batch_rows(objective, clean: torch.Tensor, probe_rows: int = 8) -> int:
    """The largest batch (rows) whose forward+input-backward fits in memory with a margin.

    Measured once per process per (model, mode, device, image shape): one pass of
    ``probe_rows`` rows gives the peak bytes per row (CUDA: ``max_memory_allocated``; CPU:
    the activations autograd saves, x 1.5 for the backward's transients); the batch uses
    :data:`BATCH_MEMORY_FRACTION` of the memory free now (CUDA: ``mem_get_info``; CPU:
    psutil's available memory), with the engine's per-row state added, capped at
    :data:`BATCH_ROWS_CAP`. ``objective``: an uncompiled :class:`stimuli.objective.SiteObjective`
    in the mode to size; ``clean``: (N, 3, H, W) images.
    """
    dev = objective.device
    kind = "cuda" if dev.type == "cuda" else "cpu"
    key = (id(objective.model), objective.mode, str(dev), tuple(clean.shape[1:]))
    if key in _FITTED_BATCH:
        return _FITTED_BATCH[key]
    b = probe_rows
    x = clean[torch.arange(b, device=clean.device) % len(clean)]
    site = torch.zeros(b, dtype=torch.long, device=dev)
    sign = torch.ones(b, device=dev)
    px_bytes = 4 * int(clean[0].numel())
    if kind == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        objective.value_and_grad(x, site, sign)
        torch.cuda.synchronize(dev)
        per_row = (torch.cuda.max_memory_allocated(dev) - base) / b
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        import psutil

        per_row = 1.5 * _saved_bytes(objective, x, site, sign) / b
        free = psutil.virtual_memory().available
    budget = BATCH_MEMORY_FRACTION[kind] * free
    rows = int(budget // (per_row + STATE_IMAGES_PER_ROW * px_bytes))
    rows = max(1, min(rows, BATCH_ROWS_CAP[kind]))
    log.info("max_batch_rows = 0: %d rows fit (%.1f MiB per row measured, %.2f GiB free on %s)",
             rows, per_row / 2**20, free / 2**30, dev)
    _FITTED_BATCH[key] = rows
    return rows
