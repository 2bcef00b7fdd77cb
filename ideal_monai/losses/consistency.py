"""Bidirectional consistency regularisation (IDEAL fine-tuning, docs/METHOD.md §4; sources in bundle/docs/README.md).

Two decoder streams predict the same slice; each is trained toward the other's hard pseudo-label:

    L_bcr = CE(p1, y2) + CE(p2, y1),   y_s = argmax p_s  (stop-gradient)

so each stream only receives gradient through its own prediction, never through the label it
hands to the other stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["BidirectionalConsistencyLoss"]


class BidirectionalConsistencyLoss(_Loss):
    """Cross pseudo-label cross-entropy between two segmentation streams.

    Args:
        confidence_threshold: optional eta in [0, 1]. When set, location x contributes to
            ``CE(p1, y2)`` only where ``max_c p2(x) > eta`` (the stream that gives the label is
            confident), and symmetrically for ``CE(p2, y1)``. ``None`` uses every location.
        reduction: ``"mean"``: each of the two terms is averaged over its own contributing
            locations (a term with none contributes 0), then the two are added; ``"sum"``: sum over
            contributing locations of both terms; ``"none"``: ``(B, *spatial)`` per-location
            ``CE(p1, y2) * m1 + CE(p2, y1) * m2``.
    """

    def __init__(self, confidence_threshold: float | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1] or None, got {confidence_threshold}")
        self.confidence_threshold = confidence_threshold

    def forward(self, logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits1: ``(B, C, *spatial)`` raw (pre-softmax) output of stream 1, e.g. ``(B, 4, H, W)``.
            logits2: same shape, stream 2.

        Returns:
            scalar for ``"mean"`` / ``"sum"``, ``(B, *spatial)`` for ``"none"``; attached to the graph
            even when no location passes the confidence mask.
        """
        if logits1.shape != logits2.shape:
            raise ValueError(f"logits1 and logits2 must have the same shape, got {tuple(logits1.shape)} and "
                             f"{tuple(logits2.shape)}")
        if logits1.ndim < 2:
            raise ValueError(f"expected (B, C, *spatial) logits, got shape {tuple(logits1.shape)}")

        # pseudo-labels are constants: no gradient may flow into the stream that produced them
        with torch.no_grad():
            y1, mask_from_1 = self._pseudo_label(logits1.detach())
            y2, mask_from_2 = self._pseudo_label(logits2.detach())

        ce1 = F.cross_entropy(logits1, y2, reduction="none")  # (B, *spatial): stream 1 toward y2
        ce2 = F.cross_entropy(logits2, y1, reduction="none")  # stream 2 toward y1
        if mask_from_2 is not None:
            # where(), not multiply: keeps an inf/nan CE at a masked-out location from poisoning the sum
            ce1 = torch.where(mask_from_2, ce1, torch.zeros_like(ce1))
            ce2 = torch.where(mask_from_1, ce2, torch.zeros_like(ce2))

        if self.reduction == "none":
            return ce1 + ce2
        if self.reduction == "sum":
            return ce1.sum() + ce2.sum()
        if mask_from_2 is None:
            return ce1.mean() + ce2.mean()
        # clamp(1): an empty term is 0 (with grad through the zeroed CE) instead of 0/0
        n1 = mask_from_2.sum().clamp_min(1).to(ce1.dtype)
        n2 = mask_from_1.sum().clamp_min(1).to(ce2.dtype)
        return ce1.sum() / n1 + ce2.sum() / n2

    def _pseudo_label(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hard label ``(B, *spatial)`` long and, with a threshold, the bool confidence mask."""
        if self.confidence_threshold is None:
            # max(dim).indices == argmax(dim) (both take the first maximum), but on NCHW CPU tensors
            # it is much faster than argmax, which reduces over the strided class dim
            # (docs/history/BENCHMARKS.md, "Step and inference speed").
            return logits.max(dim=1).indices, None
        confidence, label = torch.softmax(logits.float(), dim=1).max(dim=1)
        return label, confidence > self.confidence_threshold
