"""Checks of an image uploaded to the MONAI Label server, made from its header before any voxel is read.

A server takes files from any client: a file that is not an image, an empty or truncated one, one larger
than the site allows, and a *decompression bomb* (a few hundred kB of gzip that inflate to gigabytes) must be
refused with a one-line reason before the image is loaded. The sizes come from the header (NIfTI through
nibabel, other formats through SimpleITK's ``ReadImageInformation``), so checking costs no allocation of the
image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


from ..data.io import NIFTI_SUFFIXES, image_suffix
from ..errors import IdealInputError

__all__ = ["UPLOAD_SUFFIXES", "UploadLimits", "check_upload", "decompressed_bytes"]

_MB = 1024 * 1024
#: Formats an upload may have: one file each (MetaImage and NRRD only with their data inside, see
#: :func:`_refuse_detached_data`; ``.mhd`` / ``.nhdr`` always keep it in another file).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded image may be.

    Attributes:
        max_upload_mb: size of the file as sent (compressed), in MiB.
        max_image_mb: size of its voxels once decompressed (header shape x data type), in MiB; a 4D cine of
            256 x 256 x 12 slices x 30 phases in 16 bits is about 45 MiB.
        max_ratio: largest decompressed / compressed size of a gzip-compressed file; MR images compress a few
            times, a decompression bomb hundreds or thousands of times.
    """

    max_upload_mb: float = 256.0
    max_image_mb: float = 1024.0
    max_ratio: float = 100.0

    def __post_init__(self):
        for name in ("max_upload_mb", "max_image_mb", "max_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise IdealInputError(name, f"must be a positive number, got {value!r}")


def decompressed_bytes(path: str | os.PathLike) -> int:
    """Bytes of the voxel data of the image at ``path`` as its header describes it (nothing else is read).

    Raises :class:`IdealInputError` naming the file when it is not an image of a known format or its header
    cannot be read (an empty or truncated file, random bytes).
    """
    path = Path(path)
    suffix = image_suffix(path.name)
    if suffix not in UPLOAD_SUFFIXES:
        raise IdealInputError(path, f"is not an image file of a format accepted here ({', '.join(UPLOAD_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise IdealInputError(path, "is empty")
    if suffix in (".mha", ".nrrd"):
        _refuse_detached_data(path)
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        try:
            header = nib.load(str(path)).header
            shape, itemsize = tuple(int(s) for s in header.get_data_shape()), header.get_data_dtype().itemsize
        except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for a bad header
            raise IdealInputError(path, f"is not a readable NIfTI file ({str(e).splitlines()[0][:120]})") from None
    else:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise IdealInputError(path, f"is not a readable image ({str(e).strip().splitlines()[-1][:120]})") from None
        shape = tuple(int(s) for s in reader.GetSize())
        try:
            itemsize = int(sitk.GetArrayViewFromImage(sitk.Image([1] * len(shape), reader.GetPixelID())).itemsize)
        except RuntimeError:  # a dimension SimpleITK cannot hold (1, or more than 5)
            raise IdealInputError(path, f"has {len(shape)} dimension(s): expected a 3D volume or a 4D cine") from None
        itemsize *= max(1, int(reader.GetNumberOfComponents()))
    return math.prod(shape) * itemsize  # Python integers: a forged header cannot overflow the product


def _refuse_detached_data(path: Path) -> None:
    """MetaImage and NRRD headers may name another file that holds the voxels (``ElementDataFile``,
    ``data file``): on a server that would read any file the header names. Only data in the upload itself."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    for raw in head.split(b"\n"):
        if not raw.strip():
            break  # NRRD: the header ends at the first blank line
        key, _, value = raw.decode("latin-1").partition(":" if path.suffix == ".nrrd" else "=")
        key, value = key.strip().lower(), value.strip()
        if path.suffix == ".mha" and key == "elementdatafile":
            if value.upper() != "LOCAL":
                raise IdealInputError(path, f"names another file for its voxels (ElementDataFile = {value}): "
                                            "only images whose data is in the upload are accepted")
            return
        if path.suffix == ".nrrd" and key.replace(" ", "") == "datafile":
            raise IdealInputError(path, "names another file for its voxels ('data file'): only images whose data "
                                        "is in the upload are accepted")


def check_upload(path: str | os.PathLike, limits: UploadLimits, name: str | None = None) -> int:
    """Refuse the uploaded file at ``path`` unless it is an image within ``limits``; returns its voxel bytes.

    Args:
        path: the file as saved by the server.
        limits: the site's :class:`UploadLimits`.
        name: how the client named the file, used in the messages instead of the server's path.

    Raises:
        IdealInputError: (one line, naming ``name``) for a file that is not a readable image, and for one over
            a limit (the message says which limit and how to raise it).
    """
    path = Path(path)
    where = name or path.name
    sent = path.stat().st_size
    if sent > limits.max_upload_mb * _MB:
        raise IdealInputError(where, f"is {sent / _MB:.1f} MiB, over the upload limit of {limits.max_upload_mb:g} "
                                     "MiB (ideal-monai label-server --max_upload_mb)")
    try:
        voxels = decompressed_bytes(path)
    except IdealInputError as e:
        raise IdealInputError(where, e.problem) from None
    if voxels > limits.max_image_mb * _MB:
        raise IdealInputError(where, f"holds {voxels / _MB:.0f} MiB of voxels, over the limit of "
                                     f"{limits.max_image_mb:g} MiB (ideal-monai label-server --max_image_mb)")
    if image_suffix(path.name).endswith(".gz") and voxels > limits.max_ratio * max(sent, 1):
        raise IdealInputError(where, f"inflates {voxels / max(sent, 1):.0f}-fold ({sent / 1024:.0f} kB to "
                                     f"{voxels / _MB:.0f} MiB): refused as a decompression bomb (limit "
                                     f"{limits.max_ratio:g}-fold, ideal-monai label-server --max_ratio)")
    return voxels
