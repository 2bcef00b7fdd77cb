"""LoadCased, volume_preprocessing (and its exact inversion to the input grid), slice_augmentation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd
from monai.utils import set_determinism

from ideal_monai.data.transforms import LoadCased, slice_augmentation, slice_axis_axcodes, volume_preprocessing
from ideal_monai.errors import IdealInputError


def oblique_affine(spacing=(1.3, 0.9, 6.0)) -> np.ndarray:
    """Oblique (rotated about all axes), second axis flipped, non-unit spacing, translated."""
    def rot(axis, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    affine = np.eye(4)
    affine[:3, :3] = rot(0, 20) @ rot(1, -35) @ rot(2, 50) @ np.diag([spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = (-12.5, 40.25, 7.75)
    return affine


def write_pair(folder, shape, affine, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(300, 80, size=shape).astype(np.float32)
    lab = rng.integers(0, 4, size=shape).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, affine), str(folder / "img.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(folder / "lab.nii.gz"))
    return {"image": folder / "img.nii.gz", "label": folder / "lab.nii.gz"}, img, lab


def kept_window(n: int, p: int) -> slice:
    """Input indices a centred crop of ``n`` to ``p`` keeps (all of them when padding)."""
    if n <= p:
        return slice(0, n)
    start = (n - p) // 2
    return slice(start, start + p)


# ---------------------------------------------------------------------------------------------
# loading


def test_load_cased_labeled_and_unlabeled(tmp_path):
    case, img, lab = write_pair(tmp_path, (9, 8, 3), oblique_affine())
    out = LoadCased()({**case, "case_id": "c"})
    assert out["image"].shape == out["label"].shape == (1, 9, 8, 3)
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8
    np.testing.assert_array_equal(out["label"][0].numpy(), lab)
    assert out["case_id"] == "c"
    unlabeled = LoadCased()({"image": case["image"]})
    assert "label" not in unlabeled and unlabeled["image"].shape == (1, 9, 8, 3)


def test_load_cased_frame_of_cine(tmp_path):
    cine = np.random.default_rng(0).random((6, 5, 3, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(cine, np.eye(4)), str(tmp_path / "p_4d.nii.gz"))
    out = LoadCased()({"image": tmp_path / "p_4d.nii.gz", "frame": 2})
    np.testing.assert_array_equal(out["image"][0].numpy(), cine[..., 2])


@pytest.mark.parametrize("problem", ["shape", "affine", "values"])
def test_bad_pairs_raise_input_error_through_compose(tmp_path, problem):
    """MONAI wraps transform errors in RuntimeError; the pipeline must surface IdealInputError."""
    case, _, lab = write_pair(tmp_path, (9, 8, 3), np.eye(4))
    affine = np.eye(4)
    if problem == "shape":
        lab = lab[:, :, :2]
    elif problem == "affine":
        affine[0, 3] = 2.0
    else:
        lab = lab.astype(np.int16)
        lab[0, 0, 0] = 255
    nib.save(nib.Nifti1Image(lab, affine), str(case["label"]))
    with pytest.raises(IdealInputError) as excinfo:
        volume_preprocessing(patch_size=(16, 16))(case)
    assert excinfo.value.where == str(case["label"]) and "\n" not in str(excinfo.value)


def test_corrupt_image_raises_input_error_through_compose(tmp_path):
    (tmp_path / "img.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(IdealInputError, match="cannot be read") as excinfo:
        volume_preprocessing(keys=["image"], patch_size=(16, 16))({"image": tmp_path / "img.nii.gz"})
    assert excinfo.value.where == str(tmp_path / "img.nii.gz")


# ---------------------------------------------------------------------------------------------
# preprocessing and exact inversion


def test_preprocessing_output(tmp_path):
    case, img, _ = write_pair(tmp_path, (37, 51, 7), oblique_affine())
    assert volume_preprocessing(patch_size=(64, 48))(case)["label"].shape == (1, 64, 48, 7)  # 51 cropped to 48
    out = volume_preprocessing(patch_size=(64, 64))(case)
    assert out["image"].shape == out["label"].shape == (1, 64, 64, 7)
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    # robust window: the top 1% of the input saturates at 1 (per volume, before padding)
    hi = np.percentile(img, 99)
    assert int((out["image"] >= 1.0 - 1e-6).sum()) == pytest.approx(int((img >= hi).sum()), abs=1)


@pytest.mark.parametrize("shape", [(37, 51, 7), (300, 280, 5)])
@pytest.mark.parametrize("how", ["Invertd", "Compose.inverse"])
def test_inversion_is_exact_where_crop_kept_data(tmp_path, shape, how):
    affine = oblique_affine()
    case, _, lab = write_pair(tmp_path, shape, affine)
    pre = volume_preprocessing(keys=["image", "label"], patch_size=(64, 64))
    out = pre(case)
    assert out["label"].shape == (1, 64, 64, shape[2])
    if how == "Invertd":
        back = Invertd(keys="label", transform=pre, orig_keys="label", nearest_interp=True)(out)["label"]
    else:
        back = pre.inverse(out)["label"]

    assert back.shape == (1, *shape)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-5)
    back = back[0].numpy()
    wx, wy = kept_window(shape[0], 64), kept_window(shape[1], 64)
    np.testing.assert_array_equal(back[wx, wy], lab[wx, wy])  # bit-identical where data was kept
    outside = np.ones(shape, bool)
    outside[wx, wy] = False
    assert not back[outside].any()  # cropped-away voxels come back as background


@pytest.mark.parametrize("shape", [(37, 51, 7), (300, 280, 5)])
@pytest.mark.parametrize("target_spacing", [(1.0, 1.0), (0.7, 2.1)])
def test_resampling_inverts_to_identical_grid(tmp_path, shape, target_spacing):
    affine = oblique_affine()
    case, _, _ = write_pair(tmp_path, shape, affine)
    pre = volume_preprocessing(keys=["image", "label"], patch_size=(64, 64), target_spacing=target_spacing)
    out = pre(case)
    assert out["image"].shape == out["label"].shape == (1, 64, 64, shape[2])  # Z is kept
    assert out["label"].dtype == torch.uint8  # resampling computes in float; labels come back as ids
    assert set(np.unique(out["label"].numpy())) <= {0, 1, 2, 3}
    spacing = np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [*target_spacing, 6.0], rtol=1e-5)

    back = Invertd(keys="label", transform=pre, orig_keys="label", nearest_interp=True)(out)["label"]
    assert back.shape == (1, *shape)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-5)


def test_image_only_pipeline_inverts_a_prediction(tmp_path):
    """Inference: only the image is loaded; a prediction is inverted with the image's history."""
    affine = oblique_affine()
    case, img, _ = write_pair(tmp_path, (37, 51, 7), affine)
    pre = volume_preprocessing(keys=["image"], patch_size=(64, 64))
    out = pre({"image": case["image"]})
    out["pred"] = (out["image"] > 0.5).to(torch.uint8)
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(out)["pred"]
    assert back.shape == (1, 37, 51, 7)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-5)


