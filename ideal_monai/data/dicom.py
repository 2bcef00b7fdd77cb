"""DICOM MR series in: a folder of 2D files (one cine series: N slice positions x T phases) -> one volume.

SimpleITK (GDCM) reads the tags and the pixel data; this module only sorts and checks them:

- the files are grouped by SeriesInstanceUID; a folder with several image series needs ``series_uid``;
- positions are ordered along the slice normal (``ImageOrientationPatient`` row x column, dotted with
  ``ImagePositionPatient``); the phases of each position by TriggerTime (they differ between positions),
  else by InstanceNumber;
- the geometry comes from PixelSpacing, the orientation and the positions: a RAS affine
  ``(X = column index, Y = row index, Z = position along the normal)``.

A series becomes ``(X, Y, Z)`` (one phase) or ``(X, Y, Z, T)`` (a cine), written once per process as a
NIfTI file in a private temporary folder (removed at exit), so every reader of the package sees it like
any NIfTI file (outputs are named after the folder); the input folder is never written to. What is wrong with a folder is one
:class:`~ideal_monai.errors.IdealInputError` naming it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import locale
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import IdealInputError

__all__ = ["DicomSeries", "is_dicom_file", "dicom_files", "read_dicom_series", "dicom_series_as_nifti",
           "release_nifti_copy", "series_case_id", "write_dicom_series"]

logger = logging.getLogger(__name__)

#: Tags read from every file (GDCM's ``group|element`` keys).
TAGS = {
    "modality": "0008|0060", "sop_class": "0008|0016", "series_uid": "0020|000e", "study_uid": "0020|000d",
    "series_description": "0008|103e", "series_number": "0020|0011", "patient_id": "0010|0020",
    "position": "0020|0032", "orientation": "0020|0037", "pixel_spacing": "0028|0030", "rows": "0028|0010",
    "columns": "0028|0011", "trigger_time": "0018|1060", "instance_number": "0020|0013",
    "patient_size_m": "0010|1020", "patient_weight_kg": "0010|1030", "patient_sex": "0010|0040",
    "patient_age": "0010|1010", "number_of_frames": "0028|0008",
}

#: Positions closer than this along the slice normal are the same slice position (mm).
POSITION_TOL_MM = 0.01
#: Orientation cosines and pixel spacings of one series may differ by this much (float text in headers).
GEOMETRY_TOL = 1e-3
#: Gaps between neighbouring positions may differ from their median by this fraction: more is a missing
#: or extra slice, and volumes (voxels x spacing) would be wrong.
GAP_RTOL = 0.1
#: Transfer syntaxes by name, for error messages.
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian", "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.70": "JPEG Lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000", "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.100": "MPEG2", "1.2.840.10008.1.2.4.102": "MPEG-4", "1.2.840.10008.1.2.4.201": "HTJ2K",
}


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` (recursively; hidden files and ``DICOMDIR`` skipped), sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(root) / name
            if is_dicom_file(path):
                out.append(path)
    return out


def _transfer_syntax(path: Path) -> str:
    """The file meta's TransferSyntaxUID (read from the bytes: GDCM does not report group 0002)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    at = head.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return "unknown"
    length = int.from_bytes(head[at + 6:at + 8], "little")
    return head[at + 8:at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")


def _header(path: Path) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}  # not an image GDCM can describe (a structured report, a presentation state...)
    return {name: reader.GetMetaData(tag).strip() for name, tag in TAGS.items() if reader.HasMetaDataKey(tag)}


def _floats(text: str | None) -> np.ndarray | None:
    if not text:
        return None
    try:
        return np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None


def _number(text: str | None) -> float | None:
    values = _floats(text)
    return float(values[0]) if values is not None and values.size else None


