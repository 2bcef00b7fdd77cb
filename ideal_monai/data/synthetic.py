"""Synthetic cardiac short-axis cine MRI phantoms in the ACDC layout.

The project's built-in default dataset (tests, CI, demo). Each case is a stack of short-axis
slices from base (slice 0) to apex (last slice) with labels in ACDC order
(0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity), at end-diastole (ED) and end-systole
(ES), optionally with an unlabeled cine series that goes ED -> ES -> ED.

Arrays are ``(H, W, Z)`` (``Z`` = slice axis, last, as in ACDC); cine arrays are ``(H, W, Z, T)``.
The NIfTI affine is ``diag(sx, sy, sz, 1)`` so header zooms give the spacing in mm.

Anatomy is modelled in millimetres in a body frame (``x`` towards the patient's left, ``y``
posterior) centred on the LV axis at the base, then rotated and placed in the image at random:

* LV: cavity and epicardium are closed curves ``rho < r(s) * m(phi)`` in polar coordinates around
  the LV centre, with ``m`` a smooth random shape (ellipticity + a 3rd harmonic) and ``r`` shrinking
  like a half prolate ellipsoid from base (``s = 0``) to apex (``s = 1``). At ES the cavity shrinks
  and the wall thickens with the myocardial area per slice conserved.
* RV: a crescent ``R_epi <= rho < R_epi + w * g(phi - beta)`` hugging the septum, ``g`` a bump that
  tapers to the insertion points, its width ``w`` fading to zero before the apex.
* Background: body ellipse on air with subcutaneous fat and chest-wall muscle, lungs, liver,
  descending aorta, spine and random bright/dark blobs. Muscle and liver are given intensities
  close to the myocardium, and fat close to blood, so that intensity alone does not segment.
* Acquisition: textured tissue, in-plane PSF blur, smooth multiplicative bias field, Rician noise
  (magnitude of a complex Gaussian), small per-slice breath-hold shifts.

Everything is drawn from one :class:`numpy.random.SeedSequence`, so a seed gives byte-identical
arrays; case ``i`` of :func:`write_synthetic_dataset` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import IdealInputError
from ..utils.atomic import atomic_path
from ..utils.classes import CLASS_LABELS

__all__ = ["SyntheticCase", "generate_case", "write_synthetic_dataset", "write_synthetic_dicom", "phantom_affine",
           "oblique_phantom_affine"]

#: Default ranges of the random acquisition geometry.
SIZE_RANGE = (144, 224)  # pixels per in-plane axis
INPLANE_SPACING_RANGE = (1.2, 1.8)  # mm, isotropic in-plane as in ACDC
SLICE_THICKNESS_RANGE = (5.0, 10.0)  # mm
NUM_SLICES_RANGE = (6, 12)

# Tissue ids of the painted tissue map; intensities are looked up per case.
(AIR, SOFT, FAT, MUSCLE, LUNG, LIVER, AORTA, CORTEX, MARROW, BLOB_BRIGHT, BLOB_DARK,
 EPI_FAT, RV_WALL, RV_BLOOD, MYO, LV_BLOOD, PAPILLARY) = range(17)
_NUM_TISSUES = 17

# Relative amplitude of the smooth texture field per tissue (the background is heterogeneous,
# blood and myocardium are fairly uniform).
_TEXTURE_AMP = np.zeros(_NUM_TISSUES, dtype=np.float32)
_TEXTURE_AMP[[SOFT, LUNG, BLOB_DARK]] = 0.35
_TEXTURE_AMP[[FAT, EPI_FAT, MUSCLE, LIVER, MARROW, BLOB_BRIGHT]] = 0.12
_TEXTURE_AMP[[AORTA, RV_BLOOD, LV_BLOOD, MYO, RV_WALL, PAPILLARY, CORTEX]] = 0.06


@dataclass(frozen=True)
class SyntheticCase:
    """One phantom patient.

    Attributes:
        ed_image, es_image: int16 ``(H, W, Z)`` magnitude images at ED and ES.
        ed_label, es_label: uint8 ``(H, W, Z)`` labels, 0 bg, 1 RV, 2 MYO, 3 LV.
        spacing: ``(sx, sy, sz)`` in mm.
        cine: int16 ``(H, W, Z, T)`` ED -> ES -> ED, or ``None``. Frame 0 is ``ed_image`` and, for
            even ``T``, frame ``T // 2`` is ``es_image``.
        cine_label: uint8 ``(H, W, Z, T)`` labels of the cine frames, or ``None``.
        volumes: the generator's analytic (continuous, not voxel-counted) class volumes in mL,
            ``{"RV"|"MYO"|"LV": (T,) array}`` over the cine frames, or ``(2,)`` ``[ED, ES]`` without
            a cine. Per slice: the area of the continuous outline times the slice spacing, the same
            convention the voxel-counted volume approximates. The myocardium's is constant in time.
    """

    ed_image: np.ndarray
    ed_label: np.ndarray
    es_image: np.ndarray
    es_label: np.ndarray
    spacing: tuple[float, float, float]
    cine: np.ndarray | None = None
    cine_label: np.ndarray | None = None
    volumes: dict | None = None

    @property
    def affine(self) -> np.ndarray:
        """The ``(4, 4)`` NIfTI affine of every file of this case."""
        return phantom_affine(self.spacing)


def phantom_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """``diag(sx, sy, sz, 1)``: voxel index -> mm, so NIfTI header zooms equal ``spacing``."""
    return np.diag([*map(float, spacing), 1.0])


@dataclass(frozen=True)
class _Params:
    """All random draws of one case except the per-frame noise (mm and radians throughout)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    rotation: float  # body frame -> image frame
    centre: tuple[float, float]  # LV centre at the base, image mm
    slice_shift: np.ndarray  # (Z, 2) breath-hold misregistration, mm
    lv_drift: tuple[float, float]  # LV centre offset base -> apex (body frame)
    # LV
    r_cavity: float  # ED cavity radius at the base
    apex_fraction: float  # ED apical / basal cavity radius
    wall: float  # ED wall thickness at the base
    es_fraction: float  # ES / ED cavity radius
    shape_terms: tuple[tuple[float, float, float], ...]  # (harmonic k, amplitude, phase)
    papillary: tuple[tuple[float, float], ...]  # (angle, radius)
    # RV
    rv_angle: float
    rv_width: float  # ED maximal width at the base
    rv_half_wrap: float  # angular half-extent of the crescent at the base
    rv_end: float  # s beyond which there is no RV
    rv_es_fraction: float
    rv_wall_px: int
    epi_fat: float  # max thickness of epicardial fat on the lateral wall
    # tissue intensities relative to LV blood, per-slice blood factor, gain, acquisition
    intensity: np.ndarray  # (_NUM_TISSUES,)
    blood_slice_factor: np.ndarray  # (Z,)
    gain: float
    psf_sigma: float  # px
    noise_sigma: float  # relative to LV blood
    trabeculation: float  # endocardial darkening of the blood pool


