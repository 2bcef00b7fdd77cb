"""DICOM MR series in: geometry and phase order against the phantom, discovery, and the bad-input corpus."""

from __future__ import annotations

import shutil
import struct

import nibabel as nib
import numpy as np
import pytest

from ideal_monai.data import discover_cases, load_volume
from ideal_monai.data.dicom import dicom_files, read_dicom_series, write_dicom_series
from ideal_monai.data.io import voxel_spacing
from ideal_monai.data.synthetic import write_synthetic_dicom
from ideal_monai.errors import IdealInputError


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory):
    """One phantom cine (6 phases) written as an oblique DICOM series with shuffled files and per-position trigger offsets."""
    root = tmp_path_factory.mktemp("dicom")
    (folder, case, affine), = write_synthetic_dicom(root, num_cases=1, seed=3, num_frames=6)
    return folder, case, affine


def test_series_becomes_the_phantom_cine_with_its_oblique_geometry(phantom_dicom):
    folder, case, affine = phantom_dicom
    series = read_dicom_series(folder)
    np.testing.assert_array_equal(series.array, case.cine)  # positions and phases in the phantom's order
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    assert not np.allclose(np.abs(affine[:3, :3]), np.diag(np.abs(np.diag(affine[:3, :3]))), atol=0.1)  # oblique
    assert series.info["phase_order"] == "TriggerTime" and series.info["num_files"] == case.cine.shape[2] * 6
    assert series.info["patient_sex"] in ("M", "F") and 1.5 < series.info["patient_size_m"] < 2.0
    times = series.trigger_times_ms
    assert len(times) == 6 and all(b > a for a, b in zip(times, times[1:]))


