"""ideal-monai: IDEAL semi-supervised cardiac MRI segmentation as a MONAI bundle.

Stage 1 pre-trains a 2D U-Net encoder with a dense local contrastive loss; stage 2 fine-tunes two
decoder streams that teach each other (bidirectional consistency); inference writes NIfTI labels.
"""

from .errors import IdealInputError
from .utils.classes import CLASS_NAMES, NUM_CLASSES

__version__ = "0.1.0"

__all__ = ["IdealInputError", "CLASS_NAMES", "NUM_CLASSES", "__version__"]

# Subpackages are imported eagerly so bundle configs can write ``$ideal_monai.data....`` after a
# plain ``$import ideal_monai``.
from . import cohort, data, engines, evaluation, function, handlers, inference, losses, networks, release, transforms, utils  # noqa: E402,F401
