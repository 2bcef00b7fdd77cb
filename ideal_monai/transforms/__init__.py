"""MONAI dictionary transforms specific to IDEAL.

- :mod:`.paired_views`: two augmented views of a slice plus their dense feature-map correspondence,
  for the dense local contrastive pre-training (METHOD.md section 3).
"""

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
    "RandPairedViewsd",
    "RandPairedViewsD",
    "RandPairedViewsDict",
    "correspondence",
    "random_view_affine",
    "sample_crop_box",
    "view_affine",
    "warp_view",
]
