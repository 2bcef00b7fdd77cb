"""Patient-level labeled / unlabeled / val splits, and proof that unlabeled labels are never read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ideal_monai.data import io, pretraining_cases, split_cases, split_dataset
from ideal_monai.data.datasets import SliceDataset
from ideal_monai.data.transforms import volume_preprocessing
from ideal_monai.errors import IdealInputError


def fake_cases(num_patients=12, unlabeled_patients=(), cine_patients=(), cine_frames=3):
    """ACDC-like case dicts (paths need not exist: splitting reads no files)."""
    cases = []
    for i in range(1, num_patients + 1):
        pid = f"patient{i:03d}"
        for f in (1, 2):
            case = {"image": Path(f"/d/{pid}/{pid}_frame{f:02d}.nii.gz"), "case_id": f"{pid}_frame{f:02d}",
                    "patient_id": pid}
            if pid not in unlabeled_patients:
                case["label"] = Path(f"/d/{pid}/{pid}_frame{f:02d}_gt.nii.gz")
            cases.append(case)
        if pid in cine_patients:
            cases += [{"image": Path(f"/d/{pid}/{pid}_4d.nii.gz"), "case_id": f"{pid}_4d_t{t:02d}",
                       "patient_id": pid, "frame": t} for t in range(cine_frames)]
    return cases


def patients(cases):
    return {c["patient_id"] for c in cases}


def assert_patient_level(split, cases):
    sets = [patients(split[k]) for k in ("labeled", "unlabeled", "val")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), "a patient is in two sets"
    assert all("label" in c for c in split["labeled"] + split["val"])
    assert all("label" not in c for c in split["unlabeled"])
    # every case of a patient goes with its patient: nothing but unlabeled frames of labeled/val
    # patients is left out
    by_patient = {}
    for c in cases:
        by_patient.setdefault(c["patient_id"], []).append(c["case_id"])
    for key in ("labeled", "unlabeled"):
        for p in patients(split[key]):
            expected = [c["case_id"] for c in cases if c["patient_id"] == p and (key == "unlabeled" or "label" in c)]
            assert [c["case_id"] for c in split[key] if c["patient_id"] == p] == expected


def write_splits(tmp_path, **lists):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(lists))
    return path


# ---------------------------------------------------------------------------------------------
# counts + seed


def test_counts_split_sizes_and_patient_level():
    cases = fake_cases(12, unlabeled_patients=("patient011", "patient012"), cine_patients=("patient001", "patient005"))
    split = split_cases(cases, num_labeled=3, num_val=2, seed=4)
    assert len(patients(split["labeled"])) == 3 and len(split["labeled"]) == 6
    assert len(patients(split["val"])) == 2 and len(split["val"]) == 4
    assert patients(split["labeled"]) | patients(split["val"]) | patients(split["unlabeled"]) <= patients(cases)
    assert len(patients(split["unlabeled"])) == 7  # every other patient, labels dropped
    # patients without labels are never drawn for labeled or val
    assert {"patient011", "patient012"} <= patients(split["unlabeled"])
    assert_patient_level(split, cases)


def test_counts_split_is_seeded():
    cases = fake_cases(20)
    a = split_cases(cases, num_labeled=3, num_val=4, seed=1)
    assert a == split_cases(cases, num_labeled=3, num_val=4, seed=1)
    b = split_cases(cases, num_labeled=3, num_val=4, seed=2)
    assert patients(a["labeled"]) != patients(b["labeled"]) or patients(a["val"]) != patients(b["val"])


def test_counts_default_labels_all_remaining():
    cases = fake_cases(5, unlabeled_patients=("patient002",))
    split = split_cases(cases, num_val=1)
    assert len(patients(split["labeled"])) == 3 and patients(split["unlabeled"]) == {"patient002"}


def test_unlabeled_case_dicts_have_no_label_key_and_inputs_untouched():
    cases = fake_cases(6)
    before = [dict(c) for c in cases]
    split = split_cases(cases, num_labeled=1, num_val=1)
    assert split["unlabeled"] and all("label" not in c for c in split["unlabeled"])
    assert cases == before  # the caller's dicts still carry their labels


def test_cine_frames_of_labeled_and_val_patients_stay_out_of_unlabeled():
    cases = fake_cases(4, cine_patients=("patient001", "patient002", "patient003", "patient004"))
    split = split_cases(cases, num_labeled=1, num_val=1, seed=0)
    (lab,), (val,) = patients(split["labeled"]), patients(split["val"])
    assert lab not in patients(split["unlabeled"]) and val not in patients(split["unlabeled"])
    assert all("frame" not in c for c in split["labeled"] + split["val"])
    assert sum("frame" in c for c in split["unlabeled"]) == 2 * 3  # cine of the 2 unlabeled patients
    assert_patient_level(split, cases)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_labeled": 5, "num_val": 0}, "num_labeled=5 but only 4 labeled patients"),
    ({"num_labeled": 3, "num_val": 2}, "num_labeled=3 but only 2 labeled patients remain after 2"),
    ({"num_labeled": 1, "num_val": 5}, "num_val=5 but only 4 patients have labels"),
    ({"num_labeled": -1}, "non-negative"),
    ({"num_val": -2}, "non-negative"),
])
def test_counts_errors(kwargs, match):
    cases = fake_cases(6, unlabeled_patients=("patient005", "patient006"))
    with pytest.raises(IdealInputError, match=match):
        split_cases(cases, **kwargs)


# ---------------------------------------------------------------------------------------------
# splits file


def test_splits_file(tmp_path):
    cases = fake_cases(10, cine_patients=("patient001", "patient004"))
    path = write_splits(tmp_path, train=[f"patient{i:03d}" for i in range(1, 8)], val=["patient008", "patient009"],
                        labeled_3=["patient001", "patient002", "patient003"], labeled_1=["patient004"])
    split = split_cases(cases, splits_file=path)
    assert patients(split["labeled"]) == {"patient001", "patient002", "patient003"}
    assert [c["case_id"] for c in split["labeled"]][:2] == ["patient001_frame01", "patient001_frame02"]
    assert patients(split["unlabeled"]) == {"patient004", "patient005", "patient006", "patient007"}
    assert len(split["unlabeled"]) == 4 * 2 + 3  # + cine of patient004
    assert patients(split["val"]) == {"patient008", "patient009"} and len(split["val"]) == 4
    assert "patient010" not in patients(split["labeled"] + split["unlabeled"] + split["val"])  # held out
    assert_patient_level(split, cases)

    other = split_cases(cases, splits_file=path, labeled_key="labeled_1")
    assert patients(other["labeled"]) == {"patient004"}
    assert "patient004" not in patients(other["unlabeled"])  # its cine frames are not unlabeled data


@pytest.mark.parametrize("lists, match", [
    ({"train": ["patient001", "patient099"], "labeled_3": ["patient001"]}, r"not found in the dataset: \['patient099'\]"),
    ({"train": ["patient001"], "val": ["patient077"], "labeled_3": ["patient001"]}, "not found.*patient077"),
    ({"train": ["patient001", "patient002", "patient001"], "labeled_3": ["patient002"]}, "'train' names the same patient twice.*patient001"),
    ({"train": ["patient001", "patient002"], "labeled_3": ["patient002", "patient002"]}, "'labeled_3' names the same patient twice"),
    ({"train": ["patient001"], "val": ["patient002", "patient002"], "labeled_3": []}, "'val' names the same patient twice"),
    ({"train": ["patient001", "patient002"], "val": ["patient002"], "labeled_3": []}, "both 'train' and 'val'.*patient002"),
    ({"train": ["patient001"], "val": ["patient002"], "labeled_3": ["patient002"]}, r"'labeled_3' patients not in 'train': \['patient002'\]"),
    ({"train": ["patient001"], "labeled_7": ["patient001"]}, "no list 'labeled_3'"),
    ({"val": ["patient001"], "labeled_3": []}, "no list 'train'"),
    ({"train": ["patient001", 2], "labeled_3": []}, "patient id strings"),
    ({"train": ["patient001", "patient003"], "labeled_3": ["patient003"]}, "without any label file.*patient003"),
    ({"train": ["patient001"], "val": ["patient003"], "labeled_3": []}, "val patient.* without any label file.*patient003"),
])
def test_splits_file_errors(tmp_path, lists, match):
    cases = fake_cases(4, unlabeled_patients=("patient003",))
    path = write_splits(tmp_path, **lists)
    with pytest.raises(IdealInputError, match=match) as excinfo:
        split_cases(cases, splits_file=path)
    assert excinfo.value.where == str(path) and "\n" not in str(excinfo.value)


@pytest.mark.parametrize("content", ["{broken", "[1, 2]", ""])
def test_splits_file_not_a_json_object(tmp_path, content):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(IdealInputError) as excinfo:
        split_cases(fake_cases(2), splits_file=path)
    assert excinfo.value.where == str(path)


def test_missing_splits_file(tmp_path):
    with pytest.raises(IdealInputError, match="cannot be read"):
        split_cases(fake_cases(2), splits_file=tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# on files: split_dataset, pretraining_cases, and labels of unlabeled cases never read


def test_split_dataset_blank_splits_file_means_counts(synthetic_dataset):
    split = split_dataset(synthetic_dataset, splits_file="", num_labeled=2, num_val=1, seed=0)
    assert [len(patients(split[k])) for k in ("labeled", "unlabeled", "val")] == [2, 3, 1]


def test_pretraining_cases(tmp_path, synthetic_dataset):
    path = write_splits(tmp_path, train=["patient001", "patient002", "patient003", "patient004"],
                        val=["patient005", "patient006"], labeled_3=["patient001"])
    cases = pretraining_cases(synthetic_dataset, splits_file=path, exclude_patients=["patient004"])
    assert patients(cases) == {"patient001", "patient002", "patient003"}  # val patients stay unseen
    assert len(cases) == 6 and all("label" not in c for c in cases)
    assert patients(pretraining_cases(synthetic_dataset)) == {f"patient{i:03d}" for i in range(1, 7)}
    with pytest.raises(IdealInputError, match="no cases left"):
        pretraining_cases(synthetic_dataset, exclude_patients=[f"patient{i:03d}" for i in range(1, 7)])


def test_labels_of_unlabeled_cases_are_never_read(monkeypatch, synthetic_dataset):
    loaded = []
    real_load, real_shape = io.load_volume, io.read_shape

    def recording_load(path, **kwargs):
        loaded.append(Path(path).name)
        return real_load(path, **kwargs)

    def recording_shape(path):
        loaded.append(Path(path).name)
        return real_shape(path)

    monkeypatch.setattr(io, "load_volume", recording_load)
    monkeypatch.setattr(io, "read_shape", recording_shape)

    split = split_dataset(synthetic_dataset, num_labeled=1, num_val=1, seed=0)
    pre = volume_preprocessing(keys=["image", "label"], patch_size=(32, 32))
    unlabeled = SliceDataset(split["unlabeled"], pre, cache_rate=1.0, progress=False)
    items = [unlabeled[i] for i in range(len(unlabeled))]
    assert items and all("label" not in item for item in items)
    assert [n for n in loaded if n.endswith("_gt.nii.gz")] == []
    assert len(set(loaded)) == 8  # the 4 unlabeled patients' ED and ES images were read

    # control: the same instrumentation does see label reads for the labeled set
    loaded.clear()
    labeled = SliceDataset(split["labeled"], pre, progress=False)
    assert "label" in labeled[0]
    assert len({n for n in loaded if n.endswith("_gt.nii.gz")}) == 2  # ED and ES labels of 1 patient
