"""Clinical values: BSA, indexed values, maximal LV wall thickness (analytic phantoms), reference flags, and
the function report carrying them (from Info.cfg, DICOM tags or the command line)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.errors import IdealInputError
from ideal_monai.function import run_function
from ideal_monai.function.clinical import body_surface_area, indexed_values, max_wall_thickness_mm, patient_body
from ideal_monai.function.reference import load_reference_ranges, outside_reference


def test_mosteller_body_surface_area():
    assert body_surface_area(180, 80) == pytest.approx(2.0)
    assert body_surface_area(160, 70) == pytest.approx(np.sqrt(160 * 70 / 3600))


def test_body_sources_in_order_given_then_info_cfg_then_dicom():
    info, dicom = {"Height": 170.0, "Weight": 65.0}, {"patient_size_m": 1.80, "patient_weight_kg": 90.0, "patient_sex": "F"}
    assert patient_body(info, dicom)["height_cm"] == 170.0 and patient_body(info, dicom)["sex"] == "F"
    body = patient_body({}, dicom)
    assert (body["height_cm"], body["weight_kg"], body["body_source"]) == (pytest.approx(180.0), 90.0, "DICOM")
    given = patient_body(info, dicom, height_cm=150, weight_kg=50, sex="male")
    assert (given["height_cm"], given["weight_kg"], given["sex"], given["body_source"]) == (150, 50, "M", "given")
    assert patient_body({"Height": 170.0}, {})["bsa_m2"] is None  # no weight: no BSA, no indexed values


def test_implausible_height_names_its_source():
    with pytest.raises(IdealInputError, match=r"height \(cm\) 1.75 is outside .* wrong unit") as info:
        patient_body({}, {}, height_cm=1.75, weight_kg=70, where="patient007")
    assert info.value.where == "patient007 (given)"


def test_indexed_values():
    values = indexed_values({"LV_EDV": 150.0, "LV_ESV": 60.0, "LV_SV": 90.0, "RV_EDV": None, "MYO_mass_ED": 120.0}, 2.0)
    assert values["LV_EDVi"] == 75.0 and values["LV_SVi"] == 45.0 and values["MYO_mass_EDi"] == 60.0
    assert values["RV_EDVi"] is None
    assert all(v is None for v in indexed_values({"LV_EDV": 150.0}, None).values())


def _ring(shape, spacing, centre_mm, r_cavity, r_epi, offset_mm=(0.0, 0.0)):
    """LV cavity disk of radius r_cavity and myocardium to an (optionally off-centre) epicardial circle (mm)."""
    x = (np.arange(shape[0]) + 0.5) * spacing[0] - centre_mm[0]
    y = (np.arange(shape[1]) + 0.5) * spacing[1] - centre_mm[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    label = np.zeros(shape[:2], np.uint8)
    label[np.hypot(xx - offset_mm[0], yy - offset_mm[1]) < r_epi] = 2
    label[np.hypot(xx, yy) < r_cavity] = 3
    return label


@pytest.mark.parametrize("spacing", [(1.25, 1.25), (0.8, 1.6)])
def test_wall_thickness_of_an_analytic_ring(spacing):
    shape = (int(120 / spacing[0]), int(120 / spacing[1]))
    uniform = _ring(shape, spacing, (60, 60), 20.0, 30.0)  # 10 mm everywhere
    thick = _ring(shape, spacing, (60, 60), 20.0, 32.0, offset_mm=(6.0, 0.0))  # 18 mm on one side, 6 mm opposite
    label = np.stack([uniform, thick], axis=-1)
    out = max_wall_thickness_mm(label, (*spacing, 8.0))
    assert out["slice"] == 1 and out["slices_measured"] == 2
    assert abs(out["max_wall_thickness_mm"] - 18.0) <= max(spacing)
    assert abs(max_wall_thickness_mm(uniform[..., None], (*spacing, 8.0))["max_wall_thickness_mm"] - 10.0) <= max(spacing)


def test_open_basal_ring_is_not_measured():
    label = _ring((96, 96), (1.25, 1.25), (60, 60), 20.0, 30.0)
    label[48:, 40:56][label[48:, 40:56] == 2] = 0  # the ring opens towards the outflow tract
    out = max_wall_thickness_mm(label[..., None], (1.25, 1.25, 8.0))
    assert out == {"max_wall_thickness_mm": None, "slice": None, "slices_measured": 0}


def test_guideline_flags_and_a_site_table_by_sex(tmp_path):
    assert outside_reference({"LV_EF": 38.0, "LV_max_wall_mm": 16.2}, None) == [
        "LV_EF 38.0 < 50 (ESC 2021 heart failure guidelines (LVEF < 50 %: reduced or mildly reduced))",
        "LV_max_wall_mm 16.2 >= 15 (ESC 2014 hypertrophic cardiomyopathy guidelines (adult wall thickness >= 15 mm))"]
    assert outside_reference({"LV_EF": 62.0, "LV_max_wall_mm": 14.9}, "F") == []
    table = tmp_path / "ranges.json"
    table.write_text(json.dumps([{"name": "LV_EDVi", "sex": "M", "low": 60, "high": 110, "source": "site M"},
                                 {"name": "LV_EDVi", "sex": "F", "low": 55, "high": 95, "source": "site F"}]))
    ranges = load_reference_ranges(table)
    assert outside_reference({"LV_EDVi": 100.0}, "F", ranges) == ["LV_EDVi 100.0 > 95 (F, site F)"]
    assert outside_reference({"LV_EDVi": 100.0}, "M", ranges) == []
    assert outside_reference({"LV_EDVi": 100.0}, None, ranges) == []  # inside one sex's range: no flag
    assert outside_reference({"LV_EDVi": 120.0}, None, ranges) == ["LV_EDVi 120.0 > 110 (both sexes; site M)"]
    table.write_text('[{"name": "LV_EDVi", "sex": "X", "low": 1}]')
    with pytest.raises(IdealInputError, match="range 0 is not") as info:
        load_reference_ranges(table)
    assert info.value.where == str(table)


@pytest.fixture(scope="module")
def acdc_like(tmp_path_factory):
    """2 phantom patients with ED/ES files and an ACDC Info.cfg (ED 1, ES 2, height and weight)."""
    root = tmp_path_factory.mktemp("clinical")
    write_synthetic_dataset(root, num_cases=2, seed=4)
    for i, folder in enumerate(sorted(root.iterdir())):
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 2\nGroup: NOR\nHeight: {170 + 10 * i}.0\nNbFrame: 2\nWeight: {70 + 5 * i}.0\n")
    return root


def test_report_has_bsa_indexed_values_wall_thickness_and_their_agreement(acdc_like, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for gt in acdc_like.rglob("*_gt.nii.gz"):
        shutil.copy(gt, pred / gt.name.replace("_gt", ""))
    report = run_function(str(acdc_like), str(tmp_path / "out"), prediction_dir=str(pred))
    first = report["patients"][0]
    assert first["body"]["bsa_m2"] == pytest.approx(body_surface_area(170, 70)) and first["body"]["body_source"] == "Info.cfg"
    auto = first["auto"]
    assert auto["indexed"]["LV_EDVi"] == pytest.approx(auto["indices"]["LV_EDV"] / first["body"]["bsa_m2"])
    assert auto["indexed"]["MYO_mass_EDi"] == pytest.approx(auto["indices"]["MYO_mass_ED"] / first["body"]["bsa_m2"])
    assert 3.0 < auto["wall"]["max_wall_thickness_mm"] < 25.0
    assert report["agreement"]["LV_EDVi"]["n"] == 2 and report["agreement"]["LV_EDVi"]["mae"] == pytest.approx(0.0)
    assert report["agreement"]["LV_max_wall_mm"]["mae"] == pytest.approx(0.0)
    rows = list(csv.DictReader((tmp_path / "out" / "function.csv").open()))
    assert {"bsa_m2", "LV_EDVi", "RV_ESVi", "MYO_mass_EDi", "LV_max_wall_mm", "outside_reference", "sex"} <= set(rows[0])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Clinical values" in md and "LV_EDVi (mL/m2)" in md and "never a diagnosis" in md


def test_height_and_weight_given_for_one_patient_win_and_are_refused_for_several(acdc_like, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for gt in acdc_like.rglob("*_gt.nii.gz"):
        shutil.copy(gt, pred / gt.name.replace("_gt", ""))
    one = tmp_path / "one"
    shutil.copytree(acdc_like / "patient001", one / "patient001")
    report = run_function(str(one), str(tmp_path / "out"), prediction_dir=str(pred), height_cm=190, weight_kg=100, sex="F")
    body = report["patients"][0]["body"]
    assert (body["height_cm"], body["weight_kg"], body["sex"], body["body_source"]) == (190, 100, "F", "given")
    with pytest.raises(IdealInputError, match="describes one patient, but .* holds 2"):
        run_function(str(acdc_like), str(tmp_path / "out2"), prediction_dir=str(pred), height_cm=190)
    with pytest.raises(IdealInputError, match="sex: expected M or F, got 'X'"):
        run_function(str(one), str(tmp_path / "out2"), prediction_dir=str(pred), sex="X")
    assert not (tmp_path / "out2").exists()
