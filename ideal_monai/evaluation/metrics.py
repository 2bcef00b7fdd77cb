"""Per-volume segmentation metrics (DSC, HD95, ASD in mm) and their summary over a test set.

One 3D label volume (X, Y, Z) is scored per class (RV, MYO, LV by default) with MONAI's
``compute_dice``, ``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)``, all with the voxel spacing in mm, so the
distances are in mm (in voxels when the spacing is 1). Conventions of the MONAI functions this
module relies on:

- HD95 is symmetric: the 95th percentile (linear interpolation, ``torch.quantile``) of the
  prediction-to-GT surface distances and of the GT-to-prediction distances, whichever is larger.
- ASD is symmetric: the mean of the two directed surface-distance sets pooled together.
- Surfaces are the mask voxels removed by one binary erosion; distances are between voxel centres.
- ``spacing`` is given per array axis, (sx, sy, sz) for an (X, Y, Z) volume.

Empty masks. MONAI does not define the metrics when a mask is empty (it returns NaN for HD and
``inf`` for ASD when the prediction is empty, NaN for DSC when the GT is empty), so every
(case, class) gets an explicit ``status`` and these values:

- ``ok``: structure in GT and prediction; all three metrics computed.
- ``missing_prediction``: structure in GT, empty prediction. DSC 0; HD95 and ASD NaN. This is a
  FAILURE: summaries count it and never substitute a distance of 0.
- ``false_positive``: structure absent from GT but predicted. DSC 0; HD95 and ASD NaN. Also
  counted as a failure.
- ``both_empty``: structure absent from both. Nothing to measure: DSC, HD95 and ASD are all NaN,
  so the case neither rewards (a DSC of 1) nor penalises the class mean.

Means skip NaN values: mean DSC includes the 0 of every failure, while the mean distances only
cover ``ok`` rows, which is why the failure counts are reported next to them.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from monai.utils import convert_data_type

from ..errors import IdealInputError

__all__ = [
    "CONVENTION",
    "DEFAULT_CLASS_NAMES",
    "METRIC_KEYS",
    "STATUSES",
    "FAILURE_STATUSES",
    "compute_case_metrics",
    "summarize",
    "evaluate_folders",
]

#: Label value -> class name for the classes that are scored (ACDC order, background excluded).
DEFAULT_CLASS_NAMES: dict[int, str] = {1: "RV", 2: "MYO", 3: "LV"}

#: The metric columns of a row, in report order.
METRIC_KEYS = ("dsc", "hd95", "asd")

#: Every status a (case, class) row can have.
STATUSES = ("ok", "missing_prediction", "false_positive", "both_empty")

#: Statuses counted as failures in :func:`summarize`.
FAILURE_STATUSES = ("missing_prediction", "false_positive")

#: The empty-mask convention, written into every report so that numbers are never read without it.
CONVENTION = (
    "Per 3D volume and class: DSC; HD95 = symmetric 95th-percentile Hausdorff distance and "
    "ASD = symmetric average surface distance, both in mm from the ground-truth voxel spacing "
    "(MONAI compute_dice / compute_hausdorff_distance(percentile=95) / "
    "compute_average_surface_distance(symmetric=True)). "
    "Status per case and class: 'ok' = structure in ground truth and prediction, all metrics "
    "computed; 'missing_prediction' = structure in ground truth but prediction empty: DSC 0, "
    "HD95/ASD NaN, counted as a FAILURE (never a distance of 0); 'false_positive' = structure "
    "absent from ground truth but predicted: DSC 0, HD95/ASD NaN, counted as a failure; "
    "'both_empty' = absent from both: DSC, HD95 and ASD NaN (not scored). "
    "Means are over cases (per class) and over classes and cases (overall), skipping NaN: "
    "mean DSC includes the 0 of each failure, mean HD95/ASD cover 'ok' rows only."
)

# Last components of a prediction's file name that are not part of the case id: MONAI's SaveImage
# appends "_seg" by default, and some pipelines use "_pred".
_PRED_POSTFIXES = ("_seg", "_pred")
# Side outputs of ``ideal-monai infer`` that sit beside the label maps and are not predictions.
_SIDE_OUTPUT_POSTFIXES = ("_uncertainty", "_probs")
_NIFTI_EXT = re.compile(r"\.nii(\.gz)?$")


def _as_label_volume(arr, where: str, max_label: int) -> np.ndarray:
    """Validate one label volume and return it as an int64 array of shape (X, Y, Z)."""
    arr = convert_data_type(arr, np.ndarray)[0]
    if arr.ndim != 3:
        raise IdealInputError(where, f"expected a 3D label volume (X, Y, Z), got shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        # NIfTI label files are often stored as float; accept them only when every value is integral.
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise IdealInputError(where, "label volume has non-integer values (is this an image, not labels?)")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise IdealInputError(where, f"label volume has dtype {arr.dtype}, expected integers")
    arr = arr.astype(np.int64, copy=False)
    values = np.unique(arr)
    bad = values[(values < 0) | (values > max_label)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise IdealInputError(where, f"label values outside 0..{max_label}: [{shown}]")
    return arr


def _as_spacing(spacing, where: str) -> tuple[float, float, float]:
    sp = np.asarray(convert_data_type(spacing, np.ndarray)[0], dtype=np.float64).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise IdealInputError(where, f"spacing must be three positive numbers (sx, sy, sz) in mm, got {spacing!r}")
    return tuple(float(s) for s in sp)


def _check_class_names(class_names: Mapping[int, str]) -> dict[int, str]:
    names = {int(k): str(v) for k, v in class_names.items()}
    if not names or min(names) < 1:
        raise IdealInputError("class_names", f"need at least one class with a label value >= 1, got {class_names!r}")
    return names


def compute_case_metrics(
    pred,
    gt,
    spacing: Sequence[float],
    class_names: Mapping[int, str] = DEFAULT_CLASS_NAMES,
    case_id: str = "",
) -> list[dict]:
    """Score one predicted label volume against its ground truth, class by class.

    Args:
        pred: predicted labels, integer array (X, Y, Z), numpy or torch.
        gt: ground-truth labels, integer array (X, Y, Z), same shape as ``pred``.
        spacing: voxel size (sx, sy, sz) in mm along the three array axes.
        class_names: label value -> class name of the classes to score (background 0 is never
            scored). Label values in the arrays must lie in ``0..max(class_names)``.
        case_id: written into every row, and names the case in error messages.

    Returns:
        One dict per class, in label order: ``case_id``, ``class`` (name), ``dsc``, ``hd95``,
        ``asd`` (floats, distances in mm, NaN where undefined), ``status`` (one of
        :data:`STATUSES`, see the module docstring for the convention) and ``spacing``
        ([sx, sy, sz], so a report can say which distances are really in voxels).

    Raises:
        IdealInputError: on shape mismatch, labels outside the class range, or bad spacing.
    """
    names = _check_class_names(class_names)
    max_label = max(names)
    tag = case_id or "case"
    pred = _as_label_volume(pred, f"{tag} prediction", max_label)
    gt = _as_label_volume(gt, f"{tag} ground truth", max_label)
    if pred.shape != gt.shape:
        raise IdealInputError(tag, f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    spacing = _as_spacing(spacing, f"{tag} spacing")

    # One-hot (1, C, X, Y, Z): the layout MONAI's metric functions expect (batch, channel, spatial).
    pred_oh = one_hot(torch.from_numpy(pred)[None, None], num_classes=max_label + 1, dtype=torch.float32)
    gt_oh = one_hot(torch.from_numpy(gt)[None, None], num_classes=max_label + 1, dtype=torch.float32)

    rows = []
    for label, name in sorted(names.items()):
        p = pred_oh[:, label : label + 1]
        g = gt_oh[:, label : label + 1]
        in_pred, in_gt = bool(p.any()), bool(g.any())
        nan = float("nan")
        if in_pred and in_gt:
            status = "ok"
            dsc, hd95, asd = _monai_metrics(p, g, spacing)
        elif in_gt:
            status, dsc, hd95, asd = "missing_prediction", 0.0, nan, nan
        elif in_pred:
            status, dsc, hd95, asd = "false_positive", 0.0, nan, nan
        else:
            status, dsc, hd95, asd = "both_empty", nan, nan, nan
        rows.append({"case_id": case_id, "class": name, "dsc": dsc, "hd95": hd95, "asd": asd, "status": status,
                     "spacing": list(spacing)})
    return rows


def _monai_metrics(p: torch.Tensor, g: torch.Tensor, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """DSC, HD95, ASD of one binary channel pair (1, 1, X, Y, Z), both masks non-empty."""
    with warnings.catch_warnings():
        # MONAI 1.6's own surface-distance code passes a deprecated get_mask_edges argument and warns
        # on every call; the warning is about MONAI internals, not about our inputs.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        dsc = compute_dice(p, g, include_background=True)
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
    return float(dsc.item()), float(hd95.item()), float(asd.item())


def _stats(rows: Sequence[Mapping]) -> dict:
    """Means/stds (NaN-skipping) of the metric columns and status counts over ``rows``."""
    out: dict = {"n_rows": len(rows)}
    for key in METRIC_KEYS:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[f"{key}_mean"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{key}_std"] = float(finite.std()) if finite.size else float("nan")
        out[f"{key}_n"] = int(finite.size)
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] += 1
    out["status_counts"] = counts
    out["n_failures"] = sum(counts[s] for s in FAILURE_STATUSES)
    return out


def summarize(rows: Sequence[Mapping]) -> dict:
    """Summarise rows from :func:`compute_case_metrics` over a set of cases.

    Returns:
        ``{"convention", "n_cases", "classes": {name: stats}, "overall": stats,
        "cases": {case_id: stats}, "failures": [{"case_id", "class", "status"}, ...]}`` where
        ``stats`` holds ``dsc_mean``/``dsc_std``/``dsc_n`` (and the same for ``hd95``, ``asd``),
        ``status_counts`` and ``n_failures``. ``classes`` averages over cases, ``overall`` over
        every (case, class) row, ``cases`` over one case's classes. NaN values are skipped; the
        ``*_n`` fields say how many values each mean covers.
    """
    if not rows:
        raise IdealInputError("rows", "no metric rows to summarise (no cases were evaluated)")
    for r in rows:
        if r.get("status") not in STATUSES:
            raise IdealInputError("rows", f"row {dict(r)!r} has no valid status")
    class_order = list(dict.fromkeys(r["class"] for r in rows))
    case_order = list(dict.fromkeys(r["case_id"] for r in rows))
    return {
        "convention": CONVENTION,
        "n_cases": len(case_order),
        "classes": {c: _stats([r for r in rows if r["class"] == c]) for c in class_order},
        "overall": _stats(rows),
        "cases": {k: _stats([r for r in rows if r["case_id"] == k]) for k in case_order},
        "failures": [
            {"case_id": r["case_id"], "class": r["class"], "status": r["status"]}
            for r in rows
            if r["status"] in FAILURE_STATUSES
        ],
    }


# ----------------------------------------------------------------------------------------------
# Folder evaluation
# ----------------------------------------------------------------------------------------------


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


def _pair_folders(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path, Path | None]]:
    """Pair every prediction in ``pred_dir`` with its ground truth (and image) in ``gt_dir``.

    A prediction ``<case>.nii.gz`` (or ``<case>_seg`` / ``<case>_pred``, in any subfolder) pairs
    with ``<case>_gt.nii.gz`` anywhere under ``gt_dir`` (the ACDC layout, where the image
    ``<case>.nii.gz`` sits beside it and is used for the overlays), else with ``<case>.nii.gz``
    (a labels-only folder, no image).
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


