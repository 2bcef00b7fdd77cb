"""Feature perturbations that make the two decoder streams see different inputs (docs/METHOD.md §2).

[paper: "two perturbed branches with the same input"]; the operators follow Ouali et al.,
"Semi-Supervised Semantic Segmentation with Cross-Consistency Training" (CCT, CVPR 2020).
Both are the identity in eval mode, so inference is deterministic. Random numbers come from
torch's generator (not numpy's, as in CCT), so ``monai.utils.set_determinism`` makes them repeatable.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn as nn

__all__ = ["FeatureNoise", "FeatureDropout", "build_perturbation", "PERTURBATIONS"]


class FeatureNoise(nn.Module):
    """Multiplicative uniform noise: ``x * (1 + n)``, ``n ~ U(-r, r)`` element-wise (training only).

    CCT draws one noise tensor of shape ``x.shape[1:]`` and shares it over the batch. Here the
    default draws it per sample (shape ``x.shape``) so every slice in the batch gets its own
    perturbation; ``per_sample=False`` restores CCT's shared draw.

    bfloat16 features on the CPU (``precision`` bf16 autocast) get ``n`` on a grid of 256 equally
    spaced values in ``[-r, r]``, eight per 64-bit random word, instead of one ``uniform_`` draw per
    element: the factor ``1 + n`` is rounded to bfloat16's 8-bit significand anyway (steps of
    0.004-0.008 near 1, coarser than the grid's 2r/255 = 0.0024), and the CPU ``uniform_`` kernel
    is a visible part of the CPU profile's bf16 training step (docs/history/BENCHMARKS.md, "Precision").
    Other dtypes and devices, and TorchScript (no ``Tensor.view(dtype)`` there), use ``uniform_``.

    Args:
        uniform_range: ``r``; the default 0.3 is docs/METHOD.md §2's +-0.3.
        per_sample: independent noise per batch element (default) or one draw shared by the batch.

    Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, uniform_range: float = 0.3, per_sample: bool = True):
        super().__init__()
        if not 0.0 <= uniform_range:
            raise ValueError(f"uniform_range must be >= 0, got {uniform_range}.")
        self.uniform_range = float(uniform_range)
        self.per_sample = per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.uniform_range == 0.0:
            return x
        shape: List[int] = list(x.shape)
        if not self.per_sample:
            shape[0] = 1
        # Not in place: x is also the skip feature the other stream receives.
        return x * self._factor(shape, x)

    def _factor(self, shape: List[int], x: torch.Tensor) -> torch.Tensor:
        """``1 + n`` of ``shape``, in ``x``'s dtype and device."""
        r = self.uniform_range
        # TorchScript has no Tensor.view(dtype); a scripted module (export, eval) draws with uniform_.
        if not torch.jit.is_scripting() and x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return self._bf16_grid_factor(shape)
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).uniform_(-r, r)
        return noise.add_(1.0)

    @torch.jit.unused
    def _bf16_grid_factor(self, shape: List[int]) -> torch.Tensor:
        """``1 + n`` with ``n`` on 256 equally spaced values in ``[-r, r]``, bfloat16, eight per random word."""
        r = self.uniform_range
        count = math.prod(shape)
        # The full signed range: random_() alone leaves the top bit of each word 0.
        words = torch.empty((count + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        grid = words.view(torch.uint8)[:count].to(torch.bfloat16).view(shape)  # 0..255, exact in bfloat16
        return grid.mul_(2.0 * r / 255.0).add_(1.0 - r)

    def extra_repr(self) -> str:
        return f"uniform_range={self.uniform_range}, per_sample={self.per_sample}"


class FeatureDropout(nn.Module):
    """Drop the most-attended region of each sample's feature map (CCT's ``FeatureDropDecoder``).

    Attention is the channel mean ``a = mean_c x`` of shape ``(B, 1, *spatial)``; per sample a
    threshold ``t = max(a) * u`` with ``u ~ U(low, high)`` is drawn, and every location with
    ``a >= t`` is zeroed in all channels, i.e. the decoder must segment without the most salient
    features. CCT draws one ``u`` for the whole batch; here each sample gets its own.

    Args:
        threshold_range: ``(low, high)`` of ``u``; CCT's (0.7, 0.9) by default.

    Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, threshold_range: tuple[float, float] = (0.7, 0.9)):
        super().__init__()
        low, high = (float(v) for v in threshold_range)
        if not 0.0 <= low <= high:
            raise ValueError(f"threshold_range must satisfy 0 <= low <= high, got {threshold_range}.")
        self.low = low
        self.high = high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        attention = x.mean(dim=1, keepdim=True)  # (B, 1, *spatial)
        max_att = attention.flatten(1).max(dim=1).values  # (B,)
        u = torch.empty_like(max_att).uniform_(self.low, self.high)
        view = [x.shape[0]] + [1] * (x.dim() - 1)
        threshold = (max_att * u).view(view)
        keep = (attention < threshold).to(x.dtype)  # (B, 1, *spatial), broadcast over channels
        return x * keep

    def extra_repr(self) -> str:
        return f"threshold_range=({self.low}, {self.high})"


#: Names accepted by :func:`build_perturbation` (and ``DualDecoderUNet(perturbations=...)``).
PERTURBATIONS = ("noise", "dropout", "none")


def build_perturbation(name: str | nn.Module | None) -> nn.Module:
    """Return the perturbation module for ``name``: ``"noise"`` -> :class:`FeatureNoise`,
    ``"dropout"`` -> :class:`FeatureDropout`, ``"none"``/``None`` -> ``nn.Identity``; a module is
    returned unchanged (for custom settings such as ``FeatureNoise(0.2)``)."""
    if isinstance(name, nn.Module):
        return name
    if name is None or name == "none":
        return nn.Identity()
    if name == "noise":
        return FeatureNoise()
    if name == "dropout":
        return FeatureDropout()
    raise ValueError(f"unknown perturbation {name!r}; expected one of {PERTURBATIONS} or an nn.Module.")
