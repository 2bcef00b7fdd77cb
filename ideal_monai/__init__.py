"""ideal-monai: IDEAL semi-supervised cardiac MRI segmentation as a MONAI bundle.

Stage 1 pre-trains a 2D U-Net encoder with a dense local contrastive loss; stage 2 fine-tunes two
decoder streams that teach each other (bidirectional consistency); inference writes NIfTI labels.
"""

from .errors import IdealInputError, install_excepthook

__version__ = "0.1.0"

#: Class names in ACDC order: label value -> name.
CLASS_NAMES = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
NUM_CLASSES = len(CLASS_NAMES)

__all__ = ["IdealInputError", "CLASS_NAMES", "NUM_CLASSES", "__version__"]

# Subpackages are imported eagerly so bundle configs can write ``$ideal_monai.data....`` after a
# plain ``$import ideal_monai``.
from . import data, engines, evaluation, function, handlers, inference, losses, networks, transforms, utils  # noqa: E402,F401

install_excepthook()