def _pixels(path: Path, folder: Path) -> np.ndarray:
    """The ``(rows, cols)`` pixel array of one single-frame DICOM file (RuntimeError: GDCM cannot decode it)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="GDCMImageIO"))
    if array.ndim != 3 or array.shape[0] != 1:  # frames the header did not announce: never keep only the first
        raise IdealInputError(folder, f"{path.name} is a multi-frame (enhanced) DICOM object; export the series as "
                                      "one file per image")
    return array[0]


@dataclasses.dataclass
class DicomSeries:
    """One series as a volume.

    Attributes:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, T)``; X follows the columns, Y the rows, Z the slice normal.
        affine: ``(4, 4)`` RAS affine (mm).
        trigger_times_ms: per phase, the mean TriggerTime over positions (None without the tag).
        info: identifiers and patient tags for the report (``series_uid``, ``study_uid``, ``patient_id``,
            ``series_description``, ``patient_size_m``, ``patient_weight_kg``, ``patient_sex``, ``num_files``).
    """

    array: np.ndarray
    affine: np.ndarray
    trigger_times_ms: list[float] | None
    info: dict


def _one(values: list, what: str, folder: Path, tol: float) -> np.ndarray:
    first = values[0]
    for v in values[1:]:
        if v.shape != first.shape or not np.allclose(v, first, atol=tol, rtol=0):
            raise IdealInputError(folder, f"mixed {what} in one series ({_fmt(first)} and {_fmt(v)}); "
                                          "a cine stack needs one")
    return first


def _fmt(v: np.ndarray) -> str:
    return "\\".join(f"{x:g}" for x in np.asarray(v).ravel())


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None,
                      files: list[Path] | None = None) -> DicomSeries:
    """Read the MR image series of ``folder`` (see the module docstring) as a :class:`DicomSeries`.

    ``files``: :func:`dicom_files` of ``folder`` when the caller already listed them.

    Raises:
        IdealInputError: naming ``folder`` for no DICOM files, several series without ``series_uid``,
            an unknown ``series_uid``, a non-MR or non-image series, mixed orientations or pixel spacings,
            positions with different numbers of phases, uneven slice gaps, or pixel data no installed
            decoder reads.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    files = dicom_files(folder) if files is None else files
    if not files:
        raise IdealInputError(folder, "holds no DICOM files")
    headers = [(path, _header(path)) for path in files]
    series: dict[str, list] = {}
    for path, h in headers:
        series.setdefault(h.get("series_uid", "(no SeriesInstanceUID)"), []).append((path, h))
    if series_uid is not None:
        if series_uid not in series:
            raise IdealInputError(folder, f"has no series {series_uid!r} (series here: {', '.join(sorted(series))})")
        chosen = series[series_uid]
    else:
        images = {uid: members for uid, members in series.items() if any("rows" in h for _, h in members)}
        if len(images) > 1:
            listing = "; ".join(f"{uid} ({members[0][1].get('series_description', '?')}, {len(members)} files)"
                                for uid, members in sorted(images.items()))
            raise IdealInputError(folder, f"holds {len(images)} image series: choose one with --series_uid ({listing})")
        chosen = next(iter(images.values())) if images else next(iter(series.values()))
    first = chosen[0][1]
    modality = first.get("modality", "")
    multi = next((path for path, h in chosen if (_number(h.get("number_of_frames")) or 1) > 1), None)
    if multi is not None:
        raise IdealInputError(folder, f"{multi.name} is a multi-frame (enhanced) DICOM object; export the series "
                                      "as one file per image")
    if not all("rows" in h and "position" in h and "orientation" in h for _, h in chosen):
        raise IdealInputError(folder, f"series {first.get('series_uid', '?')} holds objects that are not images "
                                      f"(SOP class {first.get('sop_class', 'unknown')}); expected an MR image series")
    if modality != "MR":
        raise IdealInputError(folder, f"series {first.get('series_uid', '?')} is not MR (Modality {modality or 'missing'})")

    orientation = _one([_floats(h["orientation"]) for _, h in chosen], "orientations (ImageOrientationPatient)",
                       folder, GEOMETRY_TOL)
    spacing = _one([_floats(h.get("pixel_spacing")) for _, h in chosen if h.get("pixel_spacing")]
                   or [np.array([1.0, 1.0])], "pixel spacings (PixelSpacing)", folder, GEOMETRY_TOL)
    if orientation.size != 6 or spacing.size != 2:
        raise IdealInputError(folder, "ImageOrientationPatient / PixelSpacing are malformed")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    # Group by position along the normal, then order each position's phases.
    entries = sorted(((float(_floats(h["position"]) @ normal), path, h) for path, h in chosen), key=lambda e: e[0])
    positions: list[list] = []
    for entry in entries:
        if positions and abs(entry[0] - positions[-1][0][0]) <= POSITION_TOL_MM:
            positions[-1].append(entry)
        else:
            positions.append([entry])
    counts = sorted({len(p) for p in positions})
    if len(counts) > 1:
        per = ", ".join(f"{p[0][0]:.1f} mm: {len(p)}" for p in positions)
        raise IdealInputError(folder, f"slice positions have different numbers of phases ({per})")
    use_trigger = all(_number(h.get("trigger_time")) is not None for _, _, h in entries)

    def phase_key(entry):
        h = entry[2]
        return (_number(h.get("trigger_time")) if use_trigger else 0.0, _number(h.get("instance_number")) or 0.0)

    positions = [sorted(p, key=phase_key) for p in positions]
    if len(positions) > 1:
        gaps = np.diff([p[0][0] for p in positions])
        median = float(np.median(gaps))
        if np.any(np.abs(gaps - median) > GAP_RTOL * median):
            raise IdealInputError(folder, f"slice positions are not evenly spaced (gaps {_fmt(np.round(gaps, 2))} mm): "
                                          "a slice is missing or the series mixes stacks")
        slice_step = median
    else:
        slice_step = 1.0
        logger.warning("%s: one slice position only; the slice spacing is unknown (1 mm assumed)", folder)

    frames = []
    try:
        for p in positions:
            frames.append([_pixels(path, folder) for _, path, _ in p])
    except RuntimeError:
        bad = next(path for p in positions for _, path, _ in p)
        syntax = _transfer_syntax(bad)
        raise IdealInputError(folder, f"pixel data cannot be decoded (transfer syntax {syntax}, "
                                      f"{TRANSFER_SYNTAXES.get(syntax, 'unknown')}): no installed decoder reads it; "
                                      "export the series uncompressed") from None
    shapes = {f.shape for p in frames for f in p}
    if len(shapes) > 1:
        raise IdealInputError(folder, f"images of one series differ in size: {sorted(shapes)}")
    # (Z, T, rows, cols) -> (X = cols, Y = rows, Z, T)
    array = np.stack([np.stack(p) for p in frames]).transpose(3, 2, 0, 1)
    if array.shape[3] == 1:
        array = array[..., 0]

    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # along a row: the column index, spaced by PixelSpacing[1]
    lps[:3, 1] = col_dir * spacing[0]  # down a column: the row index, spaced by PixelSpacing[0]
    lps[:3, 2] = normal * slice_step
    lps[:3, 3] = _floats(positions[0][0][2]["position"])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS

    trigger = None
    if use_trigger:
        trigger = [float(np.mean([_number(p[t][2]["trigger_time"]) for p in positions])) for t in range(len(positions[0]))]
    info = {"series_uid": first.get("series_uid"), "study_uid": first.get("study_uid"),
            "patient_id": first.get("patient_id"), "series_description": first.get("series_description"),
            "series_number": first.get("series_number"), "patient_sex": first.get("patient_sex") or None,
            "patient_age": first.get("patient_age") or None,
            "patient_size_m": _number(first.get("patient_size_m")),
            "patient_weight_kg": _number(first.get("patient_weight_kg")),
            "num_files": len(chosen), "phase_order": "TriggerTime" if use_trigger else "InstanceNumber"}
    return DicomSeries(array=array, affine=affine, trigger_times_ms=trigger, info=info)


