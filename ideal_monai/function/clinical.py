"""Clinical values from the function indices: body surface area, indexed values, LV wall thickness.

- **BSA** (m2) by Mosteller: ``sqrt(height_cm * weight_kg / 3600)``; height and weight from the command
  line (``height_cm`` / ``weight_kg``), else ACDC's ``Info.cfg``, else the DICOM tags PatientSize (m)
  and PatientWeight (kg).
- **Indexed values**: LV/RV EDV, ESV, SV (mL/m2) and the LV mass (g/m2) divided by the BSA.
- **Maximal end-diastolic LV wall thickness** (mm), a hypertrophy criterion: on each short-axis slice
  where the myocardium encloses the LV cavity, the largest in-plane distance from a myocardium voxel to
  the nearest LV-cavity voxel (centre to centre, so a wall ``n`` voxels thick measures ``n`` x spacing),
  counting slices where at least :data:`ENCLOSED_FRACTION` of the cavity's border is myocardium.
  Basal slices with an open ring (the outflow tract) are skipped: there the distance is not a wall.

These are measurements, never a diagnosis; the reference ranges they are compared with are in
:mod:`ideal_monai.function.reference`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..errors import IdealInputError

__all__ = ["body_surface_area", "patient_body", "indexed_values", "INDEXED_NAMES", "max_wall_thickness_mm"]

#: Indexed value -> the index it divides by the BSA.
INDEXED_NAMES: dict[str, str] = {
    "LV_EDVi": "LV_EDV", "LV_ESVi": "LV_ESV", "LV_SVi": "LV_SV",
    "RV_EDVi": "RV_EDV", "RV_ESVi": "RV_ESV", "RV_SVi": "RV_SV",
    "MYO_mass_EDi": "MYO_mass_ED",
}

#: A slice counts for the wall thickness when at least this fraction of the LV cavity's border is myocardium
#: (a closed ring; a few border voxels of another class are segmentation noise, an outflow tract is many).
ENCLOSED_FRACTION = 0.9

#: Plausible adult and paediatric ranges: outside them a height or weight is a unit mistake (m for cm, g for kg).
HEIGHT_RANGE_CM = (40.0, 250.0)
WEIGHT_RANGE_KG = (2.0, 400.0)


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Mosteller's body surface area in m2."""
    return math.sqrt(float(height_cm) * float(weight_kg) / 3600.0)


def _checked(value, low_high: tuple[float, float], what: str, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise IdealInputError(where, f"{what} is not a number: {value!r}") from None
    if not (math.isfinite(v) and low_high[0] <= v <= low_high[1]):
        raise IdealInputError(where, f"{what} {v:g} is outside {low_high[0]:g}-{low_high[1]:g}: wrong unit?")
    return v


def _sex(value) -> str | None:
    text = str(value or "").strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def patient_body(info_cfg: Mapping | None = None, dicom: Mapping | None = None, height_cm: float | None = None,
                 weight_kg: float | None = None, sex: str | None = None, where: str = "patient") -> dict:
    """Height, weight, sex and BSA of one patient, with where each came from.

    Args:
        info_cfg: ACDC ``Info.cfg`` values (``Height`` cm, ``Weight`` kg).
        dicom: :mod:`ideal_monai.data.dicom` series info (``patient_size_m``, ``patient_weight_kg``, ``patient_sex``).
        height_cm, weight_kg, sex: given by the user; they win over the files.

    Returns:
        ``{"height_cm", "weight_kg", "sex" ("M"/"F"/None), "bsa_m2", "body_source"}``; height, weight and BSA
        are None when either is unknown.

    Raises:
        IdealInputError: naming ``where`` for a height or weight that is not a plausible number.
    """
    info_cfg, dicom = info_cfg or {}, dicom or {}
    candidates = [("given", height_cm, weight_kg), ("Info.cfg", info_cfg.get("Height"), info_cfg.get("Weight")),
                  ("DICOM", None if dicom.get("patient_size_m") is None else 100.0 * float(dicom["patient_size_m"]),
                   dicom.get("patient_weight_kg"))]
    height = weight = None
    sources = []
    for source, h, w in candidates:
        if height is None and h not in (None, "", 0, 0.0):
            height = _checked(h, HEIGHT_RANGE_CM, "height (cm)", f"{where} ({source})")
            sources.append(source)
        if weight is None and w not in (None, "", 0, 0.0):
            weight = _checked(w, WEIGHT_RANGE_KG, "weight (kg)", f"{where} ({source})")
            sources.append(source)
    out = {"height_cm": height, "weight_kg": weight, "sex": _sex(sex) or _sex(dicom.get("patient_sex")),
           "bsa_m2": body_surface_area(height, weight) if height and weight else None,
           "body_source": "+".join(dict.fromkeys(sources)) or None}
    return out


def indexed_values(indices: Mapping[str, float | None], bsa_m2: float | None) -> dict[str, float | None]:
    """:data:`INDEXED_NAMES` from :func:`~ideal_monai.function.indices.cardiac_indices` values and a BSA (None: unknown)."""
    return {name: (None if bsa_m2 is None or indices.get(base) is None else float(indices[base]) / float(bsa_m2))
            for name, base in INDEXED_NAMES.items()}


def max_wall_thickness_mm(label: np.ndarray, spacing: Sequence[float], myo: int = 2, lv: int = 3) -> dict:
    """The maximal LV wall thickness of one label map ``(X, Y, Z)`` (ED), see the module docstring.

    Args:
        label: the ED label map, slice axis last.
        spacing: ``(sx, sy, sz)`` mm; only the in-plane two are used.

    Returns:
        ``{"max_wall_thickness_mm": float | None, "slice": int | None, "slices_measured": int}``; None when
        no slice has a myocardium enclosing an LV cavity.
    """
    label = np.asarray(label)
    best, best_slice, measured = None, None, 0
    sampling = (float(spacing[0]), float(spacing[1]))
    for z in range(label.shape[2]):
        cavity, wall = label[..., z] == lv, label[..., z] == myo
        if not cavity.any() or not wall.any():
            continue
        ring = ndimage.binary_dilation(cavity, structure=np.ones((3, 3), bool)) & ~cavity
        if wall[ring].mean() < ENCLOSED_FRACTION:  # an open (basal) ring: the cavity borders other tissue
            continue
        measured += 1
        distance = ndimage.distance_transform_edt(~cavity, sampling=sampling)
        thickest = float(distance[wall].max())
        if best is None or thickest > best:
            best, best_slice = thickest, z
    return {"max_wall_thickness_mm": best, "slice": best_slice, "slices_measured": measured}