def _shape_factor(phi: np.ndarray, terms: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Smooth angular radius factor ``1 + sum a_k cos(k phi - phase_k)`` (same shape as ``phi``)."""
    out = np.ones_like(phi)
    for k, amp, phase in terms:
        out += amp * np.cos(k * phi - phase)
    return out


def _wrap_angle(a):
    """Angle(s) wrapped into ``[-pi, pi)``."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def _rv_bump(dphi: np.ndarray, half_wrap) -> np.ndarray:
    """RV crescent width profile in ``[0, 1]`` vs angle from the RV axis, 0 beyond ``half_wrap``."""
    return np.clip(np.cos(np.clip(dphi / half_wrap, -1.0, 1.0) * (math.pi / 2)), 0.0, None) ** 0.6


def _place_heart(rng: np.random.Generator, size: tuple[int, int], spacing, rotation: float, r_epi: float,
                 shape_terms, rv_angle: float, rv_width: float, rv_half_wrap: float, margin: float) -> tuple[float, float]:
    """Random LV base centre (image mm) that keeps the whole heart inside the field of view.

    The heart outline at the base (its largest slice, at ED) is traced in the body frame, rotated into
    the image and its bounding box kept ``margin`` mm plus 3 px from the border; within that the
    centre is drawn from the central 40% of the field of view where possible.
    """
    phi = np.linspace(-math.pi, math.pi, 361)
    dphi = _wrap_angle(phi - rv_angle)
    radius = r_epi * _shape_factor(phi, shape_terms) + rv_width * _rv_bump(dphi, rv_half_wrap) + margin
    bx, by = radius * np.cos(phi), radius * np.sin(phi)
    c, s = math.cos(rotation), math.sin(rotation)
    outline = (c * bx - s * by, s * bx + c * by)  # body -> image rotation
    centre = []
    for n, sp, coord in zip(size, spacing, outline):
        fov = n * sp
        lo, hi = -coord.min() + 3 * sp, fov - coord.max() - 3 * sp
        if hi <= lo:  # heart larger than the field of view: centre it and let it be cropped
            centre.append((lo + hi) / 2)
            continue
        c_lo, c_hi = max(lo, 0.3 * fov), min(hi, 0.7 * fov)
        centre.append(float(rng.uniform(c_lo, c_hi)) if c_hi > c_lo else float(rng.uniform(lo, hi)))
    return centre[0], centre[1]


def _as_seed_sequence(seed_or_rng: int | np.random.SeedSequence | np.random.Generator) -> np.random.SeedSequence:
    if isinstance(seed_or_rng, np.random.SeedSequence):
        return seed_or_rng
    if isinstance(seed_or_rng, np.random.Generator):
        return np.random.SeedSequence(int(seed_or_rng.integers(0, 2**63)))
    if _is_int(seed_or_rng) and seed_or_rng >= 0:
        return np.random.SeedSequence(int(seed_or_rng))
    raise IdealInputError("seed", f"expected a non-negative int, SeedSequence or numpy Generator, got {seed_or_rng!r}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _child(ss: np.random.SeedSequence, i: int) -> np.random.Generator:
    # Derived without ``ss.spawn`` (which mutates ``ss``): the same input always gives the same streams.
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i)))


