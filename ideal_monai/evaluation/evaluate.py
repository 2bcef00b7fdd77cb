"""Score a folder (or a list) of predicted label volumes against ground truth and write the report:
:mod:`~ideal_monai.evaluation.pairing` finds and reads the cases, :mod:`~ideal_monai.evaluation.metrics`
scores them, :mod:`~ideal_monai.evaluation.overlays` draws them and :mod:`~ideal_monai.evaluation.report`
writes the files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import IdealInputError
from .metrics import DEFAULT_CLASS_NAMES, check_class_names, compute_case_metrics, summarize
from .overlays import save_overlay_png
from .pairing import load_case, normalise_cases, pair_folders
from .report import write_report

__all__ = ["evaluate_folders"]


def evaluate_folders(
    pred_dir: str | os.PathLike | None,
    gt_dir_or_cases,
    output_dir: str | os.PathLike,
    class_names: Mapping[int, str] = DEFAULT_CLASS_NAMES,
    overlays: bool = True,
    max_overlays: int | None = None,
    affine_tol_mm: float = 0.01,
) -> dict:
    """Score a folder of predicted label volumes against ground truth and write the report.

    Args:
        pred_dir: folder of predictions, searched recursively for ``*.nii[.gz]``; a file is named
            like its image (``patient001_frame01.nii.gz``; a ``_seg`` or ``_pred`` postfix is
            tolerated). Ignored when ``gt_dir_or_cases`` is a list.
        gt_dir_or_cases: either a folder searched recursively for ``<case>_gt.nii.gz`` (the ACDC
            layout; the image ``<case>.nii.gz`` beside it is used for overlays) or, failing that,
            ``<case>.nii.gz`` (a labels folder); or a list of ``(case_id, pred_path, gt_path)``
            or ``(case_id, pred_path, gt_path, image_path)``.
        output_dir: where ``metrics.csv``, ``metrics.json``, ``report.md`` and ``overlays/*.png``
            are written.
        class_names: label value -> class name of the scored classes.
        overlays: draw one overlay PNG per case (slices with foreground, GT vs prediction).
        max_overlays: draw overlays only for this many cases, the lowest mean DSC first.
        affine_tol_mm: how far (mm) a prediction's voxel grid may sit from the GT's.

    Returns:
        The :func:`~ideal_monai.evaluation.metrics.summarize` dict (also written to
        ``metrics.json``). Spacing comes from the GT header zooms; prediction and GT must agree in
        shape and affine.

    Raises:
        IdealInputError: on a missing/unpaired file, shape or affine mismatch, or bad labels.
    """
    names = check_class_names(class_names)
    if isinstance(gt_dir_or_cases, (str, os.PathLike)):
        if pred_dir is None:
            raise IdealInputError("pred_dir", "a prediction folder is needed when the ground truth is a folder")
        cases = pair_folders(Path(pred_dir), Path(gt_dir_or_cases))
    else:
        cases = normalise_cases(gt_dir_or_cases)

    output_dir = Path(output_dir)
    rows: list[dict] = []
    for cid, pred_path, gt_path, _ in cases:
        pred, gt, spacing, _ = load_case(pred_path, gt_path, None, max(names), affine_tol_mm)
        rows.extend(compute_case_metrics(pred, gt, spacing, names, case_id=cid))
    summary = summarize(rows)

    overlay_paths: dict[str, Path] = {}
    if overlays:
        # Worst cases first, so a capped run still draws the ones worth looking at. The chosen cases
        # are read again rather than all volumes kept in memory (100 ACDC volumes would be ~1 GB).
        order = sorted(cases, key=lambda c: np.nan_to_num(summary["cases"][c[0]]["dsc_mean"], nan=-1.0))
        chosen = order if max_overlays is None else order[: max(0, int(max_overlays))]
        for cid, pred_path, gt_path, image_path in sorted(chosen, key=lambda c: c[0]):
            pred, gt, spacing, image = load_case(pred_path, gt_path, image_path, max(names), affine_tol_mm)
            dsc = summary["cases"][cid]["dsc_mean"]
            path = output_dir / "overlays" / f"{cid}.png"
            save_overlay_png(
                image, pred, gt, path, title=f"{cid}  mean DSC {dsc:.3f}", class_names=names, spacing=spacing
            )
            overlay_paths[cid] = path
    write_report(rows, summary, output_dir, overlays=overlay_paths)
    return summary