_CACHE_LOCK = threading.Lock()
_CACHE_DIR: Path | None = None
_CONVERTED: dict[tuple, tuple[Path, dict]] = {}
_COPY_NUMBERS = itertools.count()


def _cache_dir() -> Path:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="ideal_monai_dicom_"))
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "series"


def series_case_id(folder: str | os.PathLike) -> str:
    """The case id of a DICOM series folder: the name of its NIfTI copy (and of the label files written for it)."""
    return _safe_name(Path(folder).name)


def release_nifti_copy(path: str | os.PathLike) -> None:
    """Delete a NIfTI copy made by :func:`dicom_series_as_nifti` once it is no longer needed (a cohort run over
    thousands of series must not keep them all in the temporary folder); a later call converts the series anew."""
    path = Path(path)
    with _CACHE_LOCK:
        for key in [k for k, (target, _) in _CONVERTED.items() if target == path]:
            del _CONVERTED[key]
        if _CACHE_DIR is not None and _CACHE_DIR in path.parents:
            path.unlink(missing_ok=True)


def dicom_series_as_nifti(folder: str | os.PathLike, case_id: str, series_uid: str | None = None,
                          files: list[Path] | None = None) -> tuple[Path, dict]:
    """``(NIfTI path, info)`` of ``folder``'s series, converted once per process (see the module docstring).

    The file is ``<private temp dir>/<n>/<case_id>.nii.gz``, holding the stored pixel values, the RAS affine (sform and qform, code 1 "scanner") and, for
    a cine, the mean phase interval in ms as the fourth zoom; its ``descrip`` names the SeriesInstanceUID, and
    so does every label file written on its grid. ``info`` is :attr:`DicomSeries.info` plus
    ``trigger_times_ms`` and ``source`` (the folder).
    """
    folder = Path(folder)
    files = dicom_files(folder) if files is None else files
    key = (str(folder.resolve()), series_uid, tuple((str(f), f.stat().st_mtime_ns) for f in files))
    with _CACHE_LOCK:
        if key in _CONVERTED and _CONVERTED[key][0].is_file():
            return _CONVERTED[key]
        series = read_dicom_series(folder, series_uid, files)
        cine = series.array.ndim == 4
        target_dir = _cache_dir() / str(next(_COPY_NUMBERS))  # never reused, also after release_nifti_copy
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{_safe_name(case_id)}.nii.gz"
        img = nib.Nifti1Image(series.array, series.affine)
        img.header.set_xyzt_units("mm", "msec")
        if cine and series.trigger_times_ms and len(series.trigger_times_ms) > 1:
            zooms = list(img.header.get_zooms())
            zooms[3] = float(np.median(np.diff(series.trigger_times_ms)))
            img.header.set_zooms(zooms)
        img.set_sform(series.affine, code=1)
        img.set_qform(series.affine, code=1)
        # The labels written on this grid copy its header: the series stays named in every output file.
        img.header["descrip"] = f"SeriesInstanceUID {series.info.get('series_uid') or '?'}"[:79].encode("ascii", "replace")
        nib.save(img, str(target))
        info = {**series.info, "trigger_times_ms": series.trigger_times_ms, "source": str(folder)}
        logger.info("%s: DICOM series %s (%d files) read as %s %s", folder, info["series_uid"], info["num_files"],
                    "cine" if cine else "volume", tuple(series.array.shape))
        _CONVERTED[key] = (target, info)
        return target, info


