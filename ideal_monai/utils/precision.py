"""Numeric precision of training and inference: the ``precision`` config key.

``fp32``  everything in float32.
``bf16``  bfloat16 autocast (``torch.autocast(device, dtype=torch.bfloat16)``): convolutions and
          matrix products run in bfloat16; losses, softmax outputs and BatchNorm running statistics
          stay float32. No loss scaling is needed (bfloat16 has float32's exponent range).
``fp16``  float16 autocast with a ``GradScaler`` (CUDA only; the trainers use ``engine.scaler``
          as MONAI's ``SupervisedTrainer`` does).
``auto``  ``fp16`` on CUDA; ``bf16`` on a CPU with native bfloat16 units (AVX512-BF16 or AMX),
          where oneDNN runs bfloat16 convolutions in hardware; ``fp32`` otherwise (emulated
          bfloat16 is slower than float32). The measured speed and quality of each choice are in
          ``docs/history/BENCHMARKS.md`` ("Precision").
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import torch
from monai.inferers import Inferer

from ..errors import IdealInputError

__all__ = ["PRECISIONS", "AutocastInferer", "autocast", "cpu_has_native_bf16", "resolve_precision"]

logger = logging.getLogger(__name__)

#: Accepted values of the ``precision`` key.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bfloat16 dot products in hardware (AVX512-BF16 or AMX tiles).

    Asked from PyTorch's own CPU feature detection (``torch.cpu``), falling back to the kernel's
    ``/proc/cpuinfo`` flags on builds without it.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        return any(bool(p()) for p in probes)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _device_type(device: str | torch.device | None) -> str:
    return torch.device(device).type if device is not None else "cpu"


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """The concrete precision (``fp32``, ``bf16`` or ``fp16``) for ``precision`` on ``device``.

    Raises :class:`~ideal_monai.errors.IdealInputError` naming ``precision`` for an unknown value,
    and for ``fp16`` off CUDA (CPU float16 autocast has no speed benefit and no loss scaler here).
    """
    if precision not in PRECISIONS:
        raise IdealInputError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
    device_type = _device_type(device)
    if precision == "auto":
        if device_type == "cuda":
            return "fp16"
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise IdealInputError("precision", f"'fp16' needs a CUDA device (got {device_type}); use 'bf16' or 'fp32'")
    return precision


def autocast(precision: str, device: str | torch.device | None = None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the resolved ``precision`` on ``device`` (a no-op context for ``fp32``)."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device_type(device), dtype=_DTYPES[resolved])


class AutocastInferer(Inferer):
    """Run another MONAI inferer under :func:`autocast`; the result is float32.

    MONAI's evaluators only autocast on CUDA (``amp=True``), so the bundle wraps its
    ``SliceInferer`` in this instead: the same config key then covers CPU bfloat16 and CUDA
    float16 inference and validation. The networks return float32 log-probabilities in eval mode
    (their last cast is outside autocast's reach), so sliding-window buffers, softmax and argmax
    stay float32.

    Args:
        inferer: the wrapped inferer, e.g. ``SliceInferer(roi_size, sw_batch_size, spatial_dim=2)``.
        precision: one of :data:`PRECISIONS`.
        device: the device the network runs on (decides what ``auto`` means).
    """

    def __init__(self, inferer: Inferer, precision: str = "fp32", device: str | torch.device | None = None) -> None:
        super().__init__()
        self.inferer = inferer
        self.device = device
        self.precision = resolve_precision(precision, device)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with autocast(self.precision, self.device):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out