def test_writing_and_reading_leave_the_process_text_encoding_alone(tmp_path):
    """GDCM's writer sets LC_CTYPE to "C" (ASCII text I/O for the rest of the process) unless it is restored."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(np.ones((8, 8, 2, 2), np.int16), np.eye(4), tmp_path / "s", compressed=True)
    read_dicom_series(tmp_path / "s")
    assert locale.setlocale(locale.LC_ALL) == before


def test_trigger_time_orders_phases_where_positions_are_offset(tmp_path):
    """Offsets larger than a phase step between positions: sorting all files by trigger time would mix phases."""
    cine = np.random.default_rng(0).integers(0, 1000, size=(20, 18, 4, 5)).astype(np.int16)
    trigger = np.arange(5)[None, :] * 30.0 + np.array([0.0, 45.0, 95.0, 140.0])[:, None]
    write_dicom_series(cine, np.diag([1.2, 1.2, 7.0, 1.0]), tmp_path, trigger_times_ms=trigger, shuffle_seed=2)
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, cine)


def test_discovery_reads_a_series_folder_and_a_folder_of_patient_folders(phantom_dicom):
    folder, case, affine = phantom_dicom
    for root in (folder, folder.parent):
        cases = discover_cases(root)
        assert [c["case_id"] for c in cases] == [f"{folder.name}_4d_t{t:02d}" for t in range(6)]
        assert {c["patient_id"] for c in cases} == {folder.name}
        assert cases[0]["dicom"]["series_uid"] and cases[0]["dicom"]["source"] == str(folder)
    frame = load_volume(cases[2]["image"], frame=2)
    np.testing.assert_array_equal(frame[0].numpy(), case.cine[..., 2])
    assert voxel_spacing(frame) == pytest.approx(case.spacing, rel=1e-5)
    assert not any(p.suffix != ".dcm" for p in folder.iterdir())  # nothing written into the input folder


def test_several_series_need_series_uid(phantom_dicom, tmp_path):
    folder, case, _ = phantom_dicom
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    write_dicom_series(case.cine[..., :2], np.diag([1.5, 1.5, 8.0, 1.0]), mixed, series_number=77, shuffle_seed=5,
                       tags={"0008|103e": "localizer"})
    with pytest.raises(IdealInputError, match="2 image series: choose one with --series_uid") as info:
        discover_cases(mixed)
    assert info.value.where == str(mixed) and "\n" not in str(info.value)
    uid = read_dicom_series(folder).info["series_uid"]
    chosen = discover_cases(mixed, series_uid=uid)
    assert len(chosen) == 6 and chosen[0]["dicom"]["series_uid"] == uid
    with pytest.raises(IdealInputError, match="has no series '9.9.9'"):
        discover_cases(mixed, series_uid="9.9.9")


# ---------------------------------------------------------------------------------------------
# the bad-input corpus: one line naming the folder


def _expect(folder, match):
    with pytest.raises(IdealInputError, match=match) as info:
        discover_cases(folder)
    assert info.value.where == str(folder) and "\n" not in str(info.value)


def _small_series(folder, affine=None, phases=3, **kwargs):
    cine = np.random.default_rng(1).integers(0, 1000, size=(16, 14, 3, phases)).astype(np.int16)
    return write_dicom_series(cine, np.diag([1.4, 1.4, 8.0, 1.0]) if affine is None else affine, folder, **kwargs)


def test_positions_with_different_numbers_of_phases(tmp_path):
    files = _small_series(tmp_path / "s", shuffle_seed=None)
    files[-1].unlink()  # the last phase of the last position
    _expect(tmp_path / "s", "different numbers of phases")


def test_mixed_orientations(tmp_path):
    _small_series(tmp_path / "s")
    tilted = np.eye(4)
    tilted[:3, :3] = np.array([[0.8, -0.6, 0], [0.6, 0.8, 0], [0, 0, 1.0]]) * [1.4, 1.4, 8.0]
    tilted[2, 3] = 100.0
    _small_series(tmp_path / "s", tilted, shuffle_seed=9)  # same series UID, another orientation
    _expect(tmp_path / "s", "mixed orientations")


def test_mixed_pixel_spacings(tmp_path):
    _small_series(tmp_path / "s")
    other = np.diag([1.1, 1.1, 8.0, 1.0])
    other[2, 3] = 100.0
    _small_series(tmp_path / "s", other, shuffle_seed=9)
    _expect(tmp_path / "s", "mixed pixel spacings")


def test_uneven_slice_gaps(tmp_path):
    cine = np.zeros((16, 14, 5, 2), np.int16) + np.arange(5)[None, None, :, None]
    files = write_dicom_series(cine, np.diag([1.4, 1.4, 8.0, 1.0]), tmp_path / "s")
    for f in files[4:6]:  # position 2 of 5 is missing
        f.unlink()
    _expect(tmp_path / "s", "not evenly spaced")


def test_not_mr(tmp_path):
    _small_series(tmp_path / "s", tags={"0008|0060": "CT"})
    _expect(tmp_path / "s", r"is not MR \(Modality CT\)")


def _explicit(tag_group, tag_element, vr, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH", tag_group, tag_element) + vr + struct.pack("<H", len(value)) + value


def test_non_image_object(tmp_path):
    """A structured report (no pixel data) where an image series is expected."""
    folder = tmp_path / "sr"
    folder.mkdir()
    sr_class = b"1.2.840.10008.5.1.4.1.1.88.11"
    meta = (_explicit(2, 2, b"UI", sr_class) + _explicit(2, 3, b"UI", b"1.2.3.4.5.6.7")
            + _explicit(2, 0x10, b"UI", b"1.2.840.10008.1.2.1"))
    meta = _explicit(2, 0, b"UL", b"")[:6] + struct.pack("<H", 4) + struct.pack("<I", len(meta)) + meta
    body = (_explicit(8, 0x16, b"UI", sr_class) + _explicit(8, 0x18, b"UI", b"1.2.3.4.5.6.7")
            + _explicit(8, 0x60, b"CS", b"SR") + _explicit(0x20, 0x0D, b"UI", b"1.2.3.4")
            + _explicit(0x20, 0x0E, b"UI", b"1.2.3.4.5"))
    (folder / "report.dcm").write_bytes(b"\x00" * 128 + b"DICM" + meta + body)
    _expect(folder, "not images")


def test_multi_frame_object_is_refused_not_cut_to_its_first_frame(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, size=(4, 12, 10)).astype(np.int16))
    for key, value in {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0020|000e": "1.2.3.9"}.items():
        image.SetMetaData(key, value)
    (tmp_path / "s").mkdir()
    sitk.WriteImage(image, str(tmp_path / "s" / "enhanced.dcm"))
    _expect(tmp_path / "s", r"enhanced.dcm is a multi-frame \(enhanced\) DICOM object; export the series as one file")


def test_compressed_series_a_decoder_reads(tmp_path):
    cine = np.random.default_rng(4).integers(0, 1000, size=(16, 14, 3, 2)).astype(np.int16)
    write_dicom_series(cine, np.diag([1.4, 1.4, 8.0, 1.0]), tmp_path / "s", compressed=True)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, cine)  # JPEG 2000 lossless


def test_compressed_pixel_data_no_decoder_reads(tmp_path):
    files = _small_series(tmp_path / "s", shuffle_seed=None, compressed=True)
    for f in files:  # claim MPEG-2 for the encapsulated pixel data: a transfer syntax GDCM does not decode
        raw = f.read_bytes()
        at = raw.index(b"\x02\x00\x10\x00UI")
        old = raw[at:at + 8 + struct.unpack("<H", raw[at + 6:at + 8])[0]]
        new = _explicit(2, 0x10, b"UI", b"1.2.840.10008.1.2.4.100")
        group_length_at = raw.index(b"\x02\x00\x00\x00UL") + 8
        length = struct.unpack("<I", raw[group_length_at:group_length_at + 4])[0] + len(new) - len(old)
        raw = raw[:group_length_at] + struct.pack("<I", length) + raw[group_length_at + 4:]
        f.write_bytes(raw.replace(old, new, 1))
    _expect(tmp_path / "s", r"cannot be decoded \(transfer syntax 1.2.840.10008.1.2.4.100, MPEG2\)")


def test_folder_without_dicom_files_is_not_a_series(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "notes.txt").write_text("no images")
    with pytest.raises(IdealInputError, match="contains no images"):
        discover_cases(tmp_path)
    assert dicom_files(tmp_path) == []


def test_converted_copy_is_not_in_the_input_and_header_is_the_series_geometry(phantom_dicom):
    folder, case, affine = phantom_dicom
    image = discover_cases(folder)[0]["image"]
    assert folder not in image.parents
    img = nib.load(str(image))
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
    assert img.shape == case.cine.shape
    uid = read_dicom_series(folder).info["series_uid"]
    assert img.header["descrip"].tobytes().rstrip(b"\x00").decode() == f"SeriesInstanceUID {uid}"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    import torch

    from ideal_monai.networks import DualDecoderUNet

    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=[4, 8, 8, 8, 8]).state_dict(), path)
    return path


def _bad_folders(root, phantom):
    folder, case, _ = phantom
    several = root / "several" / "p1"
    shutil.copytree(folder, several)
    write_dicom_series(case.cine[..., :2], np.diag([1.5, 1.5, 8.0, 1.0]), several, series_number=77, shuffle_seed=5)
    not_mr = root / "not_mr" / "p1"
    _small_series(not_mr, tags={"0008|0060": "CT"})
    gaps = root / "gaps" / "p1"
    files = write_dicom_series(np.zeros((16, 14, 5, 2), np.int16) + 5, np.diag([1.4, 1.4, 8.0, 1.0]), gaps)
    for f in files[4:6]:
        f.unlink()
    return {"several series": (several, "image series: choose one with --series_uid"),
            "not MR": (not_mr, "is not MR"), "uneven gaps": (gaps, "not evenly spaced")}


@pytest.mark.parametrize("command", ["infer", "function"])
def test_bad_series_on_the_command_line_is_one_line_exit_1_no_output(phantom_dicom, small_model, tmp_path, capsys, command):
    import hashlib

    from ideal_monai.cli import main

    for name, (folder, message) in _bad_folders(tmp_path / "in", phantom_dicom).items():
        digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        out = tmp_path / "out" / name.replace(" ", "_")
        argv = [command, "--dataset_dir", str(folder.parent), "--output_dir", str(out), "--model_path", str(small_model),
                "--features", "[4, 8, 8, 8, 8]", "--patch_size", "[32, 32]"]
        capsys.readouterr()
        assert main(argv) == 1, name
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and str(folder) in err[0] and message in err[0], (name, err)
        assert not out.exists() or not any(out.rglob("*.nii.gz")), name  # no partial output
        assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == digest  # input untouched


def _dicom_copies() -> set:
    import tempfile
    from pathlib import Path

    return set(Path(tempfile.gettempdir()).glob("ideal_monai_dicom_*/*/*.nii.gz"))


@pytest.mark.parametrize("command", ["infer", "function"])
def test_each_series_is_read_when_the_run_gets_to_it_and_a_bad_one_fails_alone(phantom_dicom, small_model, tmp_path,
                                                                               capsys, command):
    """A cohort of DICOM series: listed without reading them (a bad series no longer stops the run before it
    starts), each read when segmented and its NIfTI copy deleted afterwards (thousands would fill /tmp)."""
    from ideal_monai.cli import main

    folder, case, _ = phantom_dicom
    cohort = tmp_path / "cohort"
    for name in ("p1", "p3"):
        shutil.copytree(folder, cohort / name)
    _small_series(cohort / "p2", tags={"0008|0060": "CT"})
    before = _dicom_copies()
    out = tmp_path / "out"
    argv = [command, "--dataset_dir", str(cohort), "--output_dir", str(out), "--model_path",
            str(small_model), "--features", "[4, 8, 8, 8, 8]", "--patch_size", "[32, 32]"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"{cohort / 'p2'}" in captured.err and "is not MR" in captured.err
    segmentations = out if command == "infer" else out / "segmentations"
    assert sorted(p.name for p in segmentations.glob("*.nii.gz")) == ["p1.nii.gz", "p3.nii.gz"]
    assert nib.load(str(segmentations / "p1.nii.gz")).shape == case.cine.shape
    if command == "infer":
        assert "3 case(s): 2 done, 1 failed, 0 left" in captured.err
    else:
        assert "2 of 3 patient(s) computed" in captured.out
    assert _dicom_copies() <= before, "the NIfTI copies of the segmented series must be deleted"