def _uid(prefix: str, *parts: int) -> str:
    """A DICOM UID under ``prefix`` (digits and dots, at most 64 characters)."""
    return ".".join([prefix, *(str(int(p)) for p in parts)])[:64]


@contextlib.contextmanager
def _caller_locale_kept():
    """GDCM's writer leaves the process's LC_CTYPE at "C", after which every text file opened without an
    explicit encoding is ASCII: put the caller's locale back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(array: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, *,
                       trigger_times_ms: np.ndarray | None = None, tags: dict[str, str] | None = None,
                       uid_root: str = "1.2.826.0.1.3680043.10.1234", series_number: int = 1,
                       shuffle_seed: int | None = None, compressed: bool = False) -> list[Path]:
    """Write a volume ``(X, Y, Z)`` or cine ``(X, Y, Z, T)`` as one MR series of 2D DICOM files, as scanners export it.

    The inverse of :func:`read_dicom_series` (used for phantoms and tests): one file per position and phase,
    ImagePositionPatient / ImageOrientationPatient / PixelSpacing from the RAS ``affine`` (whose first two
    columns must be orthogonal), TriggerTime from ``trigger_times_ms`` ``(Z, T)`` (phases may be offset
    per position, as in a real multi-breath-hold cine), InstanceNumber running over the files. With
    ``shuffle_seed`` the file names are random, so the directory order says nothing about the geometry.

    Args:
        tags: extra ``"group|element": value`` tags (PatientID, PatientSize in m, PatientWeight in kg...).
        compressed: JPEG 2000 lossless pixel data (GDCM's compression), as some archives export.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    cine = array if array.ndim == 4 else array[..., None]
    nz, nt = cine.shape[2], cine.shape[3]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if trigger_times_ms is None:
        trigger_times_ms = np.tile(np.arange(nt, dtype=np.float64) * 40.0, (nz, 1))
    rng = np.random.default_rng(shuffle_seed)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetUseCompression(compressed)
    study = _uid(uid_root, series_number, 1)
    series = _uid(uid_root, series_number, 2)
    frame_of_reference = _uid(uid_root, series_number, 3)
    paths = []
    with _caller_locale_kept():
        for z in range(nz):
            origin = lps[:3, 3] + z * lps[:3, 2]
            for t in range(nt):
                image = sitk.GetImageFromArray(np.ascontiguousarray(cine[:, :, z, t].T[None]).astype(np.int16))
                image.SetSpacing((float(spacing[0]), float(spacing[1]), float(spacing[2])))
                image.SetOrigin(tuple(float(v) for v in origin))
                image.SetDirection(tuple(float(v) for v in direction.ravel()))
                number = z * nt + t + 1
                values = {
                    "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                    "0008|0018": _uid(uid_root, series_number, 4, number), "0020|000d": study, "0020|000e": series,
                    "0020|0052": frame_of_reference, "0020|0011": str(series_number),
                    "0020|0013": str(number), "0018|1060": f"{float(trigger_times_ms[z][t]):.2f}",
                    "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
                    "0020|0037": "\\".join(f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])),
                    "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # row spacing (along Y), column spacing (along X)
                    "0018|0050": f"{spacing[2]:.4f}", "0008|103e": "cine SAX", **(tags or {}),
                }
                for key, value in values.items():
                    image.SetMetaData(key, value)
                name = f"{rng.integers(0, 2**62):016x}.dcm" if shuffle_seed is not None else f"IM{number:05d}.dcm"
                writer.SetFileName(str(folder / name))
                writer.Execute(image)
                paths.append(folder / name)
    return paths
