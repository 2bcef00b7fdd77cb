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

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from monai.utils import convert_data_type

from ..errors import IdealInputError
from ..utils.classes import FOREGROUND_NAMES

__all__ = [
    "CONVENTION",
    "DEFAULT_CLASS_NAMES",
    "METRIC_KEYS",
    "STATUSES",
    "FAILURE_STATUSES",
    "as_label_volume",
    "as_spacing",
    "check_class_names",
    "compute_case_metrics",
    "summarize",
]

#: Label value -> class name for the classes that are scored by default: the foreground classes
#: of :mod:`ideal_monai.utils.classes` (background excluded).
DEFAULT_CLASS_NAMES: dict[int, str] = dict(FOREGROUND_NAMES)

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

def as_label_volume(arr, where: str, max_label: int) -> np.ndarray:
    """Validate one label volume (numpy or torch) and return it as an int64 array of shape (X, Y, Z).

    Raises:
        IdealInputError: naming ``where``, when it is not 3D, not integral, or has values outside
            ``0..max_label``.
    """
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


def as_spacing(spacing, where: str) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats (sx, sy, sz) in mm; IdealInputError naming ``where`` otherwise."""
    sp = np.asarray(convert_data_type(spacing, np.ndarray)[0], dtype=np.float64).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise IdealInputError(where, f"spacing must be three positive numbers (sx, sy, sz) in mm, got {spacing!r}")
    return tuple(float(s) for s in sp)


def check_class_names(class_names: Mapping[int, str]) -> dict[int, str]:
    """``class_names`` as ``{int label: str name}``; at least one class, every label value >= 1."""
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
    names = check_class_names(class_names)
    max_label = max(names)
    tag = case_id or "case"
    pred = as_label_volume(pred, f"{tag} prediction", max_label)
    gt = as_label_volume(gt, f"{tag} ground truth", max_label)
    if pred.shape != gt.shape:
        raise IdealInputError(tag, f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    spacing = as_spacing(spacing, f"{tag} spacing")

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
