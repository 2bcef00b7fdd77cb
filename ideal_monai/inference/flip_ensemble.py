"""Test-time flip ensembling as a MONAI ``Inferer`` (the inference config's ``test_time_flips`` key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer

#: The in-plane flips of a short-axis volume ``(B, C, H, W, Z)`` sliced along its last axis: up-down,
#: left-right and both (a 180-degree rotation). Training augments with the same flips (``slice_augmentation``).
IN_PLANE_FLIPS: tuple[tuple[int, ...], ...] = ((0,), (1,), (0, 1))


class FlipEnsembleInferer(Inferer):
    """Run another inferer on the input and on flipped copies of it; return the mean output.

    Every flipped copy's output is flipped back before averaging, so the result is on the input's
    grid: ``(B, C_in, *spatial) -> (B, C_out, *spatial)``, the wrapped inferer's shape. The bundle's
    networks return log-probabilities in eval mode, so the mean is the log of the (normalised by the
    post-processing softmax) geometric mean of the flipped predictions; an uncertainty map run
    through the same inferer is averaged over the flips too. Costs one pass per flip set plus one.

    Args:
        inferer: the wrapped inferer, e.g. ``SliceInferer(roi_size, sw_batch_size, spatial_dim=2)``.
        flip_axes: spatial axes (0 = the first axis after batch and channel, as MONAI's ``Flip``) to
            flip together, one sequence per extra pass; empty = no ensembling (one plain pass).
    """

    def __init__(self, inferer: Inferer, flip_axes: Sequence[Sequence[int]] = IN_PLANE_FLIPS) -> None:
        super().__init__()
        self.inferer = inferer
        self.flip_axes = [tuple(int(a) for a in axes) for axes in flip_axes]
        for axes in self.flip_axes:
            if not axes or len(set(axes)) != len(axes) or min(axes) < 0:
                raise ValueError(f"flip_axes must hold non-empty sets of distinct spatial axes >= 0, got {list(flip_axes)}")

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        for axes in self.flip_axes:  # before any pass: a bad axis must not cost a whole volume's inference
            if max(axes) >= inputs.ndim - 2:
                raise ValueError(f"flip axis {max(axes)} does not exist in a {inputs.ndim - 2}D input of shape {tuple(inputs.shape)}")
        total = self.inferer(inputs, network, *args, **kwargs)
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]
            out = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            # Out of place: the wrapped inferer's first output may be a view the caller still holds.
            total = total + torch.flip(out, dims)
        return total / (1 + len(self.flip_axes))
