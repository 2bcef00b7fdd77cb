"""The cases of a folder evaluation: each prediction paired with its ground truth (and image), and
one case's volumes read through :mod:`ideal_monai.data.io` and cross-checked.

Volumes are ``(X, Y, Z)`` arrays; label values are checked against the scored classes by
:func:`~ideal_monai.evaluation.metrics.as_label_volume`, not against the ACDC values, so a
prediction with more classes than ACDC's can still be scored.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.io import read_array, voxel_spacing
from ..errors import IdealInputError
from .metrics import as_label_volume, as_spacing

__all__ = ["pair_folders", "normalise_cases", "load_case"]

# Last components of a prediction's file name that are not part of the case id: MONAI's SaveImage
# appends "_seg" by default, and some pipelines use "_pred".
_PRED_POSTFIXES = ("_seg", "_pred")
# Side outputs of ``ideal-monai infer`` that sit beside the label maps and are not predictions.
_SIDE_OUTPUT_POSTFIXES = ("_uncertainty", "_probs")
_NIFTI_EXT = re.compile(r"\.nii(\.gz)?$")

#: One case: (case id, prediction file, ground-truth file, image file or None).
Case = tuple[str, Path, Path, Path | None]


def _case_id_of(path: Path, postfixes: Sequence[str] = ()) -> str:
    stem = _NIFTI_EXT.sub("", path.name)
    for post in postfixes:
        if stem.endswith(post) and len(stem) > len(post):
            return stem[: -len(post)]
    return stem


def _nifti_files(folder: Path) -> list[Path]:
    # Hidden names are skipped, as in discovery: e.g. the temporary of a write that was killed.
    found = sorted(p for p in folder.rglob("*") if _NIFTI_EXT.search(p.name) and not p.name.startswith("."))
    for p in found:
        if not p.is_file():  # e.g. a folder named like a volume: refused, not silently left out
            raise IdealInputError(p, "is a directory (or not a regular file), expected a NIfTI file")
    return found


def pair_folders(pred_dir: Path, gt_dir: Path) -> list[Case]:
    """Pair every prediction in ``pred_dir`` with its ground truth (and image) in ``gt_dir``.

    A prediction ``<case>.nii.gz`` (or ``<case>_seg`` / ``<case>_pred``, in any subfolder) pairs
    with ``<case>_gt.nii.gz`` anywhere under ``gt_dir`` (the ACDC layout, where the image
    ``<case>.nii.gz`` sits beside it and is used for the overlays), else with ``<case>.nii.gz``
    (a labels-only folder, no image). Cases are sorted by id.

    Raises:
        IdealInputError: on a missing folder, no predictions, two predictions or two ground truths
            for one case, or predictions without ground truth.
    """
    if not pred_dir.is_dir():
        raise IdealInputError(pred_dir, "prediction folder does not exist")
    if not gt_dir.is_dir():
        raise IdealInputError(gt_dir, "ground-truth folder does not exist")
    preds: dict[str, Path] = {}
    for p in _nifti_files(pred_dir):
        if _case_id_of(p).endswith(_SIDE_OUTPUT_POSTFIXES):
            continue
        cid = _case_id_of(p, _PRED_POSTFIXES)
        if cid in preds:
            raise IdealInputError(p, f"second prediction for case {cid!r} (first: {preds[cid]})")
        preds[cid] = p
    if not preds:
        raise IdealInputError(pred_dir, "no NIfTI predictions (*.nii, *.nii.gz) found")
    by_name: dict[str, list[Path]] = {}
    for p in _nifti_files(gt_dir):
        by_name.setdefault(_case_id_of(p), []).append(p)

    def unique(name: str) -> Path | None:
        found = by_name.get(name, [])
        if len(found) > 1:
            raise IdealInputError(gt_dir, f"{len(found)} files named {name}.nii[.gz]: {[str(f) for f in found]}")
        return found[0] if found else None

    cases = []
    missing = []
    for cid, pred_path in sorted(preds.items()):
        gt_path, image_path = unique(f"{cid}_gt"), None
        if gt_path is not None:
            image_path = unique(cid)
        else:
            gt_path = unique(cid)
        if gt_path is None:
            missing.append(cid)
            continue
        cases.append((cid, pred_path, gt_path, image_path))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise IdealInputError(
            gt_dir, f"no ground truth ({{case}}_gt.nii.gz or {{case}}.nii.gz) for {len(missing)} prediction(s): {shown}"
        )
    return cases


def normalise_cases(cases) -> list[Case]:
    """Check a user's list of ``(case_id, pred_path, gt_path[, image_path])`` and return it as :data:`Case` tuples.

    Raises:
        IdealInputError: on a malformed item, a duplicate case id, a missing file or an empty list.
    """
    out = []
    seen = set()
    for i, item in enumerate(cases):
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise IdealInputError(
                f"cases[{i}]", f"expected (case_id, pred_path, gt_path[, image_path]), got {item!r}"
            )
        cid, pred_path, gt_path = str(item[0]), Path(item[1]), Path(item[2])
        image_path = Path(item[3]) if len(item) == 4 and item[3] is not None else None
        if cid in seen:
            raise IdealInputError(f"cases[{i}]", f"duplicate case id {cid!r}")
        seen.add(cid)
        for p in (pred_path, gt_path) + ((image_path,) if image_path else ()):
            if not p.is_file():
                raise IdealInputError(p, "file does not exist")
        out.append((cid, pred_path, gt_path, image_path))
    if not out:
        raise IdealInputError("cases", "empty list of cases")
    return out


def _max_corner_shift_mm(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest world-space distance (mm) between the volume's 8 corner voxels under two affines."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.linalg.norm((a @ corners)[:3] - (b @ corners)[:3], axis=0).max())


def load_case(pred_path: Path, gt_path: Path, image_path: Path | None, max_label: int, affine_tol_mm: float):
    """Read and cross-check one case.

    Args:
        pred_path, gt_path: label files; prediction and ground truth must share shape and grid.
        image_path: the image drawn under the overlays, or None. It is a convenience: an unreadable
            image is skipped with a warning, one on another grid silently.
        max_label: the largest label value allowed (the scored classes' largest).
        affine_tol_mm: how far (mm) a voxel of the prediction's grid may sit from the ground truth's.

    Returns:
        ``(pred, gt, spacing, image)``: int64 label volumes (X, Y, Z), the ground truth's voxel size
        (sx, sy, sz) in mm, and the float32 image (X, Y, Z) or None.

    Raises:
        IdealInputError: naming the file, on a file that cannot be read, bad labels, or a shape or
            grid mismatch.
    """
    gt_vol = read_array(gt_path)
    pred_vol = read_array(pred_path)
    gt = as_label_volume(gt_vol, str(gt_path), max_label)
    pred = as_label_volume(pred_vol, str(pred_path), max_label)
    if pred.shape != gt.shape:
        raise IdealInputError(pred_path, f"shape {pred.shape} differs from ground truth {gt_path} shape {gt.shape}")
    shift = _max_corner_shift_mm(np.asarray(pred_vol.affine, np.float64), np.asarray(gt_vol.affine, np.float64), gt.shape)
    if shift > affine_tol_mm:
        raise IdealInputError(
            pred_path,
            f"affine differs from ground truth {gt_path} (voxel positions differ by up to {shift:.3g} mm, "
            f"tolerance {affine_tol_mm} mm): the prediction is not on the ground-truth grid",
        )
    spacing = as_spacing(voxel_spacing(gt_vol), str(gt_path))
    image = None
    if image_path is not None:
        try:
            data = read_array(image_path).numpy()
        except IdealInputError as e:  # the overlay background only: draw the labels without it
            warnings.warn(f"overlay drawn without its image: {e}", stacklevel=2)
            data = np.zeros((0,))
        if data.shape[:3] == gt.shape:
            image = data[..., 0] if data.ndim == 4 else data
            image = image.astype(np.float32) if image.ndim == 3 else None
    return pred, gt, spacing, image
