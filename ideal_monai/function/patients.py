"""The patients of a ``function`` run and their files: frames, 4D cine, ``Info.cfg``, labels.

A patient is the grouping of :func:`~ideal_monai.data.discover_cases` (one ACDC folder, one DICOM
series, one 4D file); its ED/ES frames come from ``_frameYY`` names and ACDC's ``Info.cfg``. A DICOM
series is listed, not read (``dicom_folder``): :func:`read_patient_series` reads it when the run gets to
the patient and :func:`release_patient_series` deletes its NIfTI copy after, so a cohort of thousands of
series starts at once, keeps the copies of one chunk of patients per process, and a bad series fails its
patient alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..data.dicom import dicom_series_as_nifti, release_nifti_copy
from ..data.discovery import discover_cases
from ..data.io import IMAGE_SUFFIXES, check_same_grid, load_volume, read_shape, strip_image_suffix, voxel_spacing
from ..errors import IdealInputError
from .indices import volume_unit

__all__ = ["function_patients", "label_file", "label_frames", "read_info_cfg", "read_patient_series",
           "release_patient_series"]

_FRAME = re.compile(r"_frame(?P<frame>\d+)$")


def read_info_cfg(path: Path) -> dict[str, int | float | str]:
    """``{"ED": n, "ES": m}`` (1-based frame numbers) from an ACDC ``Info.cfg`` (``ED: 1`` lines), with
    ``Height`` (cm) and ``Weight`` (kg) as numbers and ``Group`` as text where the file has them."""
    out: dict[str, int | float | str] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key in ("ED", "ES"):
            try:
                out[key] = int(float(value))
            except ValueError:
                raise IdealInputError(path, f"{key} is not a frame number: {value!r}") from None
        elif key in ("Height", "Weight"):
            try:
                out[key] = float(value)
            except ValueError:
                raise IdealInputError(path, f"{key} is not a number: {value!r}") from None
        elif key == "Group":
            out[key] = value
    return out


def function_patients(dataset_dir: str | Path, series_uid: str | None = None) -> list[dict]:
    """Patients of ``dataset_dir``: ``{"patient_id", "cine": path | None, "frames": {n: case}, "info": path | None,
    "dicom": series info | None, "dicom_folder": path | None, "series_uid", "error": IdealInputError | None}``
    (``error``: a file of the patient could not be read; ``dicom_folder``: a DICOM series not read yet, see
    :func:`read_patient_series`; ``dicom``: its identifiers and patient tags once read, see :mod:`ideal_monai.data.dicom`).

    ``frames`` maps a frame number (from ``_frameYY`` names; 0 for other 3D files) to the
    discovered case dict (``image``, optional ``label``).
    """
    patients: dict[str, dict] = {}
    for case in discover_cases(dataset_dir, include_cine=True, series_uid=series_uid or None, convert_dicom=False,
                               read_cine_frames=False):
        pid = case["patient_id"]
        p = patients.setdefault(pid, {"patient_id": pid, "cine": None, "frames": {}, "info": None, "dicom": None,
                                      "dicom_folder": None, "series_uid": None, "error": None})
        if case.get("dicom_folder") is not None:
            p["dicom_folder"], p["series_uid"] = Path(case["dicom_folder"]), case.get("series_uid")
            continue
        image = Path(case["image"])
        if case.get("cine_file"):  # a 4D cine file, read (and checked) when the patient is computed
            p["cine"] = image
            continue
        try:
            ndim = len(read_shape(image))
        except IdealInputError as e:  # an unreadable file fails its patient, not the run
            p["error"] = p["error"] or e
            continue
        if ndim == 4:
            p["cine"] = image
            continue
        match = _FRAME.search(str(case["case_id"]))
        p["frames"][int(match["frame"]) if match else len(p["frames"])] = case
        info = image.parent / "Info.cfg"
        if info.is_file():
            p["info"] = info
    return [patients[k] for k in sorted(patients)]


def read_patient_series(p: dict) -> None:
    """Read the DICOM series of patient ``p`` (listed by :func:`function_patients`) into its NIfTI copy: sets
    ``cine`` (a cine) or ``frames[0]`` (one volume) and ``dicom``; a series that cannot be read sets ``error``."""
    if p.get("dicom_folder") is None or p["cine"] is not None or p["frames"] or p["error"] is not None:
        return
    try:
        path, info = dicom_series_as_nifti(p["dicom_folder"], p["patient_id"], p.get("series_uid"))
        ndim = len(read_shape(path))
    except IdealInputError as e:
        p["error"] = e
        return
    p["dicom"] = info
    if ndim == 4:
        p["cine"] = path
    else:
        p["frames"][0] = {"image": path, "case_id": strip_image_suffix(path), "patient_id": p["patient_id"]}


def release_patient_series(p: dict) -> None:
    """Delete the NIfTI copy :func:`read_patient_series` made (a later call reads the series again)."""
    if p.get("dicom_folder") is None:
        return
    for image in [p["cine"]] + [c["image"] for c in p["frames"].values()]:
        if image is not None:
            release_nifti_copy(image)
    p["cine"], p["frames"] = None, {}


def label_frames(path: Path, reference=None) -> tuple[list[np.ndarray], tuple[float, float, float], object]:
    """The 3D label arrays of a 3D or 4D label file, its spacing and its first frame's tensor."""
    shape = read_shape(path)
    if len(shape) == 4 and shape[3] < 2:
        raise IdealInputError(path, f"is a 4D cine with {shape[3]} frame: ED and ES need at least two")
    frames = [None] if len(shape) == 3 else list(range(shape[3]))
    tensors = [load_volume(path, is_label=True, frame=f) for f in frames]
    zooms = voxel_spacing(tensors[0])
    volume_unit(zooms, where=str(path))  # NaN / zero spacing: say so before any grid comparison
    if reference is not None:
        check_same_grid(reference, tensors[0])
    return [np.asarray(t[0]) for t in tensors], zooms, tensors[0]


def label_file(folder: Path | None, case_id: str) -> Path | None:
    """``<case_id>_gt`` or ``<case_id>`` with an image suffix in ``folder``; None when there is none."""
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        for name in (f"{case_id}_gt{suffix}", f"{case_id}{suffix}"):
            if (folder / name).is_file():
                return folder / name
    return None
