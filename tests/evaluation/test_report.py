"""Report files (CSV / JSON / Markdown), overlay and training-curve PNGs, and the folder pipeline."""

from __future__ import annotations

import csv
import json
import math
import struct

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from ideal_monai.errors import IdealInputError
from ideal_monai.evaluation.curves import curve_panels
from ideal_monai.evaluation import (
    CONVENTION,
    CSV_COLUMNS,
    compute_case_metrics,
    evaluate_folders,
    save_overlay_png,
    save_training_curves_png,
    select_slices,
    summarize,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _phantom(shape=(64, 56, 10), seed=0):
    """Image (X, Y, Z) with a bright LV disc, a myocardial ring and an RV crescent, plus its labels."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    gt = np.zeros(shape, np.uint8)
    for z in range(2, 9):
        r = 9 - abs(z - 5)  # smaller towards base and apex
        d_lv = np.hypot(x - 34, y - 28)
        d_rv = np.hypot(x - 34 + r + 8, y - 28)
        gt[:, :, z][d_rv < r + 3] = 1
        gt[:, :, z][d_lv < r + 3] = 2
        gt[:, :, z][d_lv < r] = 3
    rng = np.random.default_rng(seed)
    image = 100 + 300 * (gt == 3) + 250 * (gt == 1) + 60 * (gt == 2) + rng.normal(0, 15, shape)
    return image.astype(np.float32), gt


def _rows_with_failure():
    image, gt = _phantom()
    pred = gt.copy()
    pred[pred == 1] = 0  # RV missed entirely: a failure
    pred = np.where((gt == 3) & (np.arange(gt.shape[0])[:, None, None] > 38), 2, pred)  # LV eroded into MYO
    rows = compute_case_metrics(gt, gt, (1.4, 1.4, 8.0), case_id="perfect")
    rows += compute_case_metrics(pred, gt, (1.4, 1.4, 8.0), case_id="flawed")
    return image, gt, pred, rows


def test_write_report_files_parse_and_agree(tmp_path):
    image, gt, pred, rows = _rows_with_failure()
    summary = summarize(rows)
    png = save_overlay_png(image, pred, gt, tmp_path / "overlays" / "flawed.png", title="flawed")
    paths = write_report(rows, summary, tmp_path, overlays={"flawed": png})
    assert {p.name for p in paths.values()} == {"metrics.csv", "metrics.json", "report.md"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no atomic-write leftovers

    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0].keys()) == CSV_COLUMNS
    assert len(table) == 6  # 2 cases x 3 classes
    by_key = {(r["case_id"], r["class"]): r for r in table}
    assert float(by_key["perfect", "LV"]["dsc"]) == pytest.approx(1.0)
    miss = by_key["flawed", "RV"]
    assert miss["status"] == "missing_prediction" and float(miss["dsc"]) == 0.0 and math.isnan(float(miss["hd95"]))

    def reject_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    payload = json.loads(paths["json"].read_text(), parse_constant=reject_nan)
    assert payload["convention"] == CONVENTION
    assert len(payload["rows"]) == 6 and payload["summary"]["overall"]["n_failures"] == 1
    assert payload["summary"]["failures"] == [{"case_id": "flawed", "class": "RV", "status": "missing_prediction"}]
    assert payload["summary"]["classes"]["LV"]["dsc_mean"] == pytest.approx(summary["classes"]["LV"]["dsc_mean"])
    json_rv = [r for r in payload["rows"] if r["case_id"] == "flawed" and r["class"] == "RV"][0]
    assert json_rv["hd95"] is None and json_rv["dsc"] == 0.0
    assert payload["overlays"] == {"flawed": "overlays/flawed.png"}
    assert json_rv["spacing"] == [1.4, 1.4, 8.0]

    md = paths["markdown"].read_text()
    assert "| class | DSC | HD95 (mm) | ASD (mm) |" in md
    lv = summary["classes"]["LV"]
    assert f"| LV | {lv['dsc_mean']:.3f} ± {lv['dsc_std']:.3f} |" in md
    assert "| **overall** |" in md
    assert "**Failures: 1**" in md and "- flawed RV: missing_prediction" in md
    assert "| perfect | 1.000 / 0.00 / 0.00 |" in md  # per-case table row
    assert "**missing**" in md
    assert "![flawed](overlays/flawed.png)" in md and "[png](overlays/flawed.png)" in md
    assert CONVENTION in md


def test_write_report_without_overlays_or_summary(tmp_path):
    _, _, _, rows = _rows_with_failure()
    paths = write_report(rows, None, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "## Overlays" not in md and "overlay |" not in md
    assert "spacing (1, 1, 1)" not in md
    _, gt = _phantom()
    unit_rows = compute_case_metrics(gt, gt, (1.0, 1.0, 1.0), case_id="nohdr")
    unit_md = write_report(rows + unit_rows, None, tmp_path / "unit")["markdown"].read_text()
    assert "1 case(s) have voxel spacing (1, 1, 1)" in unit_md and "distances are in voxels" in unit_md
    assert json.loads(paths["json"].read_text())["summary"]["n_cases"] == 2
    with pytest.raises(IdealInputError):
        write_report([], None, tmp_path / "empty")


def test_select_slices_spreads_over_foreground():
    gt = np.zeros((4, 4, 20), np.uint8)
    gt[1, 1, 5:15] = 3
    zs = select_slices(gt, gt, 3)
    assert len(zs) == 3 and all(5 <= z < 15 for z in zs) and zs == sorted(set(zs))
    assert zs[0] > 5 and zs[-1] < 14  # the tiny end slices are skipped
    assert select_slices(gt, gt, 50) == list(range(5, 15))
    empty = np.zeros_like(gt)
    assert select_slices(empty, gt, 3) == zs  # prediction foreground when GT is empty
    assert select_slices(empty, empty, 3) == [10]


def test_overlay_png_is_valid_and_shows_class_colours(tmp_path):
    image, gt, pred, _ = _rows_with_failure()
    path = save_overlay_png(image, pred, gt, tmp_path / "sub" / "case.png", num_slices=3, title="case",
                            spacing=(1.4, 1.4, 8.0))
    assert path.is_file() and path.stat().st_size > 10_000
    w, h = _png_size(path)
    assert w >= 600 and h >= 600  # three columns, three rows
    rgb = imread(path)[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.45) & (rgb[..., 2] < 0.45)  # LV colour
    blue = (rgb[..., 2] > 0.8) & (rgb[..., 0] < 0.35)  # RV colour
    assert red.sum() > 100 and blue.sum() > 100
    assert [p.name for p in path.parent.iterdir()] == ["case.png"]
    with pytest.raises(IdealInputError):
        save_overlay_png(image[:, :, :5], pred, gt, tmp_path / "bad.png")
    assert save_overlay_png(None, pred, gt, tmp_path / "noimage.png").stat().st_size > 5_000


def test_training_curves_png_one_row_per_stage(tmp_path):
    steps = np.arange(200)
    stages = {
        "pretrain": {"loss": [(int(s), float(np.exp(-s / 50))) for s in steps],
                     "loss_global": [(int(s), 0.0) for s in steps],
                     "lr": [(e, 1e-3 * (1 - e / 5)) for e in range(1, 6)]},
        "finetune": {"loss": [(int(s), float(np.exp(-s / 50) + 0.05 * np.sin(s))) for s in steps],
                     "loss_sup": [(0, float("nan")), (1, 0.5), (2, 0.4)],
                     "lambda": [(int(s), float(s) / 200) for s in steps],
                     "lr": [(e, 0.05 * (1 - e / 5)) for e in range(1, 6)],
                     "val_mean_dice": [(e, 0.1 * e) for e in range(1, 6)]},
    }
    path = save_training_curves_png(stages, tmp_path / "curves.png", title="run")
    w, h = _png_size(path)
    assert path.stat().st_size > 10_000 and w > 400 and h > 400
    with pytest.raises(IdealInputError):
        save_training_curves_png({"a": {"loss": [(0, float("nan"))], "empty": []}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_curve_panels_group_by_unit_and_drop_switched_off_terms():
    stage = {"loss": [(1, 2.0), (2, 1.0)], "loss_global": [(1, 0.0), (2, 0.0)], "loss_dense": [(1, 2.0), (2, 1.0)],
             "lambda": [(1, 0.1), (2, 0.2)], "lr": [(1, 0.01)], "val_mean_dice": [(1, 0.5)],
             "loss_nan": [(1, float("nan"))]}
    panels = {title: (xlabel, sorted(series)) for title, xlabel, series in curve_panels(stage)}
    assert panels == {"loss": ("iteration", ["loss", "loss_dense"]),
                      "consistency weight lambda": ("iteration", ["lambda"]),
                      "learning rate": ("epoch", ["lr"]),
                      "validation": ("epoch", ["val_mean_dice"])}
    assert [t for t, _, _ in curve_panels({"loss": [(1, 1.0)]})] == ["loss"]


def test_evaluate_folders_end_to_end_with_overlays(tmp_path):
    image, gt, pred, _ = _rows_with_failure()
    affine = np.diag([1.4, 1.4, 8.0, 1.0])
    (tmp_path / "pred").mkdir()
    # patient001 is predicted with a failure, patient002 perfectly.
    for pid, p in (("patient001", pred), ("patient002", gt)):
        case_dir = tmp_path / "acdc" / pid
        case_dir.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, affine), str(case_dir / f"{pid}_frame01.nii.gz"))
        nib.save(nib.Nifti1Image(gt, affine), str(case_dir / f"{pid}_frame01_gt.nii.gz"))
        nib.save(nib.Nifti1Image(p, affine), str(tmp_path / "pred" / f"{pid}_frame01.nii.gz"))

    summary = evaluate_folders(tmp_path / "pred", tmp_path / "acdc", tmp_path / "report", max_overlays=1)
    expected = summarize(compute_case_metrics(pred, gt, (1.4, 1.4, 8.0), case_id="patient001_frame01")
                         + compute_case_metrics(gt, gt, (1.4, 1.4, 8.0), case_id="patient002_frame01"))
    assert summary["overall"]["dsc_mean"] == pytest.approx(expected["overall"]["dsc_mean"])
    assert summary["overall"]["n_failures"] == 1
    # With one overlay allowed, the worse case gets it.
    pngs = sorted(p.name for p in (tmp_path / "report" / "overlays").iterdir())
    assert pngs == ["patient001_frame01.png"]
    assert _png_size(tmp_path / "report" / "overlays" / pngs[0])[0] > 400
    md = (tmp_path / "report" / "report.md").read_text()
    assert "![patient001_frame01](overlays/patient001_frame01.png)" in md and "patient002_frame01.png" not in md
