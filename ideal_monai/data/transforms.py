"""MONAI dictionary transforms for loading and preprocessing cardiac volumes.

Volume pipeline (3D, channel-first ``(1, X, Y, Z)``; ``Z`` is the short-axis slice axis)::

    LoadCased -> ScaleIntensityRangePercentilesd (1st-99th percentile -> 0..1, per volume)
              -> SliceAxisOrientationd (in-plane axes to one canonical frame; the slice axis stays last)
              -> [Spacingd to (s, s, keep) in-plane]  (only when ``target_spacing`` is set)
              -> ResizeWithPadOrCropd to (P, P, keep)

Every spatial step after loading is a MONAI invertible transform, so ``Invertd`` maps predictions
back to the input's exact grid. MONAI wraps any exception raised inside a ``Compose`` into a
``RuntimeError``; :class:`InputErrorCompose` unwraps :class:`~ideal_monai.errors.IdealInputError`
again so entry points can print their one-line message naming the bad file.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from ..errors import reraise_input_error
from . import io  # module attribute access, so tests can instrument io.load_volume


class InputErrorCompose(Compose):
    """``Compose`` that re-raises an :class:`IdealInputError` from one of its transforms unwrapped.

    MONAI's ``apply_transform`` turns every exception into ``RuntimeError("applying transform ...")``,
    which would hide the one-line message naming the bad file from the entry points.
    """

    def __call__(self, input_, start=0, end=None, threading=False, lazy: bool | None = None):
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as e:
            reraise_input_error(e)


class LoadCased(MapTransform):
    """Load and validate a case's image (and label, when present) as ``(1, X, Y, Z)`` MetaTensors.

    Uses :func:`ideal_monai.data.io.load_volume`, so corrupt files, NaN/Inf, bad label values and
    image/label grid mismatches fail with a one-line :class:`IdealInputError` naming the file.
    A ``"frame"`` entry in the dict selects one frame of a 4D cine file.

    Args:
        keys: the image key first, then optional label keys.
        label_keys: which of ``keys`` are label maps.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), label_keys: KeysCollection = ("label",),
                 allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.label_keys = set(label_keys if isinstance(label_keys, (list, tuple)) else [label_keys])

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        frame = d.get("frame")
        image_key = None
        for key in self.key_iterator(d):
            is_label = key in self.label_keys
            d[key] = io.load_volume(d[key], is_label=is_label, frame=None if is_label else frame)
            if not is_label and image_key is None:
                image_key = key
            elif is_label and image_key is not None:
                io.check_same_grid(d[image_key], d[key])
        return d


def slice_axis_axcodes(affine) -> tuple[str, str, str]:
    """The canonical axis codes for a short-axis volume with this RAS ``affine``: the in-plane axes in
    R, A, S order and positive direction, the slice axis (the last) as it is.

    ``("L", "P", "S")`` (the ACDC release) -> ``("R", "A", "S")``; an oblique stack whose slice
    normal is closest to R, ``("S", "P", "L")`` -> ``("A", "S", "L")``.
    """
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    slice_pair = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}[codes[2]]
    in_plane = [c for c in "RAS" if c not in slice_pair]
    return in_plane[0], in_plane[1], codes[2]