def _normalise_cases(cases) -> list[tuple[str, Path, Path, Path | None]]:
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


def _load_nifti(path: Path):
    import nibabel as nib

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise IdealInputError(path, "file is empty")
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt or non-NIfTI files
        text = str(e).strip().splitlines()
        raise IdealInputError(path, f"cannot read as NIfTI: {text[0][:160] if text else type(e).__name__}") from None


def _read_data(img, path: Path) -> np.ndarray:
    """The voxel array of a loaded NIfTI, refusing empty or oversized headers before reading and
    turning read errors (truncated gzip, short data) into one-line errors naming ``path``."""
    from ..data.io import _too_large

    shape = tuple(int(v) for v in img.shape)
    if not shape or min(shape) == 0:
        raise IdealInputError(path, f"has a zero-length axis: shape {shape}")
    if _too_large(shape):
        raise IdealInputError(path, _too_large(shape))
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - EOFError, zlib.error, OSError, MemoryError...
        text = str(e).strip().splitlines()
        raise IdealInputError(path, f"cannot be read (corrupt or truncated?): {text[0][:160] if text else type(e).__name__}") from None


def _load_case(pred_path: Path, gt_path: Path, image_path: Path | None, max_label: int, affine_tol_mm: float):
    """Load and cross-check one case; returns (pred, gt, spacing, image or None), arrays (X, Y, Z)."""
    gt_img = _load_nifti(gt_path)
    pred_img = _load_nifti(pred_path)
    # asanyarray(dataobj) keeps the stored integer dtype (get_fdata would turn labels into floats).
    gt = _as_label_volume(_read_data(gt_img, gt_path), str(gt_path), max_label)
    pred_arr = _read_data(pred_img, pred_path)
    if pred_arr.ndim == 4 and pred_arr.shape[3] == 1:  # a trailing singleton channel from some writers
        pred_arr = pred_arr[..., 0]
    pred = _as_label_volume(pred_arr, str(pred_path), max_label)
    if pred.shape != gt.shape:
        raise IdealInputError(pred_path, f"shape {pred.shape} differs from ground truth {gt_path} shape {gt.shape}")
    shift = _max_corner_shift_mm(pred_img.affine, gt_img.affine, gt.shape)
    if shift > affine_tol_mm:
        raise IdealInputError(
            pred_path,
            f"affine differs from ground truth {gt_path} (voxel positions differ by up to {shift:.3g} mm, "
            f"tolerance {affine_tol_mm} mm): the prediction is not on the ground-truth grid",
        )
    spacing = _as_spacing(gt_img.header.get_zooms()[:3], str(gt_path))
    image = None
    if image_path is not None:
        try:
            data = _read_data(_load_nifti(image_path), image_path)
        except IdealInputError as e:  # the overlay background only: draw the labels without it
            warnings.warn(f"overlay drawn without its image: {e}", stacklevel=2)
            data = np.zeros((0,))
        # The overlay is a convenience: an image on another grid is skipped, not an error.
        if data.shape[:3] == gt.shape:
            image = data[..., 0] if data.ndim == 4 else data
            image = image.astype(np.float32) if image.ndim == 3 else None
    return pred, gt, spacing, image


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
        The :func:`summarize` dict (also written to ``metrics.json``). Spacing comes from the GT
        header zooms; prediction and GT must agree in shape and affine.

    Raises:
        IdealInputError: on a missing/unpaired file, shape or affine mismatch, or bad labels.
    """
    from .overlays import save_overlay_png
    from .report import write_report

    names = _check_class_names(class_names)
    if isinstance(gt_dir_or_cases, (str, os.PathLike)):
        if pred_dir is None:
            raise IdealInputError("pred_dir", "a prediction folder is needed when the ground truth is a folder")
        cases = _pair_folders(Path(pred_dir), Path(gt_dir_or_cases))
    else:
        cases = _normalise_cases(gt_dir_or_cases)

    output_dir = Path(output_dir)
    rows: list[dict] = []
    for cid, pred_path, gt_path, _ in cases:
        pred, gt, spacing, _ = _load_case(pred_path, gt_path, None, max(names), affine_tol_mm)
        rows.extend(compute_case_metrics(pred, gt, spacing, names, case_id=cid))
    summary = summarize(rows)

    overlay_paths: dict[str, Path] = {}
    if overlays:
        # Worst cases first, so a capped run still draws the ones worth looking at. The chosen cases
        # are read again rather than all volumes kept in memory (100 ACDC volumes would be ~1 GB).
        order = sorted(cases, key=lambda c: np.nan_to_num(summary["cases"][c[0]]["dsc_mean"], nan=-1.0))
        chosen = order if max_overlays is None else order[: max(0, int(max_overlays))]
        for cid, pred_path, gt_path, image_path in sorted(chosen, key=lambda c: c[0]):
            pred, gt, spacing, image = _load_case(pred_path, gt_path, image_path, max(names), affine_tol_mm)
            dsc = summary["cases"][cid]["dsc_mean"]
            path = output_dir / "overlays" / f"{cid}.png"
            save_overlay_png(
                image, pred, gt, path, title=f"{cid}  mean DSC {dsc:.3f}", class_names=names, spacing=spacing
            )
            overlay_paths[cid] = path
    write_report(rows, summary, output_dir, overlays=overlay_paths)
    return summary