def _sample_params(rng: np.random.Generator, shape: tuple[int, int] | None, num_slices: int | None,
                   spacing: tuple[float, float, float] | None) -> _Params:
    u = rng.uniform
    h, w = shape if shape is not None else tuple(int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    z = num_slices if num_slices is not None else int(rng.integers(NUM_SLICES_RANGE[0], NUM_SLICES_RANGE[1] + 1))
    if spacing is None:
        sxy = round(float(u(*INPLANE_SPACING_RANGE)), 4)
        spacing = (sxy, sxy, round(float(u(*SLICE_THICKNESS_RANGE)), 4))
    spacing = tuple(float(v) for v in spacing)

    rotation = float(u(-math.pi, math.pi))
    r_cavity, wall = u(20.0, 30.0), u(7.0, 11.0)
    shape_terms = ((2, u(0.0, 0.15), u(0, 2 * math.pi)), (3, u(0.0, 0.04), u(0, 2 * math.pi)))
    rv_angle, rv_width = math.atan2(-0.4, -1.0) + u(-0.35, 0.35), u(16.0, 28.0)
    rv_half_wrap, rv_wall_mm = math.radians(u(70.0, 100.0)), u(2.5, 4.0)
    lv_drift = (u(-6.0, 6.0), u(-6.0, 6.0))
    slice_shift = rng.uniform(-1.5, 1.5, (z, 2))
    centre = _place_heart(rng, (h, w), spacing, rotation, r_cavity + wall, shape_terms, rv_angle, rv_width,
                          rv_half_wrap, rv_wall_mm + math.hypot(*lv_drift) + 1.5)

    intensity = np.zeros(_NUM_TISSUES, dtype=np.float32)
    myo = u(0.2, 0.36)
    intensity[[LV_BLOOD, RV_BLOOD, AORTA]] = 1.0, u(0.8, 1.0), u(0.75, 1.1)
    intensity[[MYO, RV_WALL, PAPILLARY]] = myo, myo * u(0.9, 1.1), myo * u(1.0, 1.3)
    # Muscle and liver near the myocardium and fat near blood: a contrast-only rule cannot segment.
    intensity[[MUSCLE, LIVER]] = myo * u(0.85, 1.2), myo * u(1.0, 1.5)
    fat = u(0.65, 0.95)
    intensity[[FAT, EPI_FAT, SOFT]] = fat, fat * u(0.9, 1.05), u(0.3, 0.5)
    intensity[[LUNG, CORTEX, MARROW]] = u(0.02, 0.07), u(0.03, 0.08), u(0.35, 0.55)
    intensity[[BLOB_BRIGHT, BLOB_DARK]] = u(0.6, 1.0), u(0.05, 0.2)

    return _Params(
        shape=(int(h), int(w), int(z)), spacing=spacing, rotation=rotation,
        centre=(centre[0], centre[1]), slice_shift=slice_shift, lv_drift=lv_drift,
        r_cavity=r_cavity, apex_fraction=u(0.25, 0.45), wall=wall, es_fraction=u(0.55, 0.75), shape_terms=shape_terms,
        # anterolateral and posteromedial papillary muscles, opposite the septum
        papillary=tuple((u(0.5, 1.2) * sign, u(2.0, 3.5)) for sign in (1, -1)),
        rv_angle=rv_angle, rv_width=rv_width, rv_half_wrap=rv_half_wrap, rv_end=u(0.72, 0.92),
        rv_es_fraction=u(0.45, 0.7), rv_wall_px=max(1, round(rv_wall_mm / spacing[0])), epi_fat=u(0.0, 4.0),
        intensity=intensity, blood_slice_factor=rng.uniform(0.92, 1.05, z).astype(np.float32),
        gain=u(150.0, 700.0), psf_sigma=u(0.5, 0.9), noise_sigma=u(0.015, 0.05),
        trabeculation=u(0.1, 0.3),
    )


class _Frame:
    """Body-frame coordinate grids ``(H, W, Z)`` of one case (phase independent)."""

    def __init__(self, p: _Params):
        h, w, z = p.shape
        sx, sy, sz = p.spacing
        gx = (np.arange(h, dtype=np.float32) * sx)[:, None, None]
        gy = (np.arange(w, dtype=np.float32) * sy)[None, :, None]
        dx = (p.centre[0] + p.slice_shift[:, 0]).astype(np.float32)[None, None, :]
        dy = (p.centre[1] + p.slice_shift[:, 1]).astype(np.float32)[None, None, :]
        c, s = math.cos(p.rotation), math.sin(p.rotation)
        # image mm -> body mm: inverse rotation about the LV base centre
        self.x = c * (gx - dx) + s * (gy - dy)
        self.y = -s * (gx - dx) + c * (gy - dy)
        self.z = (np.arange(z, dtype=np.float32) * sz)[None, None, :]
        #: position along the LV long axis, 0 base .. 1 apex, ``(1, 1, Z)``
        self.s = (np.arange(z, dtype=np.float32) / max(z - 1, 1))[None, None, :]
        #: body-frame offsets from the (drifting) LV centre, polar radius and angle
        self.lx, self.ly = self.x - p.lv_drift[0] * self.s, self.y - p.lv_drift[1] * self.s
        self.rho = np.hypot(self.lx, self.ly)
        self.phi = np.arctan2(self.ly, self.lx)
        #: angle from the RV axis, ``[-pi, pi)``
        self.dphi = _wrap_angle(self.phi - np.float32(p.rv_angle))
        #: smooth angular shape factor shared by endo- and epicardium
        self.shape = _shape_factor(self.phi, p.shape_terms)

    def ellipsoid(self, cx, cy, cz, ax, ay, az=None, warp: np.ndarray | float = 0.0) -> np.ndarray:
        """Boolean ``(H, W, Z)``: inside an axis-aligned body-frame ellipse(oid) (mm).

        ``warp`` (scalar or ``(H, W, Z)``) is added to the threshold of the normalised distance, so a
        smooth random field gives organic instead of geometric outlines.
        """
        d = ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2
        if az is not None:
            d = d + ((self.z - cz) / az) ** 2
        return d < 1.0 + warp


def _background(p: _Params, f: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Tissue ids ``(H, W, Z)`` of everything but the heart (painter's order, later wins)."""
    u = rng.uniform
    tissue = np.full(p.shape, AIR, dtype=np.uint8)
    apex_z = (p.shape[2] - 1) * p.spacing[2]
    # Smooth unit-std field (~15 mm correlation in-plane, ~1 slice through-plane) bending the organ outlines.
    sigma_px = 15.0 / p.spacing[0]
    warp = 0.25 * _smooth_noise(rng, p.shape, sigma_px, 1.0)
    # Body ellipse centred right-posterior of the heart (the heart sits left-anterior in the chest).
    bx, by, ax, ay = u(-45, -25), u(25, 40), u(150, 190), u(95, 125)
    fat_t, muscle_t = u(5, 20), u(8, 15)
    tissue[f.ellipsoid(bx, by, 0, ax, ay)] = FAT
    tissue[f.ellipsoid(bx, by, 0, ax - fat_t, ay - fat_t)] = MUSCLE
    inner = f.ellipsoid(bx, by, 0, ax - fat_t - muscle_t, ay - fat_t - muscle_t)
    tissue[inner] = SOFT
    # Lungs either side of the heart; they shrink caudally where the liver dome rises.
    for cx, cy, sa, sb in ((u(-80, -60), u(0, 20), u(40, 55), u(55, 75)), (u(50, 65), u(10, 30), u(30, 40), u(50, 70))):
        tissue[inner & f.ellipsoid(cx, cy, -apex_z * 0.2, sa, sb, apex_z * 1.3 + 40, warp)] = LUNG
    # Liver below-right, entering the apical slices.
    tissue[inner & f.ellipsoid(u(-75, -50), u(20, 45), apex_z + u(30, 50), u(70, 90), u(60, 80), u(50, 70), -warp)] = LIVER
    # Descending aorta beside the spine, vertebral body with cortical rim.
    tissue[inner & f.ellipsoid(u(-15, 5), u(60, 75), 0, 11.0, 11.0)] = AORTA
    spine_x, spine_y, spine_r = u(-30, -15), u(95, 110), u(14, 18)
    tissue[inner & f.ellipsoid(spine_x, spine_y, 0, spine_r + 3, spine_r + 3)] = CORTEX
    tissue[inner & f.ellipsoid(spine_x, spine_y, 0, spine_r, spine_r)] = MARROW
    # A few random bright (fluid/fat) and dark (gas/bone) blobs inside the body.
    for _ in range(int(rng.integers(3, 7))):
        blob = f.ellipsoid(u(-120, 80), u(-60, 90), u(0, apex_z), u(6, 20), u(6, 20), u(8, 30), 2 * warp)
        tissue[inner & blob] = BLOB_BRIGHT if rng.random() < 0.5 else BLOB_DARK
    return tissue


def _paint_heart(p: _Params, f: _Frame, background: np.ndarray, phase: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the heart at ``phase`` (0 ED .. 1 ES) over ``background``.

    Returns ``(tissue, label, trabecular)``: uint8 tissue ids and labels ``(H, W, Z)``, and float32
    ``(H, W, Z)`` endocardial distance weights used to darken blood near the walls.
    """
    s = f.s
    # Half prolate ellipsoid profile of the cavity; the wall thins slightly towards the apex.
    r_ed = p.r_cavity * np.sqrt(1.0 - (1.0 - p.apex_fraction**2) * s**2)
    t_ed = p.wall * (1.0 - 0.2 * s)
    r_cav = r_ed * (1.0 - phase * (1.0 - p.es_fraction))
    # Conserve myocardial area per slice: R_epi^2 - r^2 is the same at ED and ES.
    r_epi = np.sqrt(r_cav**2 + (r_ed + t_ed) ** 2 - r_ed**2)
    endo, epi = r_cav * f.shape, r_epi * f.shape

    lv = f.rho < endo
    myo = (f.rho >= endo) & (f.rho < epi)

    # RV crescent: width tapers to the insertion points and fades to nothing before the apex.
    fade = np.clip(1.0 - (s / p.rv_end) ** 2, 0.0, None)
    width = p.rv_width * fade * (1.0 - phase * (1.0 - p.rv_es_fraction))
    half_wrap = p.rv_half_wrap * (0.6 + 0.4 * fade)
    dphi = f.dphi
    bump = _rv_bump(dphi, half_wrap)
    rv = (f.rho >= epi) & (f.rho < epi + width * bump) & (np.abs(dphi) < half_wrap)

    tissue = background.copy()
    # Epicardial fat on the lateral wall, opposite the RV.
    lateral = np.clip(np.cos(dphi - math.pi), 0.0, None)
    tissue[(f.rho >= epi) & (f.rho < epi + p.epi_fat * lateral)] = EPI_FAT
    # Thin RV free wall: myocardium-dark but labelled background, as in ACDC.
    disk = _disk(p.rv_wall_px)
    rv_wall = ndimage.binary_dilation(rv, structure=disk[:, :, None]) & ~rv & ~lv & ~myo
    tissue[rv_wall] = RV_WALL
    tissue[rv] = RV_BLOOD
    tissue[myo] = MYO
    tissue[lv] = LV_BLOOD
    # Papillary muscles sit against the lateral wall inside the cavity; ACDC labels them LV.
    for angle, radius in p.papillary:
        a = p.rv_angle + math.pi + angle
        cr = np.clip(r_cav * _shape_factor(np.array(a), p.shape_terms) - radius - 0.5, 0.0, None)  # (1, 1, Z)
        px, py = cr * math.cos(a), cr * math.sin(a)
        muscle = ((f.lx - px) ** 2 + (f.ly - py) ** 2 < radius**2) & lv & (s > 0.15) & (s < 0.85)
        tissue[muscle] = PAPILLARY

    label = np.zeros(p.shape, dtype=np.uint8)
    label[rv] = CLASS_LABELS["RV"]
    label[myo] = CLASS_LABELS["MYO"]
    label[lv] = CLASS_LABELS["LV"]
    # Trabeculae darken the blood pool within ~2 mm of the endocardium.
    trabecular = np.where(lv, np.exp(-np.clip(endo - f.rho, 0.0, None) / 2.0), 0.0)
    trabecular = np.where(rv, np.exp(-np.clip(f.rho - epi, 0.0, None) / 2.0), trabecular).astype(np.float32)
    return tissue, label, trabecular


def _analytic_volumes(p: _Params, phase: float, num_angles: int = 8192) -> dict[str, float]:
    """Class volumes (mL) of the continuous heart :func:`_paint_heart` rasterises at ``phase``.

    Each slice's cavity and myocardium are star-shaped in polar coordinates about the LV centre
    (radius ``r(s) * shape(phi)``), so their areas are ``1/2 r^2 * integral of shape^2``; the RV
    crescent's is ``1/2 integral of ((epi + w bump)^2 - epi^2)`` over its angles. Both integrals are
    taken with the midpoint rule over ``num_angles`` angles (exact for the trigonometric shape, and
    far below voxel-size error for the crescent). Volume = sum of slice areas x slice spacing.
    """
    z = p.shape[2]
    s = np.arange(z, dtype=np.float64) / max(z - 1, 1)
    phi = (np.arange(num_angles) + 0.5) * (2 * math.pi / num_angles) - math.pi
    dphi_step = 2 * math.pi / num_angles
    shape = _shape_factor(phi, p.shape_terms)
    r_ed = p.r_cavity * np.sqrt(1.0 - (1.0 - p.apex_fraction**2) * s**2)
    t_ed = p.wall * (1.0 - 0.2 * s)
    r_cav = r_ed * (1.0 - phase * (1.0 - p.es_fraction))
    r_epi = np.sqrt(r_cav**2 + (r_ed + t_ed) ** 2 - r_ed**2)
    shape_sq = float(np.sum(shape**2) * dphi_step)
    lv = 0.5 * r_cav**2 * shape_sq
    myo = 0.5 * (r_epi**2 - r_cav**2) * shape_sq
    fade = np.clip(1.0 - (s / p.rv_end) ** 2, 0.0, None)
    width = p.rv_width * fade * (1.0 - phase * (1.0 - p.rv_es_fraction))
    half_wrap = p.rv_half_wrap * (0.6 + 0.4 * fade)
    dphi = _wrap_angle(phi - p.rv_angle)
    rv = np.empty(z)
    for k in range(z):
        inside = np.abs(dphi) < half_wrap[k]
        epi = r_epi[k] * shape[inside]
        outer = epi + width[k] * _rv_bump(dphi[inside], half_wrap[k])
        rv[k] = 0.5 * float(np.sum(outer**2 - epi**2)) * dphi_step
    mm3_to_ml = p.spacing[2] / 1000.0  # slice area (mm^2) x slice spacing (mm)
    return {"RV": float(rv.sum() * mm3_to_ml), "MYO": float(myo.sum() * mm3_to_ml), "LV": float(lv.sum() * mm3_to_ml)}


def _disk(radius: int) -> np.ndarray:
    g = np.arange(-radius, radius + 1)
    return (g[:, None] ** 2 + g[None, :] ** 2) <= radius**2


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float, sigma_z: float = 0.0) -> np.ndarray:
    """Unit-std Gaussian-smoothed white noise ``(H, W, Z)``, in-plane ``sigma`` px, ``sigma_z`` slices.

    Wide kernels are applied on a grid subsampled by ``sigma // 2`` and linearly upsampled, which
    looks the same (the field has no detail below ``sigma``) at a fraction of the cost.
    """
    h, w, z = shape
    step = max(1, int(sigma // 2))
    coarse = (h // step + 2, w // step + 2, z)  # +2: the last fine pixel still has a right neighbour
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), (sigma / step, sigma / step, sigma_z))
    if step > 1:
        for axis, n in ((0, h), (1, w)):
            pos = np.arange(n, dtype=np.float32) / step
            i0 = pos.astype(np.intp)
            frac = (pos - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
            field = np.take(field, i0, axis=axis) * (1 - frac) + np.take(field, i0 + 1, axis=axis) * frac
    else:
        field = field[:h, :w]
    return field / max(float(field.std()), 1e-6)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth random texture ``(H, W, Z)`` with a coarse and a fine scale, per slice (std ~1)."""
    return 0.8 * _smooth_noise(rng, shape, 4.0) + 0.6 * _smooth_noise(rng, shape, 1.0)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field ``(H, W, Z)``, exp of a random quadratic."""
    h, w, z = shape
    x = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
    t = np.linspace(-1, 1, z, dtype=np.float32)[None, None, :]
    c = rng.normal(0.0, [0.2, 0.2, 0.12, 0.12, 0.12, 0.1])
    log_b = c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y + c[5] * t
    return np.exp(np.clip(log_b, -0.5, 0.5)).astype(np.float32)


def _render(p: _Params, tissue: np.ndarray, trabecular: np.ndarray, texture: np.ndarray, bias: np.ndarray,
            noise_rng: np.random.Generator) -> np.ndarray:
    """int16 ``(H, W, Z)`` magnitude image from a tissue map."""
    clean = p.intensity[tissue] * (1.0 + _TEXTURE_AMP[tissue] * texture)
    blood = (tissue == LV_BLOOD) | (tissue == RV_BLOOD)
    clean = np.where(blood, clean * p.blood_slice_factor[None, None, :] * (1.0 - p.trabeculation * trabecular), clean)
    clean = ndimage.gaussian_filter(np.clip(clean, 0.0, None), (p.psf_sigma, p.psf_sigma, 0)) * bias
    # Rician magnitude noise: |signal + complex Gaussian|, so air is a Rayleigh floor, not zero.
    real = clean + p.noise_sigma * noise_rng.standard_normal(clean.shape, dtype=np.float32)
    imag = p.noise_sigma * noise_rng.standard_normal(clean.shape, dtype=np.float32)
    return np.clip(np.rint(np.hypot(real, imag) * p.gain), 0, np.iinfo(np.int16).max).astype(np.int16)


def generate_case(seed_or_rng: int | np.random.SeedSequence | np.random.Generator = 0, *,
                  shape: tuple[int, int] | None = None, num_slices: int | None = None,
                  spacing: tuple[float, float, float] | None = None, num_frames: int = 0) -> SyntheticCase:
    """Generate one phantom patient in memory.

    Args:
        seed_or_rng: an int seed or ``SeedSequence`` (same value -> identical arrays), or a numpy
            ``Generator`` (one integer is drawn from it).
        shape: in-plane ``(H, W)``; random in ``SIZE_RANGE`` per axis when ``None``.
        num_slices: ``Z``, base to apex (at least 3); random in ``NUM_SLICES_RANGE`` when ``None``.
        spacing: ``(sx, sy, sz)`` mm; random isotropic in-plane and slice thickness when ``None``.
        num_frames: ``T`` of an extra cine series ED -> ES -> ED (0 for none, else at least 2).

    Returns:
        a :class:`SyntheticCase` with ``(H, W, Z)`` images/labels and optional ``(H, W, Z, T)`` cine.
    """
    if shape is not None and (len(shape) != 2 or not all(_is_int(n) and n >= 64 for n in shape)):
        raise IdealInputError("shape", f"expected (H, W) integers, both at least 64, got {shape!r}")
    if num_slices is not None and not (_is_int(num_slices) and num_slices >= 3):
        raise IdealInputError("num_slices", f"need an integer of at least 3 slices (base, mid, apex), got {num_slices!r}")
    if spacing is not None and (len(spacing) != 3 or not all(float(v) > 0 for v in spacing)):
        raise IdealInputError("spacing", f"expected three positive mm values, got {spacing!r}")
    if not _is_int(num_frames) or num_frames < 0 or num_frames == 1:
        raise IdealInputError("num_frames", f"expected 0 (no cine) or an integer of at least 2 frames, got {num_frames!r}")
    ss = _as_seed_sequence(seed_or_rng)
    # Independent streams: geometry, background, texture/bias, then noise per frame, so adding a cine
    # never changes the ED/ES arrays.
    p = _sample_params(_child(ss, 0), shape, num_slices, spacing)
    frame = _Frame(p)
    background = _background(p, frame, _child(ss, 1))
    tex_rng = _child(ss, 2)
    texture, bias = _smooth_field(tex_rng, p.shape), _bias_field(tex_rng, p.shape)

    def render(phase: float, stream: int) -> tuple[np.ndarray, np.ndarray]:
        tissue, label, trabecular = _paint_heart(p, frame, background, phase)
        return _render(p, tissue, trabecular, texture, bias, _child(ss, stream)), label

    ed_image, ed_label = render(0.0, 3)
    es_image, es_label = render(1.0, 4)
    cine = cine_label = None
    phases = [0.0, 1.0]
    if num_frames:
        frames, labels = [], []
        # contraction and relaxation: 0 at ED (t = 0), 1 at ES (t = T/2), smooth in between
        phases = [0.5 * (1.0 - math.cos(2.0 * math.pi * t / num_frames)) for t in range(num_frames)]
        for t, phase in enumerate(phases):
            if t == 0:
                image, label = ed_image, ed_label
            elif 2 * t == num_frames:
                image, label = es_image, es_label
            else:
                image, label = render(phase, 5 + t)
            frames.append(image)
            labels.append(label)
        cine, cine_label = np.stack(frames, axis=-1), np.stack(labels, axis=-1)
    per_phase = [_analytic_volumes(p, ph) for ph in phases]
    volumes = {name: np.array([v[name] for v in per_phase]) for name in CLASS_LABELS}
    return SyntheticCase(ed_image, ed_label, es_image, es_label, p.spacing, cine, cine_label, volumes)


def _save_nifti(array: np.ndarray, spacing: tuple[float, float, float], target: Path, frame_time: float | None = None) -> None:
    affine = phantom_affine(spacing)
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    # qform and sform both "scanner", so nibabel, ITK and MONAI readers all agree on the geometry
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if frame_time is not None:
        img.header.set_zooms((*spacing, frame_time))
        img.header.set_xyzt_units("mm", "sec")
    else:
        img.header.set_xyzt_units("mm")
    with atomic_path(target, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def write_synthetic_dataset(output_dir: str | os.PathLike, num_cases: int = 20, seed: int = 0, *,
                            with_cine: bool = False, num_frames: int = 6, first_id: int = 1) -> list[Path]:
    """Write ``num_cases`` phantom patients in the ACDC layout and return their folders.

    Layout per patient ``patientXXX`` (``XXX`` from ``first_id``, zero-padded to 3)::

        patientXXX/patientXXX_frame01.nii.gz      ED image  int16 (H, W, Z)
        patientXXX/patientXXX_frame01_gt.nii.gz   ED label  uint8 (H, W, Z)
        patientXXX/patientXXX_frame02.nii.gz      ES image
        patientXXX/patientXXX_frame02_gt.nii.gz   ES label
        patientXXX/patientXXX_4d.nii.gz           cine int16 (H, W, Z, T), only with ``with_cine``
        patientXXX/patientXXX_4d_gt.nii.gz        its labels uint8 (H, W, Z, T), only with ``with_cine``

    Patient ``first_id + i`` depends only on ``(seed, first_id + i)``, so a larger ``num_cases``
    extends a smaller dataset. Every file is written atomically; existing files are replaced.

    Raises:
        IdealInputError: ``num_cases < 1``, a bad seed or ``num_frames``, or ``output_dir`` cannot be
            created or written.
    """
    output_dir = Path(output_dir)
    if not _is_int(num_cases) or num_cases < 1:
        raise IdealInputError(output_dir, f"num_cases must be a positive integer, got {num_cases!r}")
    if with_cine and not (_is_int(num_frames) and num_frames >= 2):
        raise IdealInputError(output_dir, f"num_frames must be at least 2 for a cine, got {num_frames}")
    if not _is_int(first_id) or first_id < 0:
        raise IdealInputError(output_dir, f"first_id must be non-negative, got {first_id}")
    root = _as_seed_sequence(seed)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IdealInputError(output_dir, f"cannot create output folder: {e.strerror or e}") from e
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise IdealInputError(output_dir, "output folder is not writable")

    folders = []
    for pid in range(first_id, first_id + int(num_cases)):
        case = generate_case(np.random.SeedSequence(root.entropy, spawn_key=(pid,)),
                             num_frames=num_frames if with_cine else 0)
        name = f"patient{pid:03d}"
        folder = output_dir / name
        try:
            folder.mkdir(exist_ok=True)
            for frame, image, label in ((1, case.ed_image, case.ed_label), (2, case.es_image, case.es_label)):
                _save_nifti(image, case.spacing, folder / f"{name}_frame{frame:02d}.nii.gz")
                _save_nifti(label, case.spacing, folder / f"{name}_frame{frame:02d}_gt.nii.gz")
            if case.cine is not None:
                # one cardiac cycle of ~0.8 s spread over the frames
                _save_nifti(case.cine, case.spacing, folder / f"{name}_4d.nii.gz", frame_time=0.8 / num_frames)
                _save_nifti(case.cine_label, case.spacing, folder / f"{name}_4d_gt.nii.gz", frame_time=0.8 / num_frames)
        except OSError as e:
            where = e.filename or folder
            raise IdealInputError(where, f"cannot write synthetic case: {e.strerror or e}") from e
        folders.append(folder)
    return folders


def oblique_phantom_affine(spacing: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """A RAS affine with the phantom's spacing and an oblique short-axis orientation drawn from ``rng``.

    Rotations of 20-50 degrees about each world axis, and a random origin: the geometry a scanner's
    double-oblique short-axis cine has (the slice normal along no world axis).
    """
    from scipy.spatial.transform import Rotation

    angles = rng.uniform(20.0, 50.0, size=3) * rng.choice([-1.0, 1.0], size=3)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = rng.uniform(-80.0, 80.0, size=3)
    return affine


def write_synthetic_dicom(output_dir: str | os.PathLike, num_cases: int = 2, seed: int = 0, *, num_frames: int = 6,
                          first_id: int = 1) -> list[tuple[Path, SyntheticCase, np.ndarray]]:
    """Write phantom cines as scanner-like DICOM MR series: ``patientXXX/`` holds one series of 2D files.

    Each position x phase is one file (random names, so the folder order means nothing), the stack has
    an oblique orientation (:func:`oblique_phantom_affine`), the phases of each position have their own
    trigger-time offset (as in a cine acquired over several breath-holds), and the patient tags carry a
    height, weight and sex. The cine is the one :func:`write_synthetic_dataset` would write for the same
    ``(seed, patient id)``. Returns ``(folder, case, RAS affine)`` per patient, for checks against the phantom.
    """
    from .dicom import write_dicom_series

    output_dir = Path(output_dir)
    if not _is_int(num_cases) or num_cases < 1:
        raise IdealInputError(output_dir, f"num_cases must be a positive integer, got {num_cases!r}")
    root = _as_seed_sequence(seed)
    written = []
    for pid in range(first_id, first_id + int(num_cases)):
        case = generate_case(np.random.SeedSequence(root.entropy, spawn_key=(pid,)), num_frames=num_frames)
        rng = np.random.default_rng([int(root.entropy) % 2**32, pid, 7])
        affine = oblique_phantom_affine(case.spacing, rng)
        nz, nt = case.cine.shape[2], case.cine.shape[3]
        frame_ms = 800.0 / nt
        trigger = np.arange(nt)[None, :] * frame_ms + rng.uniform(0.0, 0.4 * frame_ms, size=(nz, 1))
        name = f"patient{pid:03d}"
        tags = {"0010|0020": name, "0010|0040": str(rng.choice(["M", "F"])),
                "0010|1020": f"{rng.uniform(1.55, 1.90):.2f}", "0010|1030": f"{rng.uniform(50, 95):.0f}"}
        try:
            write_dicom_series(case.cine, affine, output_dir / name, trigger_times_ms=trigger, tags=tags,
                               series_number=pid, shuffle_seed=pid)
        except (OSError, RuntimeError) as e:
            raise IdealInputError(output_dir / name, f"cannot write the DICOM series: {str(e).strip().splitlines()[0]}") from e
        written.append((output_dir / name, case, affine))
    return written
