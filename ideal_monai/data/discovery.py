"""Find the cases in a dataset folder.

A *case* is one 3D volume, as a MONAI-style dict::

    {"image": Path, "label": Path (only when labeled), "case_id": "patient001_frame01",
     "patient_id": "patient001", "frame": int (only for one frame of a 4D cine file)}

Layouts recognised (checked in this order):

1. a single image file;
2. a Decathlon-style ``dataset.json`` (``training`` image/label pairs, optional ``test`` images);
3. ``imagesTr/`` (+ ``labelsTr/`` with the same file names, or nnU-Net ``_0000`` image names);
4. the ACDC layout: ``patientXXX/patientXXX_frameYY.nii.gz`` with optional ``..._gt.nii.gz``, and
   optional ``patientXXX_4d.nii.gz`` cine files whose frames become extra unlabeled cases;
5. a plain folder of images (``X_gt.nii.gz`` beside ``X.nii.gz`` is taken as its label);
6. DICOM: a folder whose files are one MR series (a cine: N positions x T phases), or a folder of
   patient folders each holding one (files at any depth below it). The series is read by
   :mod:`ideal_monai.data.dicom` into a NIfTI copy outside the input; its case carries ``"dicom"``
   (identifiers, patient height/weight/sex for the report) and the case id is the folder's name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from monai.data import load_decathlon_datalist

from ..errors import IdealInputError
from .dicom import dicom_files, dicom_series_as_nifti, is_dicom_file, series_case_id
from .io import image_suffix, read_shape, strip_image_suffix

_ACDC_FRAME = re.compile(r"^(?P<patient>.+)_frame(?P<frame>\d+)$")
_CINE = re.compile(r"^(?P<patient>.+)_4d$")
_NNUNET_CHANNEL = re.compile(r"_\d{4}$")


def _by_stem(files: list[Path]) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``a.nii`` and ``a.nii.gz``) are ambiguous."""
    names: dict[str, Path] = {}
    for path in files:
        stem = strip_image_suffix(path)
        if stem in names:
            raise IdealInputError(path, f"duplicate case id {stem!r} (also {names[stem]})")
        names[stem] = path
    return names


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; hidden and temporary files skipped)."""
    return sorted(p for p in folder.iterdir() if image_suffix(p) and not p.name.startswith("."))


def _cine_cases(path: Path, patient_id: str) -> list[dict]:
    shape = read_shape(path)
    if len(shape) != 4:
        raise IdealInputError(path, f"named as a 4D cine file but has shape {shape}")
    return [
        {"image": path, "case_id": f"{patient_id}_4d_t{t:02d}", "patient_id": patient_id, "frame": t}
        for t in range(shape[3])
    ]


def _dicom_cases(folder: Path, include_cine: bool, series_uid: str | None, files: list[Path] | None = None,
                 convert: bool = True) -> list[dict]:
    """The case(s) of the DICOM series in ``folder``: one volume, or a cine's frames (see :func:`_cine_cases`).
    ``files``: the folder's DICOM files when already listed. ``convert`` False: one case naming the folder
    (``dicom_folder``), read later by whoever processes it."""
    if not convert:
        case_id = series_case_id(folder)
        return [{"image": folder, "case_id": case_id, "patient_id": case_id, "dicom_folder": folder,
                 "series_uid": series_uid}]
    path, info = dicom_series_as_nifti(folder, folder.name, series_uid, files)
    patient = strip_image_suffix(path)
    if len(read_shape(path)) == 4:
        cases = _cine_cases(path, patient) if include_cine else []
    else:
        cases = [{"image": path, "case_id": patient, "patient_id": patient}]
    for case in cases:
        case["dicom"] = info
    return cases


def _cine_file_case(path: Path, patient_id: str) -> dict:
    """A 4D cine file as one case, not read (``cine_file``): its reader checks it, and a bad file fails alone."""
    return {"image": path, "case_id": strip_image_suffix(path), "patient_id": patient_id, "cine_file": True}


def _plain_folder(folder: Path, include_cine: bool, read_cine_frames: bool = True) -> list[dict]:
    names = _by_stem(_image_files(folder))
    cases = []
    for stem, path in names.items():
        if stem.endswith("_gt"):
            continue
        frame_match, cine_match = _ACDC_FRAME.match(stem), _CINE.match(stem)
        if cine_match:
            if include_cine:
                cases += (_cine_cases(path, cine_match["patient"]) if read_cine_frames
                          else [_cine_file_case(path, cine_match["patient"])])
            continue
        patient = frame_match["patient"] if frame_match else stem
        case = {"image": path, "case_id": stem, "patient_id": patient}
        if f"{stem}_gt" in names:
            case["label"] = names[f"{stem}_gt"]
        cases.append(case)
    return cases


def _decathlon_json(root: Path) -> list[dict]:
    """The ``training`` and ``test`` lists of ``root/dataset.json``, read by MONAI's
    ``load_decathlon_datalist`` (paths joined to ``root``); a bad file is one :class:`IdealInputError`."""
    spec_path = root / "dataset.json"

    def listed(key: str) -> list[dict]:
        try:
            return load_decathlon_datalist(spec_path, is_segmentation=True, data_list_key=key)
        except json.JSONDecodeError as e:
            raise IdealInputError(spec_path, f"cannot be parsed as JSON: {e}") from None
        except OSError as e:
            raise IdealInputError(spec_path, f"cannot be read: {e.strerror or e}") from None
        except ValueError:  # MONAI: the key is missing (the JSON itself parsed)
            if key == "training":
                raise IdealInputError(spec_path, "has no 'training' list") from None
            return []
        except IndexError:  # MONAI looks at the first entry of a "test" list: an empty one
            return []
        except TypeError as e:  # an entry, or the whole file, is not a mapping
            raise IdealInputError(spec_path, f"a '{key}' entry is not an {{'image': ...}} mapping: {e}"[:200]) from None

    def resolve(path, what: str) -> Path:
        if not isinstance(path, str):  # e.g. a list of modalities
            raise IdealInputError(spec_path, f"{what} must be one file path, got {path!r}"[:200])
        path = Path(path)  # joined with normpath, not resolve(): a symlink keeps its own name (the case id)
        if not path.exists():
            # nnU-Net v1 lists "imagesTr/x.nii.gz" for the channel file "imagesTr/x_0000.nii.gz".
            suffix = image_suffix(path)
            channel = path.with_name(f"{strip_image_suffix(path)}_0000{suffix}") if suffix else None
            if channel is None or not channel.exists():
                raise IdealInputError(spec_path, f"{what} {path} does not exist")
            return channel
        return path

    cases = []
    for entry in listed("training"):
        if "image" not in entry:
            raise IdealInputError(spec_path, f"training entry without 'image': {entry!r}"[:200])
        image = resolve(entry["image"], "image")
        name = strip_image_suffix(entry["image"])  # the listed name, also for a `_0000` channel file
        case = {"image": image, "case_id": name, "patient_id": name}
        if entry.get("label"):
            case["label"] = resolve(entry["label"], "label")
        cases.append(case)
    for entry in listed("test"):
        image = resolve(entry.get("image"), "test image")
        name = strip_image_suffix(entry["image"])
        cases.append({"image": image, "case_id": name, "patient_id": name})
    return cases


def _images_tr(root: Path) -> list[dict]:
    labels_dir = root / "labelsTr"
    labels = _by_stem(_image_files(labels_dir)) if labels_dir.is_dir() else {}
    cases = []
    for folder in ("imagesTr", "imagesTs"):
        if not (root / folder).is_dir():
            continue
        images = _by_stem(_image_files(root / folder))
        # nnU-Net names images `<case>_0000` (channel 0) and labels `<case>`. Only strip a 4-digit
        # suffix when every image has one and the stripped names stay unique: `heart_0001` ...
        # `heart_0020` are case numbers, not channels.
        stripped = {stem[:-5] for stem in images}
        nnunet = all(_NNUNET_CHANNEL.search(stem) for stem in images) and len(stripped) == len(images)
        for stem, path in images.items():
            case_id = stem[:-5] if nnunet and stem not in labels else stem
            case = {"image": path, "case_id": case_id, "patient_id": case_id}
            label = labels.get(stem) or labels.get(case_id)
            if folder == "imagesTr" and label is not None:
                case["label"] = label
            cases.append(case)
    return cases


def discover_cases(root: str | os.PathLike, *, include_cine: bool = True, series_uid: str | None = None,
                   convert_dicom: bool = True, read_cine_frames: bool = True) -> list[dict]:
    """List the cases under ``root`` (see the module docstring for layouts).

    Args:
        include_cine: expand 4D cine files (and DICOM cine series) into one case per frame; False skips them.
        series_uid: the DICOM SeriesInstanceUID to read where a folder holds several series.
        convert_dicom: read every DICOM series into its NIfTI copy now. False lists each series folder as one
            case ``{"image": folder, "case_id", "patient_id", "dicom_folder": folder, "series_uid"}`` without
            reading it (a cohort of thousands of series: reading them all before the first is segmented would
            take hours and fill the temporary folder); its errors then come when it is read.
        read_cine_frames: with ``include_cine``, read each 4D cine file's header now and list its frames.
            False lists the file as one case ``{"image", "case_id", "patient_id", "cine_file": True}`` without
            reading it, for a caller that reads it whole (a bad file then fails alone, not the listing).

    Raises:
        IdealInputError: the folder is missing or empty, a listed file is missing, two cases
            share a case id, or a DICOM folder is not one readable MR series.
    """
    root = Path(root)
    if not root.exists():
        raise IdealInputError(root, "dataset path does not exist")
    if root.is_file():
        if image_suffix(root) is None:
            raise IdealInputError(root, "is not a supported image file (.nii, .nii.gz, .mha, .nrrd)")
        cases = [{"image": root, "case_id": strip_image_suffix(root), "patient_id": strip_image_suffix(root)}]
    elif (root / "dataset.json").is_file():
        cases = _decathlon_json(root)
    elif (root / "imagesTr").is_dir():
        cases = _images_tr(root)
    else:
        cases = []
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if any(is_dicom_file(p) for p in root.iterdir() if p.is_file()):  # the folder is one DICOM series
            subdirs = []
            cases += _dicom_cases(root, include_cine, series_uid, convert=convert_dicom)
        for sub in subdirs:  # ACDC: one folder per patient; or a DICOM series per patient folder
            found = _plain_folder(sub, include_cine, read_cine_frames)
            if not found:
                files = dicom_files(sub)
                found = _dicom_cases(sub, include_cine, series_uid, files, convert_dicom) if files else []
            cases += found
        cases += _plain_folder(root, include_cine, read_cine_frames)
    if not cases:
        raise IdealInputError(root, "contains no images (.nii, .nii.gz, .mha, .nrrd, or a DICOM series) in a known layout")
    seen: dict[str, Path] = {}
    for case in cases:
        if case["case_id"] in seen:
            raise IdealInputError(case["image"], f"duplicate case id {case['case_id']!r} (also {seen[case['case_id']]})")
        seen[case["case_id"]] = case["image"]
    return cases
