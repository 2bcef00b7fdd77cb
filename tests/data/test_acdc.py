"""The real ACDC development data in ``../shared/data/acdc`` (skipped when that folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ideal_monai.data import discover_cases, load_volume, split_dataset
from ideal_monai.data.io import check_same_grid, voxel_spacing
from ideal_monai.function.patients import read_info_cfg

ACDC = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "acdc").resolve()

pytestmark = [
    pytest.mark.acdc,
    pytest.mark.skipif(not (ACDC / "splits.json").is_file(), reason=f"ACDC data not found at {ACDC}"),
]


def patients(cases):
    return {c["patient_id"] for c in cases}


def test_discovery_finds_80_labeled_patients():
    cases = discover_cases(ACDC)
    assert len(patients(cases)) == 80
    assert len(cases) == 160
    assert all("label" in c and c["label"].name == f"{c['case_id']}_gt.nii.gz" for c in cases)
    # The organisers' frame numbers: ED and ES of Info.cfg, e.g. frame01 and frame12.
    for pid in patients(cases):
        info = read_info_cfg(ACDC / pid / "Info.cfg")
        frames = sorted(c["case_id"] for c in cases if c["patient_id"] == pid)
        assert frames == sorted(f"{pid}_frame{info[k]:02d}" for k in ("ED", "ES"))


@pytest.mark.parametrize("key, n_labeled", [("labeled_3", 3), ("labeled_7", 7)])
def test_semi_supervised_split(key, n_labeled):
    spec = json.loads((ACDC / "splits.json").read_text())
    split = split_dataset(ACDC, splits_file=ACDC / "splits.json", labeled_key=key)
    assert patients(split["labeled"]) == set(spec[key]) and len(patients(split["labeled"])) == n_labeled
    assert len(split["labeled"]) == 2 * n_labeled
    assert patients(split["val"]) == set(spec["val"]) and len(split["val"]) == 20
    assert patients(split["unlabeled"]) == set(spec["train"]) - set(spec[key])
    assert len(patients(split["unlabeled"])) == 70 - n_labeled and len(split["unlabeled"]) == 2 * (70 - n_labeled)
    assert all("label" not in c for c in split["unlabeled"])
    train = patients(split["labeled"]) | patients(split["unlabeled"])
    assert not train & patients(split["val"])  # no validation patient in either training set
    assert not patients(split["labeled"]) & patients(split["unlabeled"])


def test_one_real_case_loads():
    case = next(c for c in discover_cases(ACDC) if c["case_id"] == "patient002_frame01")
    image, label = load_volume(case["image"]), load_volume(case["label"], is_label=True)
    check_same_grid(image, label)
    assert image.ndim == 4 and 6 <= image.shape[3] <= 18
    assert set(np.unique(label.numpy())) == {0, 1, 2, 3}


def test_real_spacing_is_read_from_pixdim_despite_the_unit_sform(caplog):
    """The release's sform says 1 x 1 x 1 mm; the spacing is pixdim's, as SimpleITK reads it, and the log says so."""
    import logging

    import SimpleITK as sitk

    path = next((ACDC / "patient003").glob("patient003_frame*[0-9].nii.gz"))  # a file no other test reads
    with caplog.at_level(logging.INFO, logger="ideal_monai.data.io"):
        image = load_volume(path)
    assert voxel_spacing(image) == pytest.approx(sitk.ReadImage(str(path)).GetSpacing())
    assert voxel_spacing(image)[2] > 4.0  # real slice spacing (5-10 mm), not the sform's 1
    assert any("disagrees with pixdim" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
