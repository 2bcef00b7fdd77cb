"""discover_cases: every supported dataset layout, and the folder errors users hit."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ideal_monai.data import discover_cases, load_volume
from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.errors import IdealInputError


def write(path, shape=(6, 5, 3), label=False, seed=0):
    """A tiny NIfTI image (or label) at ``path``, parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 4, size=shape).astype(np.uint8) if label else rng.random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def by_id(cases):
    return {c["case_id"]: c for c in cases}


def test_single_file(tmp_path):
    path = write(tmp_path / "scan 1.nii.gz")
    assert discover_cases(path) == [{"image": path, "case_id": "scan 1", "patient_id": "scan 1"}]


def test_single_non_image_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(IdealInputError, match="not a supported image"):
        discover_cases(tmp_path / "notes.txt")


def test_acdc_layout(synthetic_dataset):
    cases = by_id(discover_cases(synthetic_dataset))
    assert len(cases) == 12  # 6 patients x (ED, ES)
    case = cases["patient004_frame02"]
    assert case["patient_id"] == "patient004"
    assert case["image"] == synthetic_dataset / "patient004" / "patient004_frame02.nii.gz"
    assert case["label"] == synthetic_dataset / "patient004" / "patient004_frame02_gt.nii.gz"
    assert "frame" not in case
    assert {c["patient_id"] for c in cases.values()} == {f"patient{i:03d}" for i in range(1, 7)}
    assert all("label" in c for c in cases.values())


def test_acdc_cine_expanded_to_frames(tmp_path):
    write_synthetic_dataset(tmp_path, num_cases=1, seed=3, with_cine=True, num_frames=4)
    cases = by_id(discover_cases(tmp_path))
    cine = [c for c in cases.values() if "frame" in c]
    assert [c["case_id"] for c in cine] == [f"patient001_4d_t{t:02d}" for t in range(4)]
    assert all(c["patient_id"] == "patient001" and "label" not in c for c in cine)
    assert [c["frame"] for c in cine] == [0, 1, 2, 3]
    # the frame entry selects that frame of the 4D file
    arr = np.asarray(nib.load(str(cine[2]["image"])).dataobj)
    np.testing.assert_array_equal(load_volume(cine[2]["image"], frame=2)[0].numpy(), arr[..., 2])

    no_cine = discover_cases(tmp_path, include_cine=False)
    assert sorted(c["case_id"] for c in no_cine) == ["patient001_frame01", "patient001_frame02"]


def test_file_named_as_cine_but_3d(tmp_path):
    write(tmp_path / "patient001" / "patient001_4d.nii.gz")
    with pytest.raises(IdealInputError, match="4D cine") as excinfo:
        discover_cases(tmp_path)
    assert "patient001_4d.nii.gz" in str(excinfo.value)


def test_plain_folder(tmp_path):
    write(tmp_path / "a.nii.gz")
    write(tmp_path / "a_gt.nii.gz", label=True)
    write(tmp_path / "b.nii")
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / ".a.nii.gz.tmp.nii.gz").write_bytes(b"")  # hidden temporary files are skipped
    cases = by_id(discover_cases(tmp_path))
    assert set(cases) == {"a", "b"}
    assert cases["a"]["label"] == tmp_path / "a_gt.nii.gz"
    assert "label" not in cases["b"]


