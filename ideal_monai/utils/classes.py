"""The segmentation classes, in one table: label value, name and drawing colour (ACDC convention).

Every module that names, counts, checks or draws the classes reads them from here, so the
overlays, the TensorBoard images, the phantom pictures and the function curves show each
structure in the same colour.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SegmentationClass", "BACKGROUND", "CLASSES", "CLASS_NAMES", "NUM_CLASSES", "LABEL_VALUES",
           "FOREGROUND_NAMES", "CLASS_LABELS", "CLASS_COLOURS"]


class SegmentationClass(NamedTuple):
    """One foreground class: its label value, its name and its RGB colour (components in [0, 1])."""

    label: int
    name: str
    colour: tuple[float, float, float]


#: The label value of background (never scored, never drawn).
BACKGROUND = 0

#: The foreground classes in label order. Colours are distinct from each other and from grey MRI
#: intensities: RV blue, MYO green, LV red.
CLASSES: tuple[SegmentationClass, ...] = (
    SegmentationClass(1, "RV", (0.10, 0.55, 1.00)),
    SegmentationClass(2, "MYO", (0.15, 0.85, 0.25)),
    SegmentationClass(3, "LV", (1.00, 0.25, 0.20)),
)

#: Label value -> name, background included: the network's output channels in order.
CLASS_NAMES: dict[int, str] = {BACKGROUND: "background", **{c.label: c.name for c in CLASSES}}
#: Output channels of the segmentation network (background + foreground classes).
NUM_CLASSES = len(CLASS_NAMES)
#: Every valid label value of a label map, background included.
LABEL_VALUES: tuple[int, ...] = tuple(CLASS_NAMES)
#: Label value -> name of the foreground classes (the scored ones).
FOREGROUND_NAMES: dict[int, str] = {c.label: c.name for c in CLASSES}
#: Name -> label value of the foreground classes.
CLASS_LABELS: dict[str, int] = {c.name: c.label for c in CLASSES}
#: Label value -> RGB colour of the foreground classes.
CLASS_COLOURS: dict[int, tuple[float, float, float]] = {c.label: c.colour for c in CLASSES}
