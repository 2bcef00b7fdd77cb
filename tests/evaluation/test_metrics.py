"""Metrics against hand-computed values, the empty-mask convention, and folder pairing."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from ideal_monai.errors import IdealInputError
from ideal_monai.evaluation import evaluate_folders
from ideal_monai.evaluation.metrics import CONVENTION, compute_case_metrics, summarize

ONE = {1: "RV"}


def _by_class(rows):
    return {r["class"]: r for r in rows}


def _plates():
    """GT: 4x4 plate (x 0..3, y 0..3) at z=2; prediction: its y 0..1 half. One voxel thick, so every
    voxel is a surface voxel. Distances GT->pred: 8 x 0, 4 x sy, 4 x 2*sy; pred->GT: 8 x 0."""
    gt = np.zeros((6, 6, 5), np.int64)
    pred = np.zeros_like(gt)
    gt[0:4, 0:4, 2] = 1
    pred[0:4, 0:2, 2] = 1
    return pred, gt


def test_hand_computed_dsc_hd95_asd_with_anisotropic_spacing():
    pred, gt = _plates()
    (row,) = compute_case_metrics(pred, gt, spacing=(1.0, 1.5, 3.0), class_names=ONE, case_id="c")
    assert row["status"] == "ok" and row["case_id"] == "c" and row["class"] == "RV"
    assert row["dsc"] == pytest.approx(2 * 8 / (16 + 8), abs=1e-6)
    # GT->pred has 16 distances; the 95th percentile (linear) sits between the two largest, both 2*sy.
    assert row["hd95"] == pytest.approx(2 * 1.5)
    # Pooled 24 distances: (4 * sy + 4 * 2 sy) / 24 = sy / 2.
    assert row["asd"] == pytest.approx(1.5 / 2)


def test_one_voxel_apart_along_z_uses_z_spacing_and_doubles_with_spacing():
    gt = np.zeros((5, 5, 6), np.int64)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4, 2] = 1
    pred[1:4, 1:4, 3] = 1  # same square one slice higher: every surface distance is exactly sz
    (r1,) = compute_case_metrics(pred, gt, (0.7, 0.7, 5.0), ONE)
    assert r1["status"] == "ok"  # both present: disjoint masks are scored, not a failure
    assert r1["dsc"] == 0.0
    assert r1["hd95"] == pytest.approx(5.0) and r1["asd"] == pytest.approx(5.0)
    (r2,) = compute_case_metrics(pred, gt, (1.4, 1.4, 10.0), ONE)
    assert r2["hd95"] == pytest.approx(2 * r1["hd95"]) and r2["asd"] == pytest.approx(2 * r1["asd"])
    assert r2["dsc"] == r1["dsc"]


def test_spacing_follows_array_axis_order():
    gt = np.zeros((4, 5, 3), np.int64)
    pred = np.zeros_like(gt)
    gt[1, 1, 1] = 1
    pred[2, 3, 1] = 1  # offset (1, 2, 0) voxels
    (row,) = compute_case_metrics(pred, gt, (1.5, 2.0, 4.0), ONE)
    expected = math.hypot(1 * 1.5, 2 * 2.0)
    assert row["hd95"] == pytest.approx(expected, rel=1e-6)
    assert row["asd"] == pytest.approx(expected, rel=1e-6)


def test_hd95_ignores_a_single_outlier_but_asd_does_not():
    gt = np.zeros((22, 12, 3), np.int64)
    pred = np.zeros_like(gt)
    pred[0:20, 0, 1] = 1
    gt[0:20, 0, 1] = 1
    gt[0, 10, 1] = 1  # one stray GT voxel 10 voxels (20 mm) away
    (row,) = compute_case_metrics(pred, gt, (1.0, 2.0, 1.0), ONE)
    # GT->pred: 20 zeros and one 20; the 95th percentile of 21 values is the 20th smallest: 0.
    assert row["hd95"] == pytest.approx(0.0, abs=1e-6)
    assert row["asd"] == pytest.approx(20.0 / 41)
    assert row["dsc"] == pytest.approx(2 * 20 / 41)


def test_dsc_of_known_overlap_in_3d():
    gt = np.zeros((10, 8, 8), np.int64)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 3
    pred[4:8, 2:6, 2:6] = 3  # overlap 2x4x4 = 32 of 64 + 64
    rows = _by_class(compute_case_metrics(pred, gt, (1, 1, 1)))
    assert rows["LV"]["dsc"] == pytest.approx(0.5)
    assert [r["status"] for r in rows.values()] == ["both_empty", "both_empty", "ok"]


def _reference(pred_mask, gt_mask, spacing):
    """Independent HD95/ASD: erosion surfaces, brute-force distances, numpy percentiles."""
    def surface_coords(m):
        edge = m ^ ndimage.binary_erosion(m)
        return np.argwhere(edge) * np.asarray(spacing)

    d = cdist(surface_coords(pred_mask), surface_coords(gt_mask))
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return hd95, np.concatenate([d_pg, d_gp]).mean()


def test_matches_brute_force_reference_on_random_blobs():
    rng = np.random.default_rng(0)
    spacing = (1.25, 0.8, 6.0)
    shape = (20, 18, 7)
    gt = (ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5).astype(np.int64) * 2
    pred = (ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5).astype(np.int64) * 2
    assert (gt > 0).sum() > 50 and (pred > 0).sum() > 50
    row = _by_class(compute_case_metrics(pred, gt, spacing))["MYO"]
    hd95, asd = _reference(pred > 0, gt > 0, spacing)
    assert row["status"] == "ok"
    assert row["hd95"] == pytest.approx(hd95, rel=1e-4)
    assert row["asd"] == pytest.approx(asd, rel=1e-4)
    inter = ((pred > 0) & (gt > 0)).sum()
    assert row["dsc"] == pytest.approx(2 * inter / ((pred > 0).sum() + (gt > 0).sum()), rel=1e-5)


def test_empty_mask_statuses_and_values():
    gt = np.zeros((6, 6, 4), np.int64)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1] = 1  # RV in GT only
    pred[3:5, 3:5, 2] = 2  # MYO in prediction only
    # LV absent from both
    rows = _by_class(compute_case_metrics(pred, gt, (1, 1, 1), case_id="p1"))
    rv, myo, lv = rows["RV"], rows["MYO"], rows["LV"]
    assert rv["status"] == "missing_prediction" and rv["dsc"] == 0.0
    assert math.isnan(rv["hd95"]) and math.isnan(rv["asd"])  # never 0 (nor MONAI's inf)
    assert myo["status"] == "false_positive" and myo["dsc"] == 0.0
    assert math.isnan(myo["hd95"]) and math.isnan(myo["asd"])
    assert lv["status"] == "both_empty"
    assert math.isnan(lv["dsc"]) and math.isnan(lv["hd95"]) and math.isnan(lv["asd"])


def test_summarize_counts_failures_and_skips_nan_distances():
    pred, gt = _plates()
    ok_rows = compute_case_metrics(pred, gt, (1.0, 1.5, 3.0), ONE, case_id="good")
    missing = compute_case_metrics(np.zeros_like(gt), gt, (1.0, 1.5, 3.0), ONE, case_id="bad")
    empty = compute_case_metrics(np.zeros_like(gt), np.zeros_like(gt), (1, 1, 1), ONE, case_id="none")
    s = summarize(ok_rows + missing + empty)
    rv = s["classes"]["RV"]
    assert s["n_cases"] == 3 and s["convention"] == CONVENTION
    assert rv["n_failures"] == 1 and s["overall"]["n_failures"] == 1
    assert rv["status_counts"] == {"ok": 1, "missing_prediction": 1, "false_positive": 0, "both_empty": 1}
    assert s["failures"] == [{"case_id": "bad", "class": "RV", "status": "missing_prediction"}]
    # DSC mean counts the failure's 0 and skips the both-empty NaN: (2/3 + 0) / 2.
    assert rv["dsc_mean"] == pytest.approx(1 / 3, abs=1e-6) and rv["dsc_n"] == 2
    # Distances come from the ok case alone: a 0 substituted for the failure would halve them.
    assert rv["hd95_mean"] == pytest.approx(3.0) and rv["hd95_n"] == 1
    assert rv["asd_mean"] == pytest.approx(0.75)
    assert s["cases"]["bad"]["n_failures"] == 1 and math.isnan(s["cases"]["bad"]["hd95_mean"])


def test_summarize_overall_is_mean_over_classes_and_cases():
    rows = [
        {"case_id": "a", "class": "RV", "dsc": 0.8, "hd95": 2.0, "asd": 1.0, "status": "ok"},
        {"case_id": "a", "class": "LV", "dsc": 0.6, "hd95": 4.0, "asd": 3.0, "status": "ok"},
        {"case_id": "b", "class": "RV", "dsc": 0.4, "hd95": 6.0, "asd": 2.0, "status": "ok"},
        {"case_id": "b", "class": "LV", "dsc": 0.0, "hd95": float("nan"), "asd": float("nan"),
         "status": "false_positive"},
    ]
    s = summarize(rows)
    assert s["classes"]["RV"]["dsc_mean"] == pytest.approx(0.6)
    assert s["classes"]["LV"]["dsc_mean"] == pytest.approx(0.3)
    assert s["overall"]["dsc_mean"] == pytest.approx(0.45)
    assert s["overall"]["hd95_mean"] == pytest.approx(4.0)
    assert s["overall"]["n_failures"] == 1 and s["failures"][0]["status"] == "false_positive"
    with pytest.raises(IdealInputError):
        summarize([])


def test_torch_and_float_inputs_match_numpy():
    pred, gt = _plates()
    ref = compute_case_metrics(pred, gt, (1.0, 1.5, 3.0), ONE)
    assert compute_case_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.tensor([1.0, 1.5, 3.0]), ONE) == ref
    assert compute_case_metrics(pred.astype(np.float32), gt.astype(np.float64), (1.0, 1.5, 3.0), ONE) == ref


@pytest.mark.parametrize(
    "pred, gt, spacing, fragment",
    [
        (np.zeros((4, 4, 3), int), np.zeros((4, 4, 2), int), (1, 1, 1), "differs from ground-truth shape"),
        (np.full((4, 4, 3), 4), np.zeros((4, 4, 3), int), (1, 1, 1), "outside 0..3: [4]"),
        (np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.5), (1, 1, 1), "non-integer"),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), (1, 1, 1), "3D label volume"),
        (np.zeros((4, 4, 3), int), np.zeros((4, 4, 3), int), (1, 0, 1), "spacing"),
        (np.zeros((4, 4, 3), int), np.zeros((4, 4, 3), int), (1, 1), "spacing"),
    ],
)
def test_bad_input_raises_ideal_input_error(pred, gt, spacing, fragment):
    with pytest.raises(IdealInputError, match="case7") as info:
        compute_case_metrics(pred, gt, spacing, case_id="case7")
    assert fragment in str(info.value)


# ------------------------------------------------------------------------------- folders


def _save(path, arr, zooms=(1.5, 1.5, 5.0), affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.asarray(arr), affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))


def _case_arrays(shift=0):
    gt = np.zeros((8, 8, 4), np.uint8)
    gt[2:6, 2:6, 1] = 3
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 1 + shift] = 3
    return pred, gt


def test_evaluate_folders_acdc_layout_pairs_gt_and_takes_spacing_from_gt(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "acdc"
    for i, shift in ((1, 0), (2, 1)):
        pred, gt = _case_arrays(shift)
        cid = f"patient00{i}_frame01"
        _save(gt_dir / f"patient00{i}" / f"{cid}_gt.nii.gz", gt)
        _save(gt_dir / f"patient00{i}" / f"{cid}.nii.gz", np.random.default_rng(i).random(gt.shape).astype(np.float32))
        # MONAI SaveImage's default layout: <case>/<case>_seg.nii.gz
        _save(pred_dir / cid / f"{cid}_seg.nii.gz" if i == 2 else pred_dir / f"{cid}.nii.gz", pred)
    s = evaluate_folders(pred_dir, gt_dir, tmp_path / "out", overlays=False)
    assert list(s["cases"]) == ["patient001_frame01", "patient002_frame01"]
    assert s["cases"]["patient001_frame01"]["dsc_mean"] == pytest.approx(1.0)
    # patient002: LV one slice off, so every surface distance is the GT's z zoom (5 mm).
    lv = [r for r in json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
          if r["case_id"] == "patient002_frame01" and r["class"] == "LV"][0]
    assert lv["hd95"] == pytest.approx(5.0) and lv["asd"] == pytest.approx(5.0)
    assert s["classes"]["RV"]["status_counts"]["both_empty"] == 2


def test_evaluate_folders_labels_folder_and_case_list(tmp_path):
    pred, gt = _case_arrays(0)
    _save(tmp_path / "labels" / "c1.nii.gz", gt)
    _save(tmp_path / "pred" / "c1.nii.gz", pred)
    s1 = evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "o1", overlays=False)
    assert s1["n_cases"] == 1 and s1["cases"]["c1"]["dsc_mean"] == pytest.approx(1.0)
    cases = [("my_case", tmp_path / "pred" / "c1.nii.gz", tmp_path / "labels" / "c1.nii.gz")]
    s2 = evaluate_folders(None, cases, tmp_path / "o2", overlays=False)
    assert list(s2["cases"]) == ["my_case"]
    assert (tmp_path / "o2" / "metrics.csv").is_file()


def test_evaluate_folders_rejects_mismatches(tmp_path):
    pred, gt = _case_arrays(0)
    _save(tmp_path / "gt" / "a_gt.nii.gz", gt)
    _save(tmp_path / "pred" / "a.nii.gz", pred[:, :, :3])  # wrong shape
    with pytest.raises(IdealInputError, match=r"pred/a\.nii\.gz.*differs from ground truth"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", overlays=False)

    shifted = np.diag([1.5, 1.5, 5.0, 1.0])
    shifted[0, 3] = 1.5  # one voxel along x
    _save(tmp_path / "pred" / "a.nii.gz", pred, affine=shifted)
    with pytest.raises(IdealInputError, match=r"pred/a\.nii\.gz.*affine differs"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", overlays=False)

    _save(tmp_path / "pred" / "a.nii.gz", pred)
    _save(tmp_path / "pred" / "b.nii.gz", pred)  # no ground truth for b
    with pytest.raises(IdealInputError, match="no ground truth.*: b"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", overlays=False)
    assert not (tmp_path / "out" / "metrics.csv").exists()
