"""SliceDataset, volume_dataset and slice_loader on the synthetic ACDC-layout dataset."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_monai.data import SliceDataset, discover_cases, slice_loader, volume_dataset
from ideal_monai.data.transforms import slice_augmentation, volume_preprocessing
from ideal_monai.errors import IdealInputError, find_input_error, find_user_error

PATCH = (48, 48)


@pytest.fixture(scope="module")
def cases(synthetic_dataset):
    return discover_cases(synthetic_dataset)[:4]  # patients 1-2, ED and ES


@pytest.fixture(scope="module")
def pre():
    return volume_preprocessing(keys=["image", "label"], patch_size=PATCH)


def depth(case):
    return nib.load(str(case["image"])).shape[2]


def test_slices_are_the_preprocessed_volume_slices(cases, pre):
    ds = SliceDataset(cases, pre, progress=False)
    assert len(ds) == sum(depth(c) for c in cases)
    volumes = [pre(c) for c in cases]  # preprocessing applied independently of the dataset
    i = 0
    for case, vol in zip(cases, volumes):
        for z in range(depth(case)):
            item = ds[i]
            assert item["case_id"] == case["case_id"] and item["slice_index"] == z
            assert item["image"].shape == item["label"].shape == (1, *PATCH)
            assert type(item["image"]) is torch.Tensor  # plain tensors: batches carry no metadata
            assert torch.equal(item["image"], vol["image"][..., z].as_tensor())
            assert torch.equal(item["label"], vol["label"][..., z].as_tensor())
            i += 1
    assert item["label"].dtype == torch.uint8 and item["image"].dtype == torch.float32


def test_unlabeled_slices_have_no_label(cases, pre):
    unlabeled = [{k: v for k, v in c.items() if k != "label"} for c in cases[:1]]
    ds = SliceDataset(unlabeled, pre, progress=False)
    assert len(ds) == depth(cases[0])
    assert set(ds[0]) == {"image", "case_id", "slice_index"}


def test_cine_frames_are_sliced(tmp_path):
    from ideal_monai.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, num_cases=1, seed=5, with_cine=True, num_frames=3)
    cine = [c for c in discover_cases(tmp_path) if "frame" in c]
    ds = SliceDataset(cine, volume_preprocessing(keys=["image"], patch_size=PATCH), keys=["image"], progress=False)
    z = nib.load(str(cine[0]["image"])).shape[2]
    assert len(ds) == 3 * z
    # frame 1, slice 0 differs from frame 0, slice 0 (the heart moves)
    assert not torch.equal(ds[0]["image"], ds[z]["image"])


def test_slice_transform_and_uncached_volumes(cases, pre):
    aug = slice_augmentation(prob=1.0)
    aug.set_random_state(seed=0)
    ds = SliceDataset(cases[:2], pre, slice_transform=aug, cache_rate=0.0, progress=False)
    plain = SliceDataset(cases[:2], pre, cache_rate=0.0, progress=False)
    item = ds[3]
    assert item["image"].shape == (1, *PATCH) and type(item["label"]) is torch.Tensor
    assert item["label"].dtype == torch.uint8
    assert not torch.equal(item["image"], plain[3]["image"])


def test_bad_label_surfaces_as_input_error(tmp_path, synthetic_dataset):
    """Cached or not, a bad file fails with the one-line IdealInputError naming it (uncached: in the chain)."""
    shutil.copytree(synthetic_dataset / "patient003", tmp_path / "patient003")
    gt = tmp_path / "patient003" / "patient003_frame01_gt.nii.gz"
    img = nib.load(str(gt))
    bad = np.asarray(img.dataobj).astype(np.int16)
    bad[0, 0, 0] = 255
    nib.save(nib.Nifti1Image(bad, img.affine), str(gt))
    cases = [c for c in discover_cases(tmp_path) if c["case_id"] == "patient003_frame01"]
    pre = volume_preprocessing(patch_size=PATCH)
    with pytest.raises(IdealInputError, match="255") as excinfo:
        SliceDataset(cases, pre, cache_rate=1.0, progress=False)
    assert excinfo.value.where == str(gt)
    # uncached, whether or not MONAI wraps it in a RuntimeError, the reporters find it in the chain
    for uncached in (SliceDataset(cases, pre, cache_rate=0.0, progress=False), volume_dataset(cases, pre, cache_rate=0.0)):
        with pytest.raises(Exception) as excinfo:
            uncached[0]
        err = find_input_error(excinfo.value)
        assert err is not None and err.where == str(gt) and "255" in str(err)
        assert find_user_error(excinfo.value) is err


def test_missing_image_fails_when_indexing(tmp_path):
    with pytest.raises(IdealInputError, match="does not exist"):
        SliceDataset([{"image": tmp_path / "gone.nii.gz", "case_id": "gone"}], volume_preprocessing(), progress=False)


def test_volume_dataset(cases, pre):
    ds = volume_dataset(cases[:2], pre)
    assert len(ds) == 2
    item = ds[1]
    assert item["image"].shape == item["label"].shape == (1, *PATCH, depth(cases[1]))
    assert item["case_id"] == cases[1]["case_id"]
    assert item["label"].applied_operations  # invertible history kept for Invertd


def test_slice_loader(cases, pre):
    ds = SliceDataset(cases[:1], pre, progress=False)
    n = len(ds)
    batches = list(slice_loader(ds, batch_size=4, shuffle=False))
    assert len(batches) == n // 4  # drop_last with more than one batch of data
    assert batches[0]["image"].shape == (4, 1, *PATCH) and batches[0]["label"].shape == (4, 1, *PATCH)
    assert batches[0]["slice_index"].tolist() == [0, 1, 2, 3]
    # a tiny labeled set still yields one (smaller) batch per epoch
    (only,) = list(slice_loader(ds, batch_size=n + 5))
    assert only["image"].shape[0] == n
    assert slice_loader(SliceDataset([], pre, progress=False), batch_size=2) is None


def _tag_worker_pid(item: dict) -> dict:
    return {**item, "pid": os.getpid()}


def test_slice_loader_keeps_workers_across_passes(cases, pre):
    # The trainers cycle a small labeled set many times per epoch; forking the workers anew on each
    # pass cost more than the GPU step itself.
    ds = SliceDataset(cases[:1], pre, slice_transform=_tag_worker_pid, progress=False)
    loader = slice_loader(ds, batch_size=2, num_workers=1)
    first = {int(p) for batch in loader for p in batch["pid"]}
    second = {int(p) for batch in loader for p in batch["pid"]}
    assert first == second and os.getpid() not in first
