"""The ``function`` workflow on phantoms with known labels (no network: ``prediction_dir`` holds labels)."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.function import read_info_cfg, run_function


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """3 phantom patients with ED/ES files, a 6-frame cine and its labels (``_4d_gt``)."""
    root = tmp_path_factory.mktemp("function_phantoms")
    write_synthetic_dataset(root, num_cases=3, seed=2, with_cine=True, num_frames=6)
    return root


def _predictions_from_gt(data, out, erode_patient=None):
    """Prediction folder ``<case_id>.nii.gz`` = the ground truth (one patient's LV shrunk at ES)."""
    out.mkdir(parents=True, exist_ok=True)
    for gt in data.rglob("*_gt.nii.gz"):
        target = out / gt.name.replace("_gt.nii.gz", ".nii.gz")
        if erode_patient and gt.name == f"{erode_patient}_frame02_gt.nii.gz":
            img = nib.load(gt)
            lab = np.asarray(img.dataobj).copy()
            lab[(lab == 3) & (np.roll(lab, 2, axis=0) != 3)] = 2  # thicker wall, smaller cavity
            nib.save(nib.Nifti1Image(lab, img.affine, img.header), target)
        else:
            shutil.copy(gt, target)
    return out


def _only_frames(data, dest):
    """ED/ES files (and their _gt) without the cine."""
    for f in data.rglob("*_frame*.nii.gz"):
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / f.parent.name / f.name)
    return dest


def test_ed_es_patients_with_reference_give_indices_and_agreement(phantoms, tmp_path):
    data = _only_frames(phantoms, tmp_path / "data")
    pred = _predictions_from_gt(data, tmp_path / "pred", erode_patient="patient002")
    report = run_function(str(data), str(tmp_path / "out"), prediction_dir=str(pred))
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"function.csv", "function.json", "report.md", "bland_altman.png",
                                               "scatter.png"}
    rows = list(csv.DictReader((out / "function.csv").open()))
    assert [r["source"] for r in rows] == ["auto", "reference"] * 3
    for r in rows:
        assert r["unit"] == "mL" and r["input"] == "ED + ES volumes"
        assert (r["ed_frame"], r["es_frame"]) == ("1", "2")
        assert 20 < float(r["LV_EF"]) < 90 and float(r["MYO_mass_ED"]) == pytest.approx(1.05 * float(r["MYO_volume_ED"]))
    ag = report["agreement"]
    assert ag["LV_EDV"]["n"] == 3 and ag["LV_EDV"]["bias"] == pytest.approx(0.0)  # ED predictions are the GT
    assert ag["LV_ESV"]["bias"] < 0 and ag["LV_EF"]["bias"] > 0  # the shrunk ES cavity of patient002
    md = (out / "report.md").read_text()
    assert "## Agreement with the reference labels" in md and "LV_EF (%)" in md and "VOXEL UNITS" not in md
    for png in ("bland_altman.png", "scatter.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_4d_cine_gives_curves_and_ed_es_at_the_extremes(phantoms, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for gt in phantoms.rglob("*_4d_gt.nii.gz"):
        shutil.copy(gt, pred / gt.name.replace("_gt", ""))
    for f in phantoms.rglob("*_frame*.nii.gz"):  # the ED/ES files are ignored when a cine is there
        shutil.copy(f, pred / f.name.replace("_gt", ""))
    report = run_function(str(phantoms), str(tmp_path / "out"), prediction_dir=str(pred))
    for entry in report["patients"]:
        assert entry["input"] == "4D cine" and entry["status"] == "ok"
        auto = entry["auto"]
        assert (auto["ed_frame"], auto["es_frame"]) == (0, 3)
        assert len(auto["curves"]["LV"]) == 6
        assert entry["reference"]["indices"] == auto["indices"]  # the _4d_gt beside the cine is the reference
        assert (tmp_path / "out" / entry["curve_png"]).read_bytes()[:4] == b"\x89PNG"
    fixed = run_function(str(phantoms), str(tmp_path / "out2"), prediction_dir=str(pred), ed_frame=1, es_frame=4)
    assert (fixed["patients"][0]["auto"]["ed_frame"], fixed["patients"][0]["auto"]["es_frame"]) == (1, 4)


def test_unit_spacing_is_reported_in_voxel_units(tmp_path):
    folder = tmp_path / "data" / "patient001"
    folder.mkdir(parents=True)
    lab = np.zeros((20, 20, 6), np.uint8)
    lab[5:15, 5:15, 1:5] = 2
    lab[7:13, 7:13, 1:5] = 3
    lab[2:5, 5:15, 1:5] = 1
    es = lab.copy()
    es[8:12, 8:12, 1:5] = 3
    es[7:13, 7:13, 1:5][es[7:13, 7:13, 1:5] == 3] = 3
    es[(lab == 3) & ~np.pad(np.ones((4, 4, 4), bool), ((8, 8), (8, 8), (1, 1)))] = 2
    for n, arr in ((1, lab), (2, es)):
        nib.save(nib.Nifti1Image(arr.astype(np.int16) * 100, np.eye(4)), folder / f"patient001_frame0{n}.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), folder / f"patient001_frame0{n}_gt.nii.gz")
    pred = _predictions_from_gt(tmp_path / "data", tmp_path / "pred")
    report = run_function(str(tmp_path / "data"), str(tmp_path / "out"), prediction_dir=str(pred))
    entry = report["patients"][0]
    assert entry["unit"] == "voxels" and entry["voxel_mm3"] is None
    assert entry["auto"]["indices"]["LV_EDV"] == 6 * 6 * 4 and entry["auto"]["indices"]["LV_ESV"] == 4 * 4 * 4
    assert entry["auto"]["indices"]["LV_EF"] == pytest.approx(100 * (144 - 64) / 144)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "VOXEL UNITS" in md and "(mL)" not in md and "LV_EDV (voxels)" in md


def test_info_cfg_fixes_the_frames(phantoms, tmp_path):
    data = _only_frames(phantoms, tmp_path / "data")
    (data / "patient001" / "Info.cfg").write_text("ED: 2\nES: 1\nGroup: NOR\n")  # deliberately swapped
    assert read_info_cfg(data / "patient001" / "Info.cfg") == {"ED": 2, "ES": 1, "Group": "NOR"}
    pred = _predictions_from_gt(data, tmp_path / "pred")
    report = run_function(str(data), str(tmp_path / "out"), prediction_dir=str(pred))
    p1 = report["patients"][0]["auto"]
    assert (p1["ed_frame"], p1["es_frame"]) == (2, 1)
    assert any("not larger at ED" in f or "not larger than at ES" in f for f in p1["qc"])
    assert p1["indices"]["LV_EF"] < 0  # what the Info.cfg says is reported, and flagged


def _bad(phantoms, tmp_path, breaker):
    data = _only_frames(phantoms, tmp_path / "data")
    pred = _predictions_from_gt(data, tmp_path / "pred")
    breaker(data, pred)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_function(str(data), str(out), prediction_dir=str(pred))
    assert err.value.code == 1
    report = json.loads((out / "function.json").read_text())
    bad = [e for e in report["patients"] if e["status"] != "ok"]
    assert len(bad) == 1 and len(report["patients"]) == 3  # the others are still reported
    assert "\n" not in bad[0]["reason"]
    assert "not computed" in (out / "report.md").read_text()
    return bad[0]["reason"]


def test_only_es_is_not_computed_with_the_reason(phantoms, tmp_path):
    def breaker(data, pred):
        (data / "patient002" / "Info.cfg").write_text("ED: 1\nES: 2\n")
        for f in (data / "patient002").glob("patient002_frame01*"):
            f.unlink()
    reason = _bad(phantoms, tmp_path, breaker)
    assert "Info.cfg" in reason and "ED frame 1" in reason


def test_ed_and_es_on_different_grids_name_the_file(phantoms, tmp_path):
    def breaker(data, pred):
        for folder in (data / "patient003", pred):
            for f in folder.glob("patient003_frame02*.nii.gz"):
                img = nib.load(f)
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-4], img.affine, img.header), f)
    reason = _bad(phantoms, tmp_path, breaker)
    assert "patient003_frame02" in reason and "grid" in reason


