"""Reading and writing volumes, with the validation every entry point relies on.

All reads go through :func:`load_volume`, which returns a channel-first ``MetaTensor``
``(1, X, Y, Z)`` carrying the affine (RAS, as MONAI's ``NibabelReader`` gives it) so MONAI's
invertible transforms and ``Invertd`` can bring predictions back to the input grid. Problems are
raised as :class:`~ideal_monai.errors.IdealInputError` naming the file.

The short-axis slice axis is the LAST array axis (``Z``), as in ACDC.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from ..errors import IdealInputError
from ..utils.atomic import atomic_path
from ..utils.classes import BACKGROUND, CLASS_NAMES, LABEL_VALUES

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES

#: Refuse volumes larger than this many voxels per 3D frame (e.g. 512 x 512 x 256), from the header,
#: before anything is allocated. Inference needs about 40 bytes per voxel of the largest frame on
#: top of the process (float copies and per-class probabilities on the input grid), so this bounds
#: that to about 3 GB (more with probability/uncertainty outputs). ``IDEAL_MONAI_MAX_VOXELS`` raises
#: or lowers the limit.
MAX_VOXELS_PER_FRAME = 64 * 1024 * 1024


def max_voxels_per_frame() -> int:
    """:data:`MAX_VOXELS_PER_FRAME`, or ``$IDEAL_MONAI_MAX_VOXELS`` when set."""
    value = os.environ.get("IDEAL_MONAI_MAX_VOXELS", "")
    try:
        return int(value) if value else MAX_VOXELS_PER_FRAME
    except ValueError:
        raise IdealInputError("IDEAL_MONAI_MAX_VOXELS", f"expected an integer, got {value!r}") from None


def _too_large(shape: tuple[int, ...]) -> str | None:
    limit = max_voxels_per_frame()
    if int(np.prod(shape[:3], dtype=np.int64)) > limit:
        return (f"is too large to process ({tuple(shape[:3])}, over {limit} voxels per frame; crop or resample it, "
                "or raise IDEAL_MONAI_MAX_VOXELS)")
    return None
logger = logging.getLogger(__name__)

#: NIfTI files whose sform/qform scale was already compared with ``pixdim`` (one check, one log line per file
#: per process: a 4D cine is read once per frame).
_SCALE_CHECKED: set[str] = set()

#: Relative tolerance between an affine column's length and the header's ``pixdim`` before they "disagree".
PIXDIM_RTOL = 1e-3
#: Absolute tolerance on affine entries when an image and its label must share a grid.
AFFINE_ATOL = 1e-3


def image_suffix(path: str | os.PathLike) -> str | None:
    """The recognised image suffix of ``path`` (``".nii.gz"``, ``".mha"``...), or None."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_image_suffix(path: str | os.PathLike) -> str:
    """File name without its image suffix: ``patient001_frame01.nii.gz`` -> ``patient001_frame01``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def _check_file(path: Path) -> None:
    if not path.exists():
        raise IdealInputError(path, "file does not exist")
    if path.is_dir():
        raise IdealInputError(path, "is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise IdealInputError(path, "file is empty")
    if image_suffix(path) is None:
        raise IdealInputError(path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")


def read_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Array shape from the header alone (cheap; used to count slices and cine frames)."""
    path = Path(path)
    _check_file(path)
    try:
        if image_suffix(path) in NIFTI_SUFFIXES:
            return tuple(int(s) for s in nib.load(str(path)).shape)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(int(s) for s in reader.GetSize())
    except IdealInputError:
        raise
    except Exception as e:  # nibabel/ITK raise many types for corrupt headers
        raise IdealInputError(path, f"cannot be read as an image ({type(e).__name__}: {_first_line(e, 120)})") from None


