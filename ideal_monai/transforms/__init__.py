"""MONAI dictionary transforms specific to IDEAL.

- :mod:`.paired_views`: two augmented views of a slice plus their dense feature-map correspondence,
  for the dense local contrastive pre-training (docs/METHOD.md §3; sources in bundle/docs/README.md).
- :mod:`.copy_paste`: bidirectional copy-paste mixing of a labeled and an unlabeled batch (fine-tuning).
- :mod:`.heart_components`: inference post-processing, the heart's largest component then each structure's.
"""

from .copy_paste import BidirectionalCopyPaste, MixedBatch, random_box_masks, side_by_side
from .heart_components import KeepHeartComponentsd
from .paired_views import (
    RandPairedViewsd,
    RandPairedViewsD,
    RandPairedViewsDict,
    correspondence,
    random_view_affine,
    sample_crop_box,
    view_affine,
    warp_view,
)

__all__ = [
    "BidirectionalCopyPaste",
    "MixedBatch",
    "random_box_masks",
    "side_by_side",
    "KeepHeartComponentsd",
    "RandPairedViewsd",
    "RandPairedViewsD",
    "RandPairedViewsDict",
    "correspondence",
    "random_view_affine",
    "sample_crop_box",
    "view_affine",
    "warp_view",
]
