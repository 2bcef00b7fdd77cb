"""Validated volume I/O: load_volume, read_array, voxel_spacing, read_shape, check_same_grid, save_label_like."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ideal_monai.data.io import check_same_grid, load_volume, read_array, read_shape, save_label_like, voxel_spacing
from ideal_monai.errors import IdealInputError


def oblique_affine(spacing=(1.3, 0.9, 6.0), flip_axis: int = 1) -> np.ndarray:
    """A rotated (about all three axes), axis-flipped, non-unit-spacing, translated affine."""
    def rot(axis, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    zooms = np.array(spacing, dtype=float)
    zooms[flip_axis] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rot(0, 20) @ rot(1, -35) @ rot(2, 50) @ np.diag(zooms)
    affine[:3, 3] = (-12.5, 40.25, 7.75)
    return affine


def save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def image(shape=(9, 8, 3), seed=0):
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def assert_one_line_error(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert excinfo.value.where == str(path)


# ---------------------------------------------------------------------------------------------
# reading good files


def test_load_image_channel_first_float_with_affine(tmp_path):
    arr, affine = image(), oblique_affine()
    path = save(tmp_path / "img.nii.gz", arr.astype(np.int16), affine)
    vol = load_volume(path)
    assert vol.shape == (1, 9, 8, 3) and vol.dtype == torch.float32
    np.testing.assert_array_equal(vol[0].numpy(), arr.astype(np.int16))
    np.testing.assert_allclose(np.asarray(vol.affine), affine, atol=1e-5)
    assert vol.meta["filename_or_obj"] == str(path)
    assert read_shape(path) == (9, 8, 3)


def test_load_label_uint8(tmp_path):
    lab = np.random.default_rng(1).integers(0, 4, size=(9, 8, 3)).astype(np.int16)
    vol = load_volume(save(tmp_path / "lab.nii.gz", lab), is_label=True)
    assert vol.dtype == torch.uint8
    np.testing.assert_array_equal(vol[0].numpy(), lab)


def test_float_label_with_integer_values_is_accepted(tmp_path):
    lab = np.random.default_rng(1).integers(0, 4, size=(5, 5, 2)).astype(np.float32)
    vol = load_volume(save(tmp_path / "lab.nii.gz", lab), is_label=True)
    np.testing.assert_array_equal(vol[0].numpy(), lab.astype(np.uint8))


def test_cine_frames(tmp_path):
    cine = image((6, 5, 3, 4))
    path = save(tmp_path / "p_4d.nii.gz", cine)
    assert read_shape(path) == (6, 5, 3, 4)
    for t in (0, 3):
        vol = load_volume(path, frame=t)
        assert vol.shape == (1, 6, 5, 3) and vol.meta["frame"] == t
        np.testing.assert_array_equal(vol[0].numpy(), cine[..., t])
    with pytest.raises(IdealInputError, match="pass a frame index"):
        load_volume(path)
    with pytest.raises(IdealInputError, match="out of range"):
        load_volume(path, frame=4)


def test_3d_file_refuses_a_frame_other_than_zero(tmp_path):
    path = save(tmp_path / "img.nii.gz", image())
    assert load_volume(path, frame=0).shape == (1, 9, 8, 3)
    with pytest.raises(IdealInputError, match="frame 2"):
        load_volume(path, frame=2)


def test_trailing_singleton_axis_is_a_3d_volume(tmp_path):
    arr = image((6, 5, 3, 1))
    vol = load_volume(save(tmp_path / "img.nii.gz", arr))
    assert vol.shape == (1, 6, 5, 3)
    np.testing.assert_array_equal(vol[0].numpy(), arr[..., 0])


def test_unicode_and_spaces_in_path(tmp_path):
    folder = tmp_path / "données IRM" / "patient ü 1"
    folder.mkdir(parents=True)
    arr = image()
    path = save(folder / "cœur frame 01.nii.gz", arr)
    np.testing.assert_array_equal(load_volume(path)[0].numpy(), arr)
    bad = folder / "cœur vide.nii.gz"
    bad.write_bytes(b"")
    with pytest.raises(IdealInputError) as excinfo:
        load_volume(bad)
    assert_one_line_error(excinfo, bad)


def test_symlinked_file(tmp_path):
    arr = image()
    (tmp_path / "store").mkdir()
    target = save(tmp_path / "store" / "blob.nii.gz", arr)
    link = tmp_path / "case.nii.gz"
    link.symlink_to(target)
    vol = load_volume(link)
    np.testing.assert_array_equal(vol[0].numpy(), arr)
    assert vol.meta["filename_or_obj"] == str(link)  # errors and outputs name the path the user gave


# ---------------------------------------------------------------------------------------------
# ITK formats: same array and a consistent (RAS) affine as NIfTI


def _sitk_image(arr_xyz: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.transpose(arr_xyz, (2, 1, 0)))  # SimpleITK arrays are (Z, Y, X)
    direction = oblique_affine(spacing=(1, 1, 1))[:3, :3]
    img.SetDirection(tuple(direction.ravel()))
    img.SetSpacing((1.3, 0.9, 6.0))
    img.SetOrigin((-12.5, 40.25, 7.75))
    return img


def test_read_array_keeps_stored_dtype_and_values(tmp_path):
    """read_array is the raw reader for callers with their own value rules (evaluation labels up to any class)."""
    labels = np.zeros((6, 5, 3, 1), np.int16)
    labels[1:3, 1:3, 1] = 7  # outside ACDC's 0..3: load_volume(is_label=True) refuses it, read_array does not
    vol = read_array(save(tmp_path / "lab.nii.gz", labels, np.diag([1.5, 0.75, 6.0, 1.0])))
    assert vol.shape == (6, 5, 3) and vol.dtype == torch.int16
    np.testing.assert_array_equal(vol.numpy(), labels[..., 0])
    np.testing.assert_allclose(np.asarray(vol.affine), np.diag([1.5, 0.75, 6.0, 1.0]))
    with pytest.raises(IdealInputError, match="zero-length"):
        read_array(save(tmp_path / "empty.nii.gz", np.zeros((4, 0, 3), np.uint8)))


def test_voxel_spacing_from_nifti_header_and_from_itk_affine(tmp_path):
    img = nib.Nifti1Image(image((6, 5, 3)), oblique_affine((1.3, 0.9, 6.0)))
    nib.save(img, str(tmp_path / "img.nii.gz"))
    expected = tuple(float(z) for z in nib.load(str(tmp_path / "img.nii.gz")).header.get_zooms())
    assert voxel_spacing(read_array(tmp_path / "img.nii.gz")) == pytest.approx(expected)
    assert voxel_spacing(load_volume(tmp_path / "img.nii.gz")) == pytest.approx((1.3, 0.9, 6.0), abs=1e-5)
    sitk.WriteImage(_sitk_image(image((6, 5, 3)).astype(np.int16)), str(tmp_path / "img.mha"))
    assert voxel_spacing(read_array(tmp_path / "img.mha")) == pytest.approx(_sitk_image(image((6, 5, 3))).GetSpacing())


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_match_nifti(tmp_path, suffix):
    arr = image((7, 6, 4)).astype(np.int16)
    img = _sitk_image(arr)
    sitk.WriteImage(img, str(tmp_path / f"img{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "img.nii.gz"))  # ITK's NIfTI writer converts LPS -> RAS itself

    itk_vol, nii_vol = load_volume(tmp_path / f"img{suffix}"), load_volume(tmp_path / "img.nii.gz")
    assert read_shape(tmp_path / f"img{suffix}") == (7, 6, 4)
    np.testing.assert_array_equal(itk_vol.numpy(), nii_vol.numpy())
    np.testing.assert_array_equal(itk_vol[0].numpy(), arr)
    np.testing.assert_allclose(np.asarray(itk_vol.affine), np.asarray(nii_vol.affine), atol=1e-4)

    # Independent check: voxel (i, j, k) maps to ITK's physical point, with LPS -> RAS sign flips.
    ijk = (3, 1, 2)
    lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
    ras = (np.asarray(itk_vol.affine) @ np.array([*ijk, 1.0]))[:3]
    np.testing.assert_allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-4)


def test_itk_label_validated_like_nifti(tmp_path):
    lab = np.zeros((5, 5, 2), np.uint8)
    lab[0, 0, 0] = 7
    path = tmp_path / "lab.mha"
    sitk.WriteImage(_sitk_image(lab), str(path))
    with pytest.raises(IdealInputError, match=r"outside \{0,1,2,3\}.*\[7\]") as excinfo:
        load_volume(path, is_label=True)
    assert_one_line_error(excinfo, path)


# ---------------------------------------------------------------------------------------------
# bad input: one-line IdealInputError naming the file


def _good_gz(tmp_path) -> bytes:
    return save(tmp_path / "good.nii.gz", image((20, 20, 4))).read_bytes()


BAD_FILES = {
    "random bytes .nii.gz": lambda d: (d / "x.nii.gz").write_bytes(os.urandom(2000)),
    "random bytes .nii": lambda d: (d / "x.nii").write_bytes(os.urandom(2000)),
    "random bytes .mha": lambda d: (d / "x.mha").write_bytes(os.urandom(2000)),
    "truncated .nii.gz": lambda d: (d / "x.nii.gz").write_bytes(_good_gz(d)[: len(_good_gz(d)) // 2]),
    "truncated header .nii.gz": lambda d: (d / "x.nii.gz").write_bytes(_good_gz(d)[:100]),
    "truncated .nii": lambda d: (d / "x.nii").write_bytes(gzip.decompress(_good_gz(d))[:1000]),
    "empty file": lambda d: (d / "x.nii.gz").write_bytes(b""),
    "directory": lambda d: (d / "x.nii.gz").mkdir(),
    "broken symlink": lambda d: (d / "x.nii.gz").symlink_to(d / "gone.nii.gz"),
    "not an image type": lambda d: (d / "x.png").write_bytes(b"\x89PNG...."),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("is_label", [False, True])
def test_unreadable_files(tmp_path, kind, is_label):
    BAD_FILES[kind](tmp_path)
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("x."))
    with pytest.raises(IdealInputError) as excinfo:
        load_volume(path, is_label=is_label)
    assert_one_line_error(excinfo, path)


def test_missing_file(tmp_path):
    with pytest.raises(IdealInputError, match="does not exist") as excinfo:
        read_shape(tmp_path / "nope.nii.gz")
    assert_one_line_error(excinfo, tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("bad", [4, 255, -1])
def test_label_values_outside_classes(tmp_path, bad):
    lab = np.zeros((6, 6, 2), np.int16)
    lab[2, 3, 1] = bad
    path = save(tmp_path / "lab.nii.gz", lab)
    with pytest.raises(IdealInputError, match=rf"outside .*\[{bad}\]") as excinfo:
        load_volume(path, is_label=True)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("value, match", [(1.5, "non-integer"), (np.nan, "NaN"), (2.0000001, "non-integer")])
def test_non_integer_float_labels(tmp_path, value, match):
    lab = np.ones((6, 6, 2), np.float64)
    lab[1, 1, 1] = value
    path = save(tmp_path / "lab.nii.gz", lab)
    with pytest.raises(IdealInputError, match=match) as excinfo:
        load_volume(path, is_label=True)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_image(tmp_path, value):
    arr = image()
    arr[3, 2, 1] = value
    path = save(tmp_path / "img.nii.gz", arr)
    with pytest.raises(IdealInputError, match="1 NaN/Inf") as excinfo:
        load_volume(path)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("shape, match", [
    ((9, 8), "2D"),
    ((4, 4, 3, 2, 2), "5D"),
    ((0, 5, 5), "zero-length"),
    ((5, 5, 0), "zero-length"),
])
def test_bad_dimensionality(tmp_path, shape, match):
    arr = np.random.default_rng(0).random(shape).astype(np.float32)
    path = save(tmp_path / "img.nii.gz", arr)
    with pytest.raises(IdealInputError, match=match) as excinfo:
        load_volume(path)
    assert_one_line_error(excinfo, path)


def test_constant_image(tmp_path):
    path = save(tmp_path / "img.nii.gz", np.full((6, 6, 3), 7, np.int16))
    with pytest.raises(IdealInputError, match="constant image") as excinfo:
        load_volume(path)
    assert_one_line_error(excinfo, path)
    # a constant *label* (all background) is legitimate
    assert load_volume(save(tmp_path / "lab.nii.gz", np.zeros((6, 6, 3), np.uint8)), is_label=True).sum() == 0


# ---------------------------------------------------------------------------------------------
# image / label grid


def test_same_grid_accepts_matching_and_tiny_float_noise(tmp_path):
    affine = oblique_affine()
    img = load_volume(save(tmp_path / "img.nii.gz", image(), affine))
    noisy = affine.copy()
    noisy[0, 0] += 1e-5  # float32 header round-off
    check_same_grid(img, load_volume(save(tmp_path / "lab.nii.gz", np.zeros((9, 8, 3), np.uint8), noisy), is_label=True))


def test_shape_mismatch_names_label(tmp_path):
    img = load_volume(save(tmp_path / "img.nii.gz", image()))
    lab_path = save(tmp_path / "lab.nii.gz", np.zeros((9, 8, 4), np.uint8))
    with pytest.raises(IdealInputError, match=r"shape \(9, 8, 4\) differs .*img.nii.gz") as excinfo:
        check_same_grid(img, load_volume(lab_path, is_label=True))
    assert_one_line_error(excinfo, lab_path)


def test_affine_mismatch_names_label(tmp_path):
    img = load_volume(save(tmp_path / "img.nii.gz", image(), oblique_affine()))
    shifted = oblique_affine()
    shifted[1, 3] += 0.5
    lab_path = save(tmp_path / "lab.nii.gz", np.zeros((9, 8, 3), np.uint8), shifted)
    with pytest.raises(IdealInputError, match="affine differs") as excinfo:
        check_same_grid(img, load_volume(lab_path, is_label=True))
    assert_one_line_error(excinfo, lab_path)


# ---------------------------------------------------------------------------------------------
# writing predictions on the input grid


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_save_label_like_nifti_reference(tmp_path, name):
    ref = save(tmp_path / "img.nii.gz", image().astype(np.int16), oblique_affine())
    lab = np.random.default_rng(0).integers(0, 4, size=(9, 8, 3))
    out = save_label_like(torch.as_tensor(lab), ref, tmp_path / "out" / name)
    written = nib.load(str(out))
    assert written.shape == (9, 8, 3) and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), lab)
    np.testing.assert_allclose(written.affine, nib.load(str(ref)).affine, atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temporary file left behind


def test_save_label_like_itk_reference_keeps_grid(tmp_path):
    ref = tmp_path / "img.mha"
    sitk.WriteImage(_sitk_image(image((7, 6, 4)).astype(np.int16)), str(ref))
    lab = np.random.default_rng(0).integers(0, 4, size=(7, 6, 4))
    out = load_volume(save_label_like(lab, ref, tmp_path / "pred.nii.gz"), is_label=True)
    np.testing.assert_array_equal(out[0].numpy(), lab)
    np.testing.assert_allclose(np.asarray(out.affine), np.asarray(load_volume(ref).affine), atol=1e-4)


def test_save_label_like_shapes(tmp_path):
    ref = save(tmp_path / "img.nii.gz", image())
    with pytest.raises(ValueError, match="shape"):
        save_label_like(np.zeros((9, 8, 4)), ref, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()
    probs = np.random.default_rng(0).random((9, 8, 3, 4)).astype(np.float32)  # classes last
    out = save_label_like(probs, ref, tmp_path / "probs.nii.gz", dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), probs)


# ---------------------------------------------------------------------------------------------
# the ACDC release's header quirk: real spacing in pixdim, a unit-scaled sform (code 2), no qform


def save_with_unit_sform(path, array, spacing=(1.37, 1.37, 10.0)):
    """A NIfTI file written the way the ACDC organisers' files are: pixdim real, sform -1/-1/1, qform_code 0."""
    img = nib.Nifti1Image(np.asarray(array), np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms(spacing)
    img.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    img.header.set_qform(None, code=0)
    img.header["pixdim"][1:4] = spacing
    nib.save(img, str(path))
    return path


def test_unit_sform_quirk_spacing_comes_from_pixdim_logged_once_per_file(tmp_path, caplog):
    import logging

    path = save_with_unit_sform(tmp_path / "quirk.nii.gz", image((12, 10, 4)))
    assert nib.load(str(path)).affine[0, 0] == -1.0  # what readers that trust the sform see
    with caplog.at_level(logging.INFO, logger="ideal_monai.data.io"):
        first, second = load_volume(path), load_volume(path)
    assert voxel_spacing(first) == pytest.approx((1.37, 1.37, 10.0))
    assert voxel_spacing(first) == pytest.approx(sitk.ReadImage(str(path)).GetSpacing())  # as ITK reads it
    np.testing.assert_allclose(np.linalg.norm(np.asarray(first.affine)[:3, :3], axis=0), (1.37, 1.37, 10.0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(second.affine), np.asarray(first.affine))
    quirk_lines = [r.getMessage() for r in caplog.records if "disagrees with pixdim" in r.getMessage()]
    assert len(quirk_lines) == 1 and str(path) in quirk_lines[0] and "sform" in quirk_lines[0]


def test_no_quirk_line_for_consistent_headers(tmp_path, caplog):
    import logging

    path = save(tmp_path / "fine.nii.gz", image(), oblique_affine())
    with caplog.at_level(logging.INFO, logger="ideal_monai.data.io"):
        load_volume(path)
    assert not [r for r in caplog.records if "disagrees with pixdim" in r.getMessage()]


def test_label_written_on_a_quirk_file_has_the_input_header(tmp_path):
    """Shape, pixdim, sform and qform (codes included) of the output equal the input's."""
    ref = save_with_unit_sform(tmp_path / "img.nii.gz", image((12, 10, 4)).astype(np.int16))
    lab = np.random.default_rng(1).integers(0, 4, size=(12, 10, 4))
    out = nib.load(str(save_label_like(lab, ref, tmp_path / "pred.nii.gz")))
    src = nib.load(str(ref))
    assert out.shape == src.shape
    for key in ("pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "qoffset_y", "qoffset_z", "sform_code", "qform_code", "xyzt_units"):
        np.testing.assert_array_equal(out.header[key], src.header[key], err_msg=key)
    np.testing.assert_array_equal(np.asarray(out.dataobj), lab)
    assert voxel_spacing(load_volume(out.get_filename(), is_label=True)) == pytest.approx((1.37, 1.37, 10.0))