def _first_line(e: Exception, limit: int) -> str:
    """The informative line of an exception message, for a one-line error.

    ITK messages start with a source-file location (``sitkImageReaderBase.cxx:99:``) and put the
    reason on a later ``ERROR:`` line, so prefer that line when there is one.
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    errors = [line for line in lines if "ERROR:" in line]
    return (errors[-1] if errors else lines[0])[:limit]


def _load_sitk(path: Path) -> MetaTensor:
    """Read an ITK-family file with SimpleITK; convert its LPS geometry to a RAS affine."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise IdealInputError(path, "multi-component (vector/RGB) images are not supported")
    # SimpleITK arrays are (Z, Y, X) or (T, Z, Y, X); reverse to the (X, Y, Z[, T]) of NIfTI.
    arr = sitk.GetArrayFromImage(img)
    arr = np.transpose(arr, tuple(range(arr.ndim - 1, -1, -1)))
    ndim = img.GetDimension()
    direction = np.array(img.GetDirection()).reshape(ndim, ndim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(img.GetSpacing())[None, :3]
    affine[:3, 3] = img.GetOrigin()[:3]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    meta = {
        "affine": torch.as_tensor(affine, dtype=torch.float64),
        "original_affine": affine,
        "spatial_shape": np.array(arr.shape[:3]),
        "filename_or_obj": str(path),
        "space": "RAS",
    }
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(arr)), meta=meta)


def _log_scale_quirk(path: Path) -> None:
    """Say once per file when the NIfTI affine's scale disagrees with ``pixdim``, and which one is used.

    The ACDC release (and other converters) write the real spacing in ``pixdim`` and a unit-scaled
    sform. MONAI's ``NibabelReader`` then rescales the affine's columns to ``pixdim`` (keeping the
    sform's direction and origin), which is what ITK does: volumes come out in real mm either way.
    """
    if str(path) in _SCALE_CHECKED:
        return
    _SCALE_CHECKED.add(str(path))
    header = nib.load(str(path)).header
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    scales = np.linalg.norm(np.asarray(header.get_best_affine(), dtype=np.float64)[:3, :3], axis=0)
    if np.allclose(scales, zooms, rtol=PIXDIM_RTOL, atol=0):
        return
    form = "sform" if int(header["sform_code"]) > 0 else "qform"
    logger.info("%s: the %s's scale (%s) disagrees with pixdim (%s); using pixdim as the spacing in mm, with the "
                "%s's direction and origin (as ITK does)", path, form, " x ".join(f"{v:g}" for v in scales),
                " x ".join(f"{v:g}" for v in zooms), form)


def _read_raw(path: Path) -> MetaTensor:
    """The file's array ``(X, Y, Z[, T])`` as a MetaTensor with RAS affine, no channel dim.

    NIfTI spacing is the header's ``pixdim`` (see :func:`_log_scale_quirk`).
    """
    try:
        if image_suffix(path) in NIFTI_SUFFIXES:
            _log_scale_quirk(path)
            return LoadImage(reader="NibabelReader", image_only=True, dtype=None)(str(path))
        return _load_sitk(path)
    except IdealInputError:
        raise
    except Exception as e:
        raise IdealInputError(path, f"cannot be read as an image (corrupt or truncated?): {_first_line(e, 160)}") from None


def read_array(path: str | os.PathLike) -> MetaTensor:
    """The file's array as stored, ``(X, Y, Z)`` or ``(X, Y, Z, T)``, after the header checks of
    :func:`volume_shape` (nothing is allocated for a refused file).

    Unlike :func:`load_volume` there is no channel axis, the stored dtype is kept (integer labels
    stay integers) and values are not checked: the caller validates them for its own convention.
    ``affine`` is the RAS affine and ``meta`` the header (``pixdim`` for NIfTI, see :func:`voxel_spacing`).
    Trailing singleton axes are dropped.
    """
    path = Path(path)
    shape = volume_shape(path)
    raw = _read_raw(path)
    while raw.ndim > len(shape) and raw.shape[-1] == 1:
        raw = raw[..., 0]
    return raw