def test_resampling_keeps_string_entries_like_monailabels_image_path(tmp_path):
    """MONAI Label's request dict carries ``image_path`` (a string); with a target spacing, MONAI's
    ``Spacingd`` called ``.update`` on it (HTTP 500 on every ``/infer``). It must pass through."""
    affine = oblique_affine()
    case, _, _ = write_pair(tmp_path, (37, 51, 7), affine)
    pre = volume_preprocessing(keys=["image"], patch_size=(64, 64), target_spacing=(2.0, 2.0))
    out = pre({"image": case["image"], "image_path": case["image"], "image_id": 7})
    assert out["image_path"] == case["image"] and out["image_id"] == 7
    assert out["image"].shape == (1, 64, 64, 7)
    out["pred"] = (out["image"] > 0.5).to(torch.uint8)
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(out)["pred"]
    assert back.shape == (1, 37, 51, 7)  # still invertible


# ---------------------------------------------------------------------------------------------
# 2D augmentation


def _slice_pair(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": torch.as_tensor(rng.random((1, 32, 32), dtype=np.float32)),
            "label": torch.as_tensor(rng.integers(0, 4, (1, 32, 32)), dtype=torch.uint8)}


def test_slice_augmentation_keeps_labels_integer_and_aligned():
    aug = slice_augmentation(prob=1.0)
    aug.set_random_state(seed=3)
    # 8x8 blocks of random classes; the image is the label as intensity, so after a joint spatial
    # transform the (bilinear) image rounded must still match the (nearest) label almost everywhere
    blocks = np.random.default_rng(0).integers(0, 4, (4, 4))
    lab = torch.as_tensor(np.kron(blocks, np.ones((8, 8), np.int64))[None], dtype=torch.uint8)
    item = {"image": lab.float() + 1.0, "label": lab}  # +1 so padding (0) is told apart
    out = aug(item)
    assert out["image"].shape == out["label"].shape == (1, 32, 32)
    out_lab, out_img = np.asarray(out["label"]), np.asarray(out["image"])
    assert out["label"].dtype == torch.uint8 and set(np.unique(out_lab)) <= {0, 1, 2, 3}
    assert not np.array_equal(out_img, item["image"].numpy())  # prob=1 changed the slice
    inside = out_img > 0.5
    assert inside.mean() > 0.5
    assert (np.rint(out_img[inside]) - 1 == out_lab[inside]).mean() > 0.85


def test_slice_augmentation_translates_image_and_label_together():
    """translate_px moves a centred heart off the centre (the failure it fixes: a network that only saw
    centred hearts missed an off-centre one entirely), image and label by the same offset, within range."""
    lab = torch.zeros(1, 64, 64, dtype=torch.uint8)
    lab[0, 28:36, 28:36] = 3
    item = {"image": lab.float(), "label": lab}
    offsets = []
    for seed in range(20):
        aug = slice_augmentation(prob=1.0, rotate_deg=0.0, scale=0.0, translate_px=8.0)
        aug.set_random_state(seed=seed)
        # only the affine: the flips would mirror the centred square onto itself anyway
        out = aug.transforms[2](dict(item))
        img_c = np.argwhere(np.asarray(out["image"])[0] > 1.5).mean(axis=0)
        lab_c = np.argwhere(np.asarray(out["label"])[0] == 3).mean(axis=0)
        np.testing.assert_allclose(img_c, lab_c, atol=0.6)
        offsets.append(lab_c - 31.5)
    offsets = np.abs(np.array(offsets))
    assert offsets.max() <= 8.5 and offsets.max() > 4.0  # up to +-8 px, and really used
    still = slice_augmentation(prob=1.0, rotate_deg=0.0, scale=0.0).transforms[2](dict(item))
    assert np.array_equal(np.asarray(still["label"]), lab.numpy())  # default: no translation


