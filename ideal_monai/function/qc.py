"""Automatic quality control of a segmentation used for cardiac function (flagged, never hidden).

Each check returns human-readable flags; an empty list means the frame passed. The checks look
for what makes a volume or an ejection fraction wrong without lowering a Dice score much: a
structure that is (almost) missing, a heart cut short in the slice direction, a hole in the stack,
or a mid-ventricular slice without a ventricle.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .indices import ACDC_CLASSES

__all__ = ["quality_flags"]


def quality_flags(label: np.ndarray, frame: str, classes: Mapping[str, int] = ACDC_CLASSES,
                  min_fraction: float = 0.02, min_slices: int = 3) -> list[str]:
    """Flags for one 3D label map ``(X, Y, Z)`` (``Z`` = short-axis slice axis) of frame ``frame`` (e.g. ``"ED"``).

    - a class with fewer than ``min_fraction`` of the heart's voxels (heart = all classes);
    - fewer than ``min_slices`` slices holding both the LV cavity and the myocardium;
    - a slice without any heart between slices with heart (a gap in the stack);
    - LV cavity or RV cavity missing on the mid-ventricular slice (the middle of the heart's slices).
    """
    label = np.asarray(label)
    flags: list[str] = []
    counts = {name: int(np.count_nonzero(label == value)) for name, value in classes.items()}
    heart = sum(counts.values())
    if heart == 0:
        return [f"{frame}: no heart segmented"]
    for name, n in counts.items():
        if n < min_fraction * heart:
            flags.append(f"{frame}: {name} has almost no voxels ({n} of {heart} heart voxels)")
    per_slice = {name: np.count_nonzero(label == value, axis=(0, 1)) > 0 for name, value in classes.items()}
    if "LV" in per_slice and "MYO" in per_slice:
        both = int(np.count_nonzero(per_slice["LV"] & per_slice["MYO"]))
        if both < min_slices:
            flags.append(f"{frame}: only {both} slice(s) with both LV cavity and myocardium (< {min_slices})")
    any_heart = np.logical_or.reduce(list(per_slice.values()))
    idx = np.flatnonzero(any_heart)
    gaps = [int(z) for z in range(idx[0], idx[-1] + 1) if not any_heart[z]]
    if gaps:
        flags.append(f"{frame}: slice gap inside the heart at slice(s) {gaps}")
    mid = int((idx[0] + idx[-1]) // 2)
    for name in ("LV", "RV"):
        if name in per_slice and not per_slice[name][mid]:
            flags.append(f"{frame}: {name} missing on the mid-ventricular slice {mid}")
    return flags