def test_label_grid_differing_from_its_image_names_the_label(phantoms, tmp_path):
    def breaker(data, pred):
        f = pred / "patient001_frame01.nii.gz"
        img = nib.load(f)
        affine = img.affine.copy()
        affine[0, 3] += 5.0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), f)
    reason = _bad(phantoms, tmp_path, breaker)
    assert "patient001_frame01.nii.gz" in reason and "affine" in reason


def test_nan_spacing_names_the_file(phantoms, tmp_path):
    def breaker(data, pred):
        for folder in (data / "patient001", pred):
            for f in folder.glob("patient001_frame0*.nii.gz"):
                img = nib.load(f)
                out = nib.Nifti1Image(np.asarray(img.dataobj), None)
                out.header["pixdim"][1:4] = [1.5, 1.5, np.nan]  # no qform/sform: readers use pixdim
                out.header.set_qform(None, code=0)
                out.header.set_sform(None, code=0)
                nib.save(out, f)
    reason = _bad(phantoms, tmp_path, breaker)
    assert "patient001_frame01" in reason and "spacing must be finite" in reason


def test_4d_file_with_one_frame_is_not_computed(tmp_path):
    folder = tmp_path / "data" / "patient001"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4, 1), np.int16), np.eye(4)), folder / "patient001_4d.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        run_function(str(tmp_path / "data"), str(out), prediction_dir=str(tmp_path / "data"))
    entry = json.loads((out / "function.json").read_text())["patients"][0]
    assert entry["status"] == "not computed" and "1 frame" in entry["reason"] and "patient001_4d" in entry["reason"]


def test_segments_what_is_missing_and_reports_a_file_inference_could_not_read(phantoms, tmp_path):
    """Without prediction_dir the bundle's inference runs (random small network here); an image that
    inference refuses, or that cannot be read at all, fails its patient only; the report is still written."""
    import torch

    from ideal_monai.networks import DualDecoderUNet

    features = [4, 8, 8, 8, 8]
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=features).state_dict(), weights)
    data = _only_frames(phantoms, tmp_path / "data")
    bad = data / "patient002" / "patient002_frame02.nii.gz"  # a valid header, NaN intensities: inference fails
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine), bad)
    (data / "patient003" / "patient003_frame01.nii.gz").write_bytes(b"not a nifti file")  # not even readable
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        run_function(str(data), str(out), inference_overrides={"model_path": str(weights), "features": features,
                                                                 "patch_size": [64, 64], "target_spacing": [4.0, 4.0],
                                                                 "precision": "fp32"})
    assert sorted(p.name for p in (out / "segmentations").iterdir()) == [
        "patient001_frame01.nii.gz", "patient001_frame02.nii.gz", "patient002_frame01.nii.gz"]
    report = json.loads((out / "function.json").read_text())
    status = {e["patient_id"]: e["status"] for e in report["patients"]}
    assert status == {"patient001": "ok", "patient002": "not computed", "patient003": "not computed"}
    assert "patient002_frame02" in report["patients"][1]["reason"]
    assert "patient003_frame01" in report["patients"][2]["reason"]