class SliceAxisOrientationd(Orientationd):
    """MONAI's ``Orientationd`` to the canonical frame of :func:`slice_axis_axcodes`, per volume.

    ``Orientationd(axcodes="RAS")`` would move the slice axis of an oblique short-axis stack to
    whichever world axis is closest, and the 2D network slices the LAST axis. This transform only
    flips and swaps the two in-plane axes, so hearts from any scanner's row/column convention reach
    the network in one orientation, and ``Invertd`` undoes it (the inverse reads the recorded
    original affine, as ``Orientationd``'s does).

    Args:
        keys: image key first (its affine chooses the codes), then label keys on the same grid.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, axcodes="RAS", labels=None, allow_missing_keys=allow_missing_keys)
        # The codes change per volume, but the inverse must find the transform object that recorded
        # the operation (MONAI checks its id): one Orientation, its codes set under a lock.
        self._lock = threading.Lock()

    def __call__(self, data, lazy: bool | None = None):
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        with self._lock:
            self.ornt_transform.axcodes = "".join(slice_axis_axcodes(d[keys[0]].affine))
            for key in keys:
                d[key] = self.ornt_transform(d[key], lazy=False)
        return d


class InPlaneSpacingd(Spacingd):
    """MONAI's ``Spacingd`` that leaves unrelated ``<key>_*`` entries of the data dict alone.

    After resampling, ``Spacingd`` calls ``d[k].update(meta)`` on *every* key that starts with
    ``"<key>_"``, taking them for meta dicts. MONAI Label's inference request carries
    ``image_path`` (a string), so with ``target_spacing`` set every ``POST /infer`` failed with
    ``AttributeError: 'str' object has no attribute 'update'`` (issue #14). Entries that are not
    dicts are held out of the call and put back; meta dicts are updated as before.
    """

    def __call__(self, data, lazy: bool | None = None):
        held = {k: v for k, v in data.items()
                if isinstance(k, str) and not isinstance(v, dict) and any(k.startswith(f"{key}_") for key in self.keys)}
        out = super().__call__({k: v for k, v in data.items() if k not in held}, lazy=lazy)
        out.update(held)
        return out


def volume_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    patch_size: Sequence[int] = (256, 256),
    target_spacing: Sequence[float] | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    load: bool = True,
) -> Compose:
    """The deterministic, invertible 3D preprocessing shared by training, validation and inference.

    Args:
        keys: image key first; the others are label keys (nearest-neighbour resampling).
        patch_size: in-plane size ``(P, P)`` every slice is padded/cropped to (centred).
        target_spacing: in-plane spacing ``(sx, sy)`` in mm to resample to (after
            :class:`SliceAxisOrientationd`), or None / ``[]`` to keep the input's in-plane grid.
        percentiles: robust intensity window, mapped to 0..1 and clipped.
        load: start with :class:`LoadCased` (False when the dict already holds tensors).

    Returns:
        An :class:`InputErrorCompose` producing ``(1, P, P, Z)`` tensors: the image float32 in 0..1,
        labels uint8 (also after resampling, which computes in float).
    """
    keys = list(keys)
    image_key, label_keys = keys[0], keys[1:]
    transforms = []
    if load:
        transforms.append(LoadCased(keys, label_keys=label_keys, allow_missing_keys=True))
    transforms.append(
        ScaleIntensityRangePercentilesd(image_key, lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0,
                                        clip=True)
    )
    transforms.append(SliceAxisOrientationd(keys, allow_missing_keys=True))
    if target_spacing:  # None or []: keep the input's in-plane grid
        transforms.append(
            InPlaneSpacingd(keys, pixdim=(float(target_spacing[0]), float(target_spacing[1]), -1.0),
                     mode=["bilinear"] + ["nearest"] * len(label_keys), allow_missing_keys=True)
        )
        if label_keys:  # Spacingd returns float32; nearest-neighbour values are exact class ids
            transforms.append(CastToTyped(label_keys, dtype=np.uint8, allow_missing_keys=True))
    transforms.append(ResizeWithPadOrCropd(keys, spatial_size=(int(patch_size[0]), int(patch_size[1]), -1),
                                           allow_missing_keys=True))
    transforms.append(EnsureTyped(image_key, dtype="float32", track_meta=True))
    return InputErrorCompose(transforms)


def slice_augmentation(
    keys: Sequence[str] = ("image", "label"),
    prob: float = 0.5,
    rotate_deg: float = 45.0,
    scale: float = 0.15,
    translate_px: float = 0.0,
    intensity: float = 0.0,
) -> Compose:
    """Weak 2D augmentation for ``(1, H, W)`` slices: flips, rotation, scaling, translation, intensity.

    Args:
        keys: image key first, then label keys (nearest-neighbour resampling).
        prob: probability of each flip and of the affine transform.
        rotate_deg: rotation range, +- degrees.
        scale: scaling range, +- fraction.
        translate_px: translation range, +- pixels per axis. The training configs use 10 % of the
            patch: preprocessing centre-crops, so without it the network only sees hearts where the
            few labeled patients have them and can miss an off-centre heart entirely.
        intensity: strength ``s`` of the image-only intensity augmentation (0 = off): with probability
            ``prob`` each, a gamma in ``[1 - s, 1 + s]`` (``RandAdjustContrastd``), a contrast factor
            ``1 + U(-s, s)`` and a brightness shift ``U(-s/2, s/2)``. Images are 0..1 after the
            percentile scaling, so ``s = 0.3`` spans scanners' contrast differences without clipping
            the heart away.

    Labels are resampled with nearest neighbour and returned as uint8, like unaugmented slices
    (``RandAffined`` outputs float32, which would mix dtypes within a batch).
    """
    keys = list(keys)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    transforms = [
        RandFlipd(keys, prob=prob, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(keys, prob=prob, spatial_axis=1, allow_missing_keys=True),
        RandAffined(keys, prob=prob, rotate_range=(float(np.deg2rad(rotate_deg)),), scale_range=(scale, scale),
                    translate_range=(float(translate_px), float(translate_px)), mode=modes, padding_mode="zeros", allow_missing_keys=True),
    ]
    if intensity < 0:
        raise ValueError(f"intensity must be >= 0, got {intensity}")
    if intensity > 0:
        image = keys[:1]
        transforms += [
            RandAdjustContrastd(image, prob=prob, gamma=(max(1.0 - intensity, 0.05), 1.0 + intensity)),
            RandScaleIntensityd(image, factors=intensity, prob=prob),
            RandShiftIntensityd(image, offsets=intensity / 2, prob=prob),
        ]
    if len(keys) > 1:
        transforms.append(CastToTyped(keys[1:], dtype=np.uint8, allow_missing_keys=True))
    return Compose(transforms)