def voxel_spacing(volume: MetaTensor) -> tuple[float, float, float]:
    """Voxel size ``(sx, sy, sz)`` in mm of a volume from :func:`read_array` or :func:`load_volume`.

    The NIfTI header's ``pixdim[1:4]`` (what nibabel's ``get_zooms`` gives) when the file had one,
    else the lengths of the affine's first three columns.
    """
    pixdim = volume.meta.get("pixdim")
    if pixdim is not None:
        return tuple(float(v) for v in np.asarray(pixdim, dtype=np.float64).ravel()[1:4])
    affine = np.asarray(volume.affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def volume_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The validated header shape ``(X, Y, Z)`` or ``(X, Y, Z, T)`` (trailing singleton axes dropped).

    Refuses, from the header alone, files that are not 3D/4D, have a zero-length axis or hold more
    than :func:`max_voxels_per_frame` voxels per 3D frame, so nothing is allocated for them.
    """
    path = Path(path)
    shape = file_shape = read_shape(path)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (3, 4):
        raise IdealInputError(path, f"expected a 3D volume (X, Y, Z) or 4D cine (X, Y, Z, T), got {len(file_shape)}D shape {file_shape}")
    if min(shape) == 0:
        raise IdealInputError(path, f"has a zero-length axis: shape {shape}")
    if _too_large(shape):
        raise IdealInputError(path, _too_large(shape))
    return shape


def load_volume(path: str | os.PathLike, *, is_label: bool = False, frame: int | None = None) -> MetaTensor:
    """Load and validate one volume as a channel-first ``MetaTensor`` of shape ``(1, X, Y, Z)``.

    Args:
        path: NIfTI (``.nii``/``.nii.gz``) or SimpleITK-readable file (``.mha``, ``.nrrd``...).
        is_label: validate as a label map (integer values in ``{0, 1, 2, 3}``), returned as uint8.
        frame: for a 4D cine file ``(X, Y, Z, T)``, the frame to take. A 4D file without ``frame``
            is an error (callers expand cine files into frames, see :mod:`ideal_monai.data.discovery`).

    Images are returned as float32; NaN/Inf intensities, non-3D/4D arrays, zero-length axes and
    volumes over :func:`max_voxels_per_frame` are refused with a one-line error naming the file.
    Trailing singleton axes (``(X, Y, Z, 1)``, as some converters write 3D frames) are dropped.
    """
    path = Path(path)
    shape = volume_shape(path)
    if len(shape) == 4 and frame is None:
        raise IdealInputError(path, f"is a 4D cine volume {shape}; pass a frame index")
    if len(shape) == 3 and frame not in (None, 0):
        raise IdealInputError(path, f"is 3D but frame {frame} was requested")
    if len(shape) == 4 and not 0 <= frame < shape[3]:
        raise IdealInputError(path, f"frame {frame} out of range for {shape[3]} cine frames")

    raw = _read_raw(path)
    while raw.ndim > len(shape) and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 4:
        raw = raw[..., frame]
    if tuple(raw.shape) != tuple(shape[:3]):
        raise IdealInputError(path, f"unexpected array shape {tuple(raw.shape)} (header says {shape})")
    data = raw.as_tensor() if isinstance(raw, MetaTensor) else torch.as_tensor(raw)
    meta = dict(raw.meta) if isinstance(raw, MetaTensor) else {}
    meta["filename_or_obj"] = str(path)
    meta["spatial_shape"] = np.array(data.shape)
    if frame is not None:
        meta["frame"] = frame

    if is_label:
        data = _validate_label(path, data)
    else:
        data = data.to(torch.float32)
        if not torch.isfinite(data).all():
            n_bad = int((~torch.isfinite(data)).sum())
            raise IdealInputError(path, f"contains {n_bad} NaN/Inf intensity values")
        if data.numel() > 0 and bool(data.max() == data.min()):
            raise IdealInputError(path, f"is a constant image (every voxel = {float(data.max()):g}): nothing to segment")
    return MetaTensor(data[None], meta=meta)


def _validate_label(path: Path, data: torch.Tensor) -> torch.Tensor:
    """Check that a label map holds integer values in :data:`~ideal_monai.utils.classes.LABEL_VALUES`; return it as uint8."""
    if data.is_floating_point():
        if not torch.isfinite(data).all():
            raise IdealInputError(path, "label map contains NaN/Inf values")
        if not torch.equal(data, torch.round(data)):
            raise IdealInputError(path, f"label map has non-integer values; expected integer classes {LABEL_VALUES[0]}-{LABEL_VALUES[-1]}")
    values = torch.unique(data.to(torch.int64)).tolist()
    bad = sorted(v for v in values if v not in LABEL_VALUES)
    if bad:
        allowed = ",".join(str(v) for v in LABEL_VALUES)
        meaning = ", ".join(f"{v} {'bg' if v == BACKGROUND else n}" for v, n in CLASS_NAMES.items())
        raise IdealInputError(path, f"label values outside {{{allowed}}} ({meaning}): {bad[:5]}")
    return data.to(torch.uint8)


def check_same_grid(image: MetaTensor, label: MetaTensor) -> None:
    """Raise when a label's shape or affine differs from its image's (beyond ``AFFINE_ATOL``)."""
    label_path = label.meta.get("filename_or_obj", "label")
    image_path = image.meta.get("filename_or_obj", "image")
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise IdealInputError(
            label_path, f"label shape {tuple(label.shape[1:])} differs from image {Path(image_path).name} shape {tuple(image.shape[1:])}"
        )
    a_img = np.asarray(image.affine, dtype=np.float64)
    a_lbl = np.asarray(label.affine, dtype=np.float64)
    if not np.allclose(a_img, a_lbl, atol=AFFINE_ATOL, rtol=0):
        diff = float(np.abs(a_img - a_lbl).max())
        raise IdealInputError(label_path, f"label affine differs from image {Path(image_path).name} affine (max abs difference {diff:.4g})")


def save_label_like(label: np.ndarray | torch.Tensor, reference: str | os.PathLike, target: str | os.PathLike,
                    dtype=np.uint8, check_shape: bool = True, description: str | None = None) -> Path:
    """Write ``label`` ``(X, Y, Z[, T][, C])`` as NIfTI with the reference file's exact grid, atomically.

    The affine and header of ``reference`` (any supported format) are reused, so the output has the
    same shape, affine and orientation as the input; the data type is set to ``dtype``. Extra
    trailing axes (e.g. class probabilities ``(X, Y, Z, C)``) are allowed after the reference's.
    ``description`` (ASCII, cut to the header's 79 characters) replaces the header's ``descrip``: what made it.

    Raises:
        ValueError: with ``check_shape``, when ``label``'s leading axes differ from the reference's
            shape (a programming error: predictions must be inverted to the input grid first).
    """
    reference, target = Path(reference), Path(target)
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    arr = arr.astype(dtype, copy=False)
    ref_shape = core_shape = read_shape(reference)
    while len(core_shape) > 3 and core_shape[-1] == 1:  # (X, Y, Z, 1) references hold 3D volumes
        core_shape = core_shape[:-1]
    if check_shape and all(tuple(arr.shape[: len(s)]) != tuple(s) for s in (ref_shape, core_shape)):
        raise ValueError(f"label shape {arr.shape} does not start with reference {reference} shape {ref_shape}")
    if image_suffix(reference) in NIFTI_SUFFIXES:
        ref = nib.load(str(reference))
        header = ref.header.copy()
        header.set_data_dtype(dtype)
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
        img = nib.Nifti1Image(arr, ref.affine, header)
    else:
        affine = np.asarray(_load_sitk(reference).meta["original_affine"])
        img = nib.Nifti1Image(arr, affine)
    if description is not None:
        img.header["descrip"] = description[:79].encode("ascii", "replace")
    # nibabel picks compression from the name: the temporary file must end like the target.
    with atomic_path(target, suffix=".nii" if target.name.lower().endswith(".nii") else ".nii.gz") as tmp:
        nib.save(img, str(tmp))
    return target
