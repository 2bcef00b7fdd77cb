"""Supervision of copy-paste mixed slices: ground truth and pseudo-labels, each region weighted on its own.

A mixed slice (:class:`~ideal_monai.transforms.BidirectionalCopyPaste`) carries ground truth where its
pixels came from a labeled image and a teacher's pseudo-label elsewhere. As in BCP (Bai et al., CVPR
2023), each region gets its own Dice + cross-entropy, and the pseudo-labeled region a smaller weight::

    L = w_l * (Dice + CE)[from_labeled] + w_u * (Dice + CE)[~from_labeled & valid]

Dice is pooled over the batch (a box of one class in one slice would otherwise dominate) and computed on
one-hot targets masked after encoding (MONAI's ``MaskedDiceLoss`` masks the class indices, which turns the
pixels outside the region into background); CE is averaged over the region's pixels. With the region
everywhere it equals ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["MixedSupervisionLoss"]


class MixedSupervisionLoss(_Loss):
    """Region-weighted Dice + CE of logits against a mixed target.

    Args:
        labeled_weight: ``w_l``, the weight of the ground-truth region (BCP: 1.0).
        pseudo_weight: ``w_u``, the default weight of the pseudo-labeled region (BCP: 0.5); ``forward``
            may override it per call (a ramp-up).
    """

    def __init__(self, labeled_weight: float = 1.0, pseudo_weight: float = 0.5) -> None:
        super().__init__()
        for name, value in (("labeled_weight", labeled_weight), ("pseudo_weight", pseudo_weight)):
            if isinstance(value, bool) or float(value) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.labeled_weight = float(labeled_weight)
        self.pseudo_weight = float(pseudo_weight)
        self.smooth = 1e-5  # MONAI DiceLoss's smooth_nr / smooth_dr

    def region_loss(self, logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Dice + CE of ``logits (B, C, H, W)`` against ``target (B, 1, H, W)`` over ``region (B, 1, H, W)``
        (bool); 0, still attached to the graph, when the region is empty.

        Dice is pooled over the batch and averaged over all ``C`` channels (background included, as
        MONAI's ``DiceCELoss`` does); the target is one-hot encoded *before* masking, so a pixel outside
        the region counts for no class at all (masking class indices first would make it background).
        """
        num_classes = logits.shape[1]
        weight = region.to(logits.dtype)  # (B, 1, H, W)
        ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")  # (B, H, W)
        ce = torch.where(region[:, 0], ce, torch.zeros_like(ce)).sum() / weight.sum().clamp_min(1.0)
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target[:, 0].long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)
        intersection = (probs * onehot * weight).sum(dims)
        denominator = ((probs + onehot) * weight).sum(dims)
        dice = 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)  # (C,); 0 for an empty region
        return ce + dice.mean()

    def terms(self, logits: torch.Tensor, target: torch.Tensor, from_labeled: torch.Tensor,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted ``(ground-truth term, pseudo-label term)``; arguments as for :meth:`forward`."""
        if logits.ndim != 4 or target.shape != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(f"expected logits (B, C, H, W) and target (B, 1, H, W), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        if from_labeled.shape != target.shape or (valid is not None and valid.shape != target.shape):
            raise ValueError(f"from_labeled and valid must have the target's shape {tuple(target.shape)}")
        pseudo_region = ~from_labeled if valid is None else (~from_labeled & valid)
        return self.region_loss(logits, target, from_labeled), self.region_loss(logits, target, pseudo_region)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_labeled: torch.Tensor,
                valid: torch.Tensor | None = None, pseudo_weight: float | None = None) -> torch.Tensor:
        """
        Args:
            logits: ``(B, C, H, W)`` raw network output.
            target: ``(B, 1, H, W)`` class indices (ground truth and pseudo-labels, mixed).
            from_labeled: ``(B, 1, H, W)`` bool, where ``target`` is ground truth.
            valid: optional ``(B, 1, H, W)`` bool, where a pseudo-label may be used (confidence).
            pseudo_weight: ``w_u`` for this call (default: the constructor's).

        Returns:
            the scalar loss.
        """
        w_u = self.pseudo_weight if pseudo_weight is None else float(pseudo_weight)
        gt, pseudo = self.terms(logits, target, from_labeled, valid)
        return self.labeled_weight * gt + w_u * pseudo