def test_slice_augmentation_is_reproducible_and_unlabeled_ok():
    a, b = slice_augmentation(prob=1.0), slice_augmentation(prob=1.0)
    a.set_random_state(seed=7)
    b.set_random_state(seed=7)
    x = _slice_pair()
    np.testing.assert_array_equal(np.asarray(a(dict(x))["image"]), np.asarray(b(dict(x))["image"]))
    out = slice_augmentation(prob=1.0)({"image": x["image"]})
    assert "label" not in out and out["image"].shape == (1, 32, 32)


def test_slice_augmentation_prob_zero_is_identity():
    set_determinism(0)
    try:
        x = _slice_pair()
        out = slice_augmentation(prob=0.0)(dict(x))
        np.testing.assert_array_equal(np.asarray(out["image"]), x["image"].numpy())
        np.testing.assert_array_equal(np.asarray(out["label"]), x["label"].numpy())
    finally:
        set_determinism(None)


def test_intensity_augmentation_changes_the_image_only():
    x = _slice_pair()
    aug = slice_augmentation(prob=1.0, rotate_deg=0.0, scale=0.0, intensity=0.3)
    aug.set_random_state(seed=1)
    out = dict(x)
    for t in aug.transforms[3:6]:  # gamma, contrast, brightness (the flips and affine move label and image alike)
        out = t(out)
    image = np.asarray(out["image"])
    assert not np.allclose(image, x["image"].numpy())  # gamma, contrast and brightness were applied
    assert np.corrcoef(image.ravel(), x["image"].numpy().ravel())[0, 1] > 0.9  # same content
    np.testing.assert_array_equal(np.asarray(out["label"]), x["label"].numpy())
    assert len(slice_augmentation(intensity=0.0).transforms) == len(aug.transforms) - 3  # off by default


# ---------------------------------------------------------------------------------------------
# the canonical in-plane frame


def test_canonical_frame_keeps_the_slice_axis_last_for_an_oblique_stack():
    """A stack whose slice normal is closest to world R is not sliced along another axis."""
    affine = np.array([[0.1, 0.2, -8.0, 0], [0.2, -1.4, 0.3, 0], [-1.4, -0.1, 0.5, 0], [0, 0, 0, 1.0]])
    assert "".join(nib.aff2axcodes(affine)) == "IPL"
    assert slice_axis_axcodes(affine) == ("A", "S", "L")
    assert slice_axis_axcodes(np.diag([-1.0, -1.0, 1.0, 1.0])) == ("R", "A", "S")  # the ACDC release


def test_scanner_row_column_conventions_give_one_network_input(tmp_path):
    """The same heart stored L/P (ACDC), R/A, or with rows and columns swapped reaches the network identically."""
    rng = np.random.default_rng(0)
    volume = rng.random((40, 36, 5)).astype(np.float32) * 100
    lps = np.diag([-1.5, -1.5, 8.0, 1.0])
    variants = {
        "lps": (volume, lps),
        "ras": (volume[::-1, ::-1].copy(), np.diag([1.5, 1.5, 8.0, 1.0]) @ _shift(39, 35)),
        "swapped": (volume.transpose(1, 0, 2).copy(), np.array([[0, -1.5, 0, 0], [-1.5, 0, 0, 0], [0, 0, 8.0, 0], [0, 0, 0, 1]])),
    }
    outs = {}
    for name, (array, affine) in variants.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        pre = volume_preprocessing(keys=["image"], patch_size=(48, 48), target_spacing=None)
        out = pre({"image": path})
        outs[name] = out["image"].numpy()
        back = Invertd(keys="image", transform=pre, orig_keys="image")(out)["image"]
        assert back.shape == (1, *array.shape)
        np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-5)
    np.testing.assert_allclose(outs["ras"], outs["lps"], atol=1e-6)
    np.testing.assert_allclose(outs["swapped"], outs["lps"], atol=1e-6)


def _shift(nx, ny):
    """Translation (in voxels) that puts voxel (nx, ny) of a flipped copy where voxel 0 of the original was."""
    m = np.eye(4)
    m[0, 3], m[1, 3] = -nx, -ny
    return m


def test_empty_target_spacing_keeps_the_input_grid(tmp_path):
    case, _, _ = write_pair(tmp_path, (40, 36, 5), np.diag([0.8, 0.8, 8.0, 1.0]))
    out = volume_preprocessing(keys=["image"], patch_size=(40, 36), target_spacing=[])({"image": case["image"]})
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0), (0.8, 0.8, 8.0))
