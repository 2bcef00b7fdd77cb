"""Cardiac function indices from label maps: volumes, ED/ES, stroke volume, ejection fraction, mass.

Conventions (also in ``bundle/docs/README.md``, "Cardiac function"):

- A class volume is its voxel count times the product of the first three header zooms, / 1000 (mL).
  No interpolation between slices; the third zoom is the slice spacing (gaps between slices count
  as tissue, as in the ACDC challenge's evaluation).
- When the spacing is unit (1 x 1 x 1: headers that lost the real spacing, like the earlier unit-spacing
  copy of ACDC) volumes are reported in **voxels** and never as mL; ratios (EF) stay valid.
- ED is the frame of maximum LV cavity volume, ES the frame of minimum (unless frames are given).
  RV volumes are taken at the frames the LV defines.
- SV = EDV - ESV, EF = 100 * SV / EDV; myocardial mass = LV myocardium volume at ED * 1.05 g/mL.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import IdealInputError
from ..utils.classes import CLASS_LABELS

__all__ = ["ACDC_CLASSES", "MYOCARDIAL_DENSITY", "VolumeUnit", "volume_unit", "class_volumes", "volume_curves",
           "find_ed_es", "cardiac_indices", "INDEX_NAMES"]

#: Label values of the ACDC convention used by this bundle: class name -> label value.
ACDC_CLASSES: dict[str, int] = dict(CLASS_LABELS)

#: g/mL, the usual myocardial tissue density.
MYOCARDIAL_DENSITY = 1.05

#: The reported indices, in report order (name -> unit kind: "volume", "mass" or "percent").
INDEX_NAMES: dict[str, str] = {
    "LV_EDV": "volume", "LV_ESV": "volume", "LV_SV": "volume", "LV_EF": "percent",
    "RV_EDV": "volume", "RV_ESV": "volume", "RV_SV": "volume", "RV_EF": "percent",
    "MYO_volume_ED": "volume", "MYO_mass_ED": "mass",
}


@dataclasses.dataclass(frozen=True)
class VolumeUnit:
    """How voxel counts become volumes: ``factor`` per voxel, in ``unit`` (``"mL"`` or ``"voxels"``)."""

    factor: float
    unit: str
    voxel_mm3: float | None  #: the voxel volume in mm^3 (None in voxel units)

    @property
    def mass_unit(self) -> str:
        return "g" if self.unit == "mL" else f"voxels x {MYOCARDIAL_DENSITY:g}"


def volume_unit(zooms: Sequence[float] | None, where: str = "spacing") -> VolumeUnit:
    """The volume unit for header ``zooms`` (at least three; a 4D header's fourth is the frame time).

    Raises :class:`IdealInputError` naming ``where`` for missing, non-finite or non-positive zooms.
    Unit spacing (all three within 1e-6 of 1) gives voxel units.
    """
    if zooms is None or len(zooms) < 3:
        raise IdealInputError(where, f"needs three spatial zooms (voxel spacing), got {zooms!r}")
    sx, sy, sz = (float(z) for z in zooms[:3])
    if not all(math.isfinite(z) and z > 0 for z in (sx, sy, sz)):
        raise IdealInputError(where, f"voxel spacing must be finite and positive, got {(sx, sy, sz)}")
    if all(abs(z - 1.0) < 1e-6 for z in (sx, sy, sz)):
        return VolumeUnit(1.0, "voxels", None)
    mm3 = sx * sy * sz
    return VolumeUnit(mm3 / 1000.0, "mL", mm3)


def class_volumes(label: np.ndarray, unit: VolumeUnit, classes: Mapping[str, int] = ACDC_CLASSES) -> dict[str, float]:
    """``{class name: volume}`` of one 3D label map ``(X, Y, Z)``, in ``unit``."""
    label = np.asarray(label)
    return {name: float(np.count_nonzero(label == value)) * unit.factor for name, value in classes.items()}


def volume_curves(labels: np.ndarray, unit: VolumeUnit, classes: Mapping[str, int] = ACDC_CLASSES) -> dict[str, np.ndarray]:
    """``{class name: (T,) volumes}`` of a 4D label map ``(X, Y, Z, T)``."""
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise ValueError(f"expected a 4D label map (X, Y, Z, T), got shape {labels.shape}")
    flat = labels.reshape(-1, labels.shape[-1])
    return {name: np.count_nonzero(flat == value, axis=0).astype(np.float64) * unit.factor
            for name, value in classes.items()}


def find_ed_es(lv_volumes: Sequence[float]) -> tuple[int, int]:
    """``(ED, ES)`` frame indices: maximum and minimum LV cavity volume (first of ties)."""
    v = np.asarray(lv_volumes, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"need an LV volume per frame for at least two frames, got {v.shape}")
    return int(np.argmax(v)), int(np.argmin(v))


def _ef(edv: float | None, esv: float | None) -> tuple[float | None, float | None]:
    if edv is None or esv is None:
        return None, None
    sv = edv - esv
    return sv, (100.0 * sv / edv if edv > 0 else None)


def cardiac_indices(ed: Mapping[str, float] | None, es: Mapping[str, float] | None,
                    density: float = MYOCARDIAL_DENSITY) -> dict[str, float | None]:
    """The :data:`INDEX_NAMES` from class volumes at ED and ES (``None`` for a frame that is missing).

    ``ed``/``es`` are :func:`class_volumes` dicts (keys ``RV``, ``MYO``, ``LV``). Without ES only the
    ED volumes and the mass are computed; the rest is ``None``.
    """
    ed = ed or {}
    es = es or {}
    out: dict[str, float | None] = {}
    for chamber in ("LV", "RV"):
        edv, esv = ed.get(chamber), es.get(chamber)
        sv, ef = _ef(edv, esv)
        out.update({f"{chamber}_EDV": edv, f"{chamber}_ESV": esv, f"{chamber}_SV": sv, f"{chamber}_EF": ef})
    myo = ed.get("MYO")
    out["MYO_volume_ED"] = myo
    out["MYO_mass_ED"] = None if myo is None else myo * float(density)
    return out
