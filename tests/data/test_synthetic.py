"""Synthetic cardiac phantoms: determinism, ACDC layout, geometry, anatomy and argument checks."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ideal_monai.data.synthetic import (NUM_SLICES_RANGE, SIZE_RANGE, generate_case,
                                        write_synthetic_dataset)
from ideal_monai.errors import IdealInputError

SEEDS = range(6)
CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood
SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-neighbourhood


@pytest.fixture(scope="module")
def cases():
    return {seed: generate_case(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    folders = write_synthetic_dataset(out, num_cases=2, seed=7, with_cine=True, num_frames=6)
    return out, folders


def _volumes(case):
    return (("ED", case.ed_label), ("ES", case.es_label))


def _mid_slices(label):
    z = label.shape[2]
    return range(z // 4, z - z // 4) if z >= 4 else range(1, z - 1)


def test_same_seed_gives_identical_arrays_and_different_seeds_differ(cases):
    again = generate_case(3)
    for name in ("ed_image", "ed_label", "es_image", "es_label"):
        assert np.array_equal(getattr(again, name), getattr(cases[3], name)), name
    assert again.spacing == cases[3].spacing
    other = cases[4]
    assert other.ed_image.shape != again.ed_image.shape or not np.array_equal(other.ed_image, again.ed_image)
    # a Generator is accepted and is deterministic too
    a, b = generate_case(np.random.default_rng(11)), generate_case(np.random.default_rng(11))
    assert np.array_equal(a.es_image, b.es_image) and np.array_equal(a.es_label, b.es_label)


def test_random_geometry_in_documented_ranges_and_varies(cases):
    for case in cases.values():
        h, w, z = case.ed_image.shape
        assert SIZE_RANGE[0] <= h <= SIZE_RANGE[1] and SIZE_RANGE[0] <= w <= SIZE_RANGE[1]
        assert NUM_SLICES_RANGE[0] <= z <= NUM_SLICES_RANGE[1]
        sx, sy, sz = case.spacing
        assert sx == sy and 1.2 <= sx <= 1.8 and 5.0 <= sz <= 10.0
        assert case.ed_image.dtype == np.int16 and case.ed_label.dtype == np.uint8
        assert case.es_image.shape == case.ed_label.shape == case.es_label.shape == (h, w, z)
        np.testing.assert_allclose(case.affine, np.diag([sx, sy, sz, 1.0]))
    assert len({c.ed_image.shape for c in cases.values()}) > 1
    assert len({c.spacing for c in cases.values()}) == len(cases)


def test_explicit_geometry_is_respected():
    case = generate_case(0, shape=(96, 112), num_slices=4, spacing=(2.0, 2.0, 9.0), num_frames=4)
    assert case.ed_image.shape == (96, 112, 4)
    assert case.spacing == (2.0, 2.0, 9.0)
    assert case.cine.shape == (96, 112, 4, 4)


def test_every_volume_has_all_four_classes(cases):
    for seed, case in cases.items():
        for phase, label in _volumes(case):
            assert set(np.unique(label).tolist()) == {0, 1, 2, 3}, (seed, phase)


def test_myocardium_encloses_lv_and_separates_it_from_rv(cases):
    for seed, case in cases.items():
        for phase, label in _volumes(case):
            for k in range(label.shape[2]):
                sl = label[:, :, k]
                lv, myo, rv = sl == 3, sl == 2, sl == 1
                # RV and LV cavities never touch, even diagonally, on any slice
                assert not (ndimage.binary_dilation(lv, SQUARE) & rv).any(), (seed, phase, k)
                if k not in _mid_slices(label):
                    continue
                assert lv.any() and myo.any(), (seed, phase, k)
                # LV grown by one pixel stays inside LV|MYO: the myocardium is a closed ring
                assert not (ndimage.binary_dilation(lv, CROSS) & ~(lv | myo)).any(), (seed, phase, k)
                if rv.any():
                    assert (ndimage.binary_dilation(rv, CROSS) & myo).any(), (seed, phase, k)


def test_base_to_apex_shape(cases):
    for seed, case in cases.items():
        for phase, label in _volumes(case):
            lv_area = (label == 3).sum(axis=(0, 1))
            rv_area = (label == 1).sum(axis=(0, 1))
            assert lv_area[-1] < 0.5 * lv_area[0], (seed, phase, lv_area)
            assert rv_area[0] > 0, (seed, phase)
            assert rv_area[-1] == 0, (seed, phase, rv_area)  # the RV fades before the apex


def _mean_wall_thickness_px(label, k):
    """Ring thickness from areas: sqrt((LV+MYO)/pi) - sqrt(LV/pi)."""
    lv, myo = (label[:, :, k] == 3).sum(), (label[:, :, k] == 2).sum()
    return np.sqrt((lv + myo) / np.pi) - np.sqrt(lv / np.pi)


def test_systole_has_smaller_cavities_and_thicker_wall(cases):
    for seed, case in cases.items():
        assert (case.es_label == 3).sum() < 0.8 * (case.ed_label == 3).sum(), seed
        assert (case.es_label == 1).sum() < (case.ed_label == 1).sum(), seed
        for k in _mid_slices(case.ed_label):
            assert _mean_wall_thickness_px(case.es_label, k) > _mean_wall_thickness_px(case.ed_label, k), (seed, k)


def test_intensities_bright_blood_dark_myocardium_and_confusable_background(cases):
    blood_levels = []
    for seed, case in cases.items():
        img, lbl = case.ed_image.astype(np.float64), case.ed_label
        lv, myo = np.median(img[lbl == 3]), np.median(img[lbl == 2])
        assert lv > 2.0 * myo, (seed, lv, myo)
        assert np.median(img[lbl == 1]) > 1.5 * myo, seed
        # some background tissue looks like myocardium, so intensity thresholds cannot segment it
        background = img[lbl == 0]
        similar = np.abs(background - myo) < 0.15 * myo
        assert similar.sum() > (lbl == 2).sum(), seed
        # Rician noise: air is a noise floor, not exactly zero
        assert (img > 0).mean() > 0.9, seed
        blood_levels.append(lv)
    assert max(blood_levels) > 1.3 * min(blood_levels)


def test_dataset_layout_files_and_headers(dataset):
    out, folders = dataset
    assert folders == [out / "patient001", out / "patient002"]
    for folder in folders:
        name = folder.name
        expected = {f"{name}_frame01.nii.gz", f"{name}_frame01_gt.nii.gz", f"{name}_frame02.nii.gz",
                    f"{name}_frame02_gt.nii.gz", f"{name}_4d.nii.gz", f"{name}_4d_gt.nii.gz"}
        assert {p.name for p in folder.iterdir()} == expected  # no temporary files left behind
        ed = nib.load(folder / f"{name}_frame01.nii.gz")
        gt = nib.load(folder / f"{name}_frame01_gt.nii.gz")
        assert ed.get_data_dtype() == np.int16 and gt.get_data_dtype() == np.uint8
        assert ed.shape == gt.shape and len(ed.shape) == 3
        sx, sy, sz = ed.header.get_zooms()
        np.testing.assert_allclose(ed.affine, np.diag([sx, sy, sz, 1.0]), atol=1e-5)
        np.testing.assert_allclose(gt.affine, ed.affine)
        assert 1.2 <= sx <= 1.8 and 5.0 <= sz <= 10.0
        assert set(np.unique(np.asarray(gt.dataobj)).tolist()) == {0, 1, 2, 3}


def test_cine_interpolates_ed_es_ed(dataset):
    _, folders = dataset
    name = folders[0].name
    cine = nib.load(folders[0] / f"{name}_4d.nii.gz")
    ed = np.asarray(nib.load(folders[0] / f"{name}_frame01.nii.gz").dataobj)
    es = np.asarray(nib.load(folders[0] / f"{name}_frame02.nii.gz").dataobj)
    frames = np.asarray(cine.dataobj)
    assert frames.shape == (*ed.shape, 6) and frames.dtype == np.int16
    assert cine.header.get_zooms()[:3] == nib.load(folders[0] / f"{name}_frame01.nii.gz").header.get_zooms()
    assert np.array_equal(frames[..., 0], ed) and np.array_equal(frames[..., 3], es)
    assert not np.array_equal(frames[..., 1], ed) and not np.array_equal(frames[..., 1], es)


def test_cine_does_not_change_ed_es():
    plain, with_cine = generate_case(5, shape=(96, 96), num_slices=4), generate_case(5, shape=(96, 96), num_slices=4, num_frames=4)
    assert plain.cine is None
    assert np.array_equal(plain.ed_image, with_cine.ed_image) and np.array_equal(plain.es_label, with_cine.es_label)


def test_a_smaller_dataset_is_a_prefix_of_a_larger_one(dataset, tmp_path):
    _, folders = dataset
    (one,) = write_synthetic_dataset(tmp_path, num_cases=1, seed=7)
    for suffix in ("frame01.nii.gz", "frame02_gt.nii.gz"):
        a = np.asarray(nib.load(one / f"patient001_{suffix}").dataobj)
        b = np.asarray(nib.load(folders[0] / f"patient001_{suffix}").dataobj)
        assert np.array_equal(a, b), suffix
    assert not (one / "patient001_4d.nii.gz").exists()


@pytest.mark.parametrize("num_cases", [0, -3, 1.5, True])
def test_bad_num_cases_raises_naming_the_folder(tmp_path, num_cases):
    with pytest.raises(IdealInputError) as err:
        write_synthetic_dataset(tmp_path / "out", num_cases=num_cases)
    assert err.value.where == str(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_raises_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "dataset"
    with pytest.raises(IdealInputError) as err:
        write_synthetic_dataset(target, num_cases=1)
    assert err.value.where == str(target)
    with pytest.raises(IdealInputError) as err:
        write_synthetic_dataset(blocker, num_cases=1)
    assert err.value.where == str(blocker)


@pytest.mark.parametrize("kwargs", [{"num_slices": 2}, {"num_slices": 6.5}, {"shape": (32, 200)}, {"spacing": (1.5, 0.0, 8.0)},
                                    {"num_frames": 1}, {"seed_or_rng": -1}, {"seed_or_rng": "seven"}])
def test_bad_generate_arguments_raise(kwargs):
    with pytest.raises(IdealInputError):
        generate_case(**kwargs)
