"""Losses of both IDEAL stages.

- Pre-training: :class:`DenseLocalContrastiveLoss` (dense local InfoNCE over corresponding
  locations) and, optionally, :class:`GlobalContrastiveLoss` on pooled projections.
- Fine-tuning: :class:`BidirectionalConsistencyLoss` weighted by :class:`ConsistencyWeightSchedule`;
  :class:`MixedSupervisionLoss` for copy-paste mixed slices (ground truth and a teacher's pseudo-labels).
"""

# The global term is SimCLR's NT-Xent on (B, F) pooled projections of the two views, which MONAI's
# ContrastiveLoss(temperature) computes exactly (it cosine-normalises internally); re-exported under
# the name the rest of the package uses rather than re-implemented.
from monai.losses import ContrastiveLoss as GlobalContrastiveLoss

from .consistency import BidirectionalConsistencyLoss
from .dense_contrastive import DenseLocalContrastiveLoss
from .mixed_supervision import MixedSupervisionLoss
from .rampup import ConsistencyWeightSchedule, sigmoid_rampup

__all__ = [
    "DenseLocalContrastiveLoss",
    "GlobalContrastiveLoss",
    "BidirectionalConsistencyLoss",
    "MixedSupervisionLoss",
    "ConsistencyWeightSchedule",
    "sigmoid_rampup",
]
