"""Uploaded images are checked from their header: bad files and over-limit ones refused in one line, naming
the client's file name, before any voxel is read."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ideal_monai.errors import IdealInputError
from ideal_monai.label.uploads import UploadLimits, check_upload, decompressed_bytes


def _nifti(path, shape=(40, 36, 8), dtype=np.int16, value=None):
    data = np.zeros(shape, dtype) if value is not None else np.random.default_rng(0).integers(0, 900, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 8.0, 1.0])), str(path))
    return path


def test_a_cine_passes_and_reports_its_voxel_bytes(tmp_path):
    path = _nifti(tmp_path / "cine.nii.gz", shape=(64, 64, 10, 20))
    assert check_upload(path, UploadLimits()) == 64 * 64 * 10 * 20 * 2
    mha = tmp_path / "vol.mha"
    sitk.WriteImage(sitk.Image([30, 20, 5], sitk.sitkFloat32), str(mha))
    assert decompressed_bytes(mha) == 30 * 20 * 5 * 4


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x00\x01not an image at all" * 10, "is not a readable NIfTI file"),
])
def test_bad_bytes_are_refused_naming_the_clients_file(tmp_path, content, message):
    path = tmp_path / "upload.nii.gz"
    path.write_bytes(content)
    with pytest.raises(IdealInputError) as err:
        check_upload(path, UploadLimits(), name="scan.nii.gz")
    assert str(err.value).startswith("scan.nii.gz: ") and message in str(err.value) and "\n" not in str(err.value)


def test_unknown_format_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(IdealInputError, match="not an image file of a format accepted here"):
        check_upload(path, UploadLimits())


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """A header announcing 512 x 512 x 64 x 8 float32 voxels (512 MiB) of zeros: a few hundred kB of gzip."""
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 64, 8))
    header.set_data_dtype(np.float32)
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header.binaryblock + b"\x00" * 4)  # the 348-byte header, the extension flag, then the voxels
        zeros = b"\x00" * (1 << 24)
        for _ in range(32):
            f.write(zeros)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(IdealInputError, match="decompression bomb"):
        check_upload(path, UploadLimits(), name="bomb.nii.gz")
    with pytest.raises(IdealInputError, match="over the limit of 100 MiB"):
        check_upload(path, UploadLimits(max_image_mb=100, max_ratio=1e9))


def test_upload_size_limit(tmp_path):
    path = _nifti(tmp_path / "big.nii", shape=(128, 128, 40))  # uncompressed: 1.25 MiB
    with pytest.raises(IdealInputError, match="over the upload limit of 1 MiB"):
        check_upload(path, UploadLimits(max_upload_mb=1))


@pytest.mark.parametrize("field", ["max_upload_mb", "max_image_mb", "max_ratio"])
def test_limits_must_be_positive(field):
    with pytest.raises(IdealInputError, match=field):
        UploadLimits(**{field: 0})


@pytest.mark.parametrize("name, header", [
    ("evil.mha", "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = /etc/passwd\n"),
    ("evil.nrrd", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: /etc/passwd\n\n"),
])
def test_a_header_naming_another_file_for_its_voxels_is_refused(tmp_path, name, header):
    """On a server that would read whatever file the header names, outside the upload."""
    path = tmp_path / name
    path.write_text(header)
    with pytest.raises(IdealInputError, match="names another file for its voxels"):
        check_upload(path, UploadLimits())


def test_detached_header_formats_are_not_accepted(tmp_path):
    path = tmp_path / "vol.mhd"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = vol.raw\n")
    with pytest.raises(IdealInputError, match="not an image file of a format accepted here"):
        check_upload(path, UploadLimits())