def test_decathlon_dataset_json(tmp_path):
    write(tmp_path / "imagesTr" / "heart_003.nii.gz")
    write(tmp_path / "labelsTr" / "heart_003.nii.gz", label=True)
    write(tmp_path / "imagesTr" / "heart_007.nii.gz")
    write(tmp_path / "imagesTs" / "heart_010.nii.gz")
    write(tmp_path / "imagesTr" / "unlisted.nii.gz")  # dataset.json is authoritative
    spec = {
        "name": "Heart",
        "training": [
            {"image": "./imagesTr/heart_003.nii.gz", "label": "./labelsTr/heart_003.nii.gz"},
            {"image": "./imagesTr/heart_007.nii.gz"},
        ],
        "test": ["./imagesTs/heart_010.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    cases = by_id(discover_cases(tmp_path))
    assert set(cases) == {"heart_003", "heart_007", "heart_010"}
    assert cases["heart_003"]["label"] == tmp_path / "labelsTr" / "heart_003.nii.gz"
    assert cases["heart_003"]["image"] == tmp_path / "imagesTr" / "heart_003.nii.gz"
    assert "label" not in cases["heart_007"] and "label" not in cases["heart_010"]


def test_decathlon_nnunet_v1_channel_files(tmp_path):
    """nnU-Net v1 lists ``imagesTr/x.nii.gz`` while the file on disk is ``imagesTr/x_0000.nii.gz``."""
    write(tmp_path / "imagesTr" / "la_003_0000.nii.gz")
    write(tmp_path / "labelsTr" / "la_003.nii.gz", label=True)
    spec = {"training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    (case,) = discover_cases(tmp_path)
    assert case["case_id"] == "la_003"
    assert case["image"] == tmp_path / "imagesTr" / "la_003_0000.nii.gz"


@pytest.mark.parametrize("content, match", [
    ("{not json", "cannot be parsed"),
    (json.dumps({"name": "x"}), "no 'training'"),
    (json.dumps({"training": [{"label": "l.nii.gz"}]}), "without 'image'"),
    (json.dumps({"training": [{"image": "imagesTr/missing.nii.gz"}]}), "missing.nii.gz does not exist"),
    (json.dumps({"training": [{"image": ["a.nii.gz", "b.nii.gz"]}]}), "one file path"),
    (json.dumps({"training": ["imagesTr/a.nii.gz"]}), "not an {'image': ...} mapping"),
    (json.dumps({"training": [], "test": [{"label": "l.nii.gz"}]}), "test image must be one file path"),
])
def test_decathlon_errors_name_dataset_json(tmp_path, content, match):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(IdealInputError, match=match) as excinfo:
        discover_cases(tmp_path)
    assert excinfo.value.where == str(tmp_path / "dataset.json")
    assert "\n" not in str(excinfo.value)


def test_images_tr_same_names(tmp_path):
    write(tmp_path / "imagesTr" / "case01.nii.gz")
    write(tmp_path / "labelsTr" / "case01.nii.gz", label=True)
    write(tmp_path / "imagesTr" / "case02.nii.gz")  # no label: an unlabeled case
    write(tmp_path / "imagesTs" / "case03.nii.gz")
    cases = by_id(discover_cases(tmp_path))
    assert set(cases) == {"case01", "case02", "case03"}
    assert cases["case01"]["label"] == tmp_path / "labelsTr" / "case01.nii.gz"
    assert "label" not in cases["case02"] and "label" not in cases["case03"]


def test_images_tr_nnunet_channel_names(tmp_path):
    for i in (1, 2):
        write(tmp_path / "imagesTr" / f"ACDC_{i:04d}_0000.nii.gz")
        write(tmp_path / "labelsTr" / f"ACDC_{i:04d}.nii.gz", label=True)
    write(tmp_path / "imagesTr" / "ACDC_0003_0000.nii.gz")
    cases = by_id(discover_cases(tmp_path))
    assert set(cases) == {"ACDC_0001", "ACDC_0002", "ACDC_0003"}
    assert cases["ACDC_0002"]["label"] == tmp_path / "labelsTr" / "ACDC_0002.nii.gz"
    assert cases["ACDC_0001"]["image"] == tmp_path / "imagesTr" / "ACDC_0001_0000.nii.gz"
    assert "label" not in cases["ACDC_0003"]


def test_images_tr_four_digit_case_numbers_are_not_channels(tmp_path):
    """``heart_0001``...: stripping ``_dddd`` would give every case the id ``heart``."""
    for i in (1, 2, 3):
        write(tmp_path / "imagesTr" / f"heart_{i:04d}.nii.gz")
    write(tmp_path / "labelsTr" / "heart_0002.nii.gz", label=True)
    cases = by_id(discover_cases(tmp_path))
    assert set(cases) == {"heart_0001", "heart_0002", "heart_0003"}
    assert "label" in cases["heart_0002"] and "label" not in cases["heart_0001"]


def test_missing_folder(tmp_path):
    with pytest.raises(IdealInputError, match="does not exist") as excinfo:
        discover_cases(tmp_path / "nope")
    assert excinfo.value.where == str(tmp_path / "nope")


@pytest.mark.parametrize("layout", ["empty", "only text", "empty patient folders", "empty imagesTr"])
def test_folders_without_images(tmp_path, layout):
    if layout == "only text":
        (tmp_path / "notes.txt").write_text("x")
    elif layout == "empty patient folders":
        (tmp_path / "patient001").mkdir()
        (tmp_path / "patient002").mkdir()
    elif layout == "empty imagesTr":
        (tmp_path / "imagesTr").mkdir()
    with pytest.raises(IdealInputError, match="contains no images") as excinfo:
        discover_cases(tmp_path)
    assert excinfo.value.where == str(tmp_path)


def test_duplicate_case_ids_across_folders(tmp_path):
    write(tmp_path / "site A" / "case1.nii.gz")
    write(tmp_path / "site B" / "case1.nii.gz")
    with pytest.raises(IdealInputError, match="duplicate case id 'case1'") as excinfo:
        discover_cases(tmp_path)
    assert "site B" in str(excinfo.value) and "site A" in str(excinfo.value)


def test_duplicate_case_ids_same_stem(tmp_path):
    write(tmp_path / "case1.nii")
    write(tmp_path / "case1.nii.gz")
    with pytest.raises(IdealInputError, match="duplicate case id 'case1'"):
        discover_cases(tmp_path)


def test_unicode_spaces_and_symlinks(tmp_path, synthetic_dataset):
    """A folder of symlinks (e.g. into a shared store) with unicode names and spaces."""
    root = tmp_path / "études cardiaques"
    src = synthetic_dataset / "patient001"
    for stem in ("patient001_frame01", "patient001_frame01_gt"):
        link = root / "patïent 001" / f"{stem.replace('patient', 'patïent ')}.nii.gz"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src / f"{stem}.nii.gz")
    (case,) = discover_cases(root)
    assert case["case_id"] == "patïent 001_frame01" and case["patient_id"] == "patïent 001"
    assert case["image"].is_symlink() and case["label"].name == "patïent 001_frame01_gt.nii.gz"
    expected = np.asarray(nib.load(str(src / "patient001_frame01_gt.nii.gz")).dataobj)
    np.testing.assert_array_equal(load_volume(case["label"], is_label=True)[0].numpy(), expected)


def test_decathlon_symlink_keeps_link_name(tmp_path):
    store = write(tmp_path / "store" / "3f9a1c.nii.gz")
    (tmp_path / "data" / "imagesTr").mkdir(parents=True)
    (tmp_path / "data" / "imagesTr" / "case7.nii.gz").symlink_to(store)
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"training": [{"image": "imagesTr/case7.nii.gz"}]}))
    (case,) = discover_cases(tmp_path / "data")
    assert case["case_id"] == "case7"
    assert case["image"] == tmp_path / "data" / "imagesTr" / "case7.nii.gz"


def test_symlinked_dataset_folder(tmp_path, synthetic_dataset):
    link = tmp_path / "linked"
    link.symlink_to(synthetic_dataset, target_is_directory=True)
    assert [c["case_id"] for c in discover_cases(link)] == [c["case_id"] for c in discover_cases(synthetic_dataset)]


def test_discovery_reads_no_pixel_data(tmp_path, synthetic_dataset):
    """Discovery only lists files (and reads cine headers): a corrupt label is found at load time."""
    shutil.copytree(synthetic_dataset / "patient002", tmp_path / "patient002")
    (tmp_path / "patient002" / "patient002_frame01_gt.nii.gz").write_bytes(b"garbage")
    cases = by_id(discover_cases(tmp_path))
    assert cases["patient002_frame01"]["label"].name == "patient002_frame01_gt.nii.gz"
