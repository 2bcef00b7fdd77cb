"""Two augmented views of one slice plus their dense feature-map correspondence (docs/METHOD.md §3; sources in bundle/docs/README.md).

The dense contrastive loss needs, for every location ``i`` of the query feature map, the key location
``j(i)`` that saw the same anatomy. Instead of guessing it from features we *track the geometry*: each
view is the source slice resampled through a known 2D affine, so the correspondence follows from the
two affines alone.

Coordinate convention (used by every function here)
---------------------------------------------------
Points are homogeneous column vectors ``(x, y, 1)`` in *continuous pixel coordinates*: ``x`` runs
along the last (width) axis, ``y`` along the height axis, pixel ``(row, col)`` covers the unit square
``[col, col + 1) x [row, row + 1)`` and its centre is ``(col + 0.5, row + 0.5)``; an ``(H, W)`` image
spans ``[0, W] x [0, H]``. This is exactly the ``align_corners=False`` convention of
``torch.nn.functional.affine_grid`` / ``grid_sample`` (normalised ``-1``/``+1`` are the outer *edges* of
the border pixels, not their centres), so a crop box maps to the output grid with no half-pixel drift
and resizing by any factor keeps pixel footprints aligned.

A *view affine* is a ``3x3`` float64 matrix mapping a point of the output view to the point of the
source slice it samples. Sizes are ``(H, W)`` tuples, as everywhere in MONAI.

A feature map of stride ``s`` over a ``(Hs, Ws)`` view has ``(Hs // s, Ws // s)`` cells; cell ``(r, c)``
covers view pixels ``[c*s, (c+1)*s) x [r*s, (r+1)*s)`` (what a U-Net encoder with flooring max-pools
computes) and its centre is ``((c + 0.5) * s, (r + 0.5) * s)``.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor, fall_back_tuple

__all__ = [
    "sample_crop_box",
    "view_affine",
    "random_view_affine",
    "warp_view",
    "correspondence",
    "RandPairedViewsd",
    "RandPairedViewsD",
    "RandPairedViewsDict",
]


def sample_crop_box(
    rng: np.random.RandomState,
    in_size: Sequence[int],
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[float, float, float, float]:
    """Draw a random-resized-crop box (torchvision's ``RandomResizedCrop`` sampling, continuous).

    The box area is ``U(scale) * H * W`` and its aspect ratio ``width / height`` is log-uniform in
    ``ratio``; its centre is uniform over the positions that keep the (unrotated) box inside the image.
    After ``attempts`` draws that do not fit, fall back to the largest centred box whose aspect ratio is
    clamped into ``ratio`` (the whole image when its own ratio is in range).

    Args:
        rng: source of randomness (the transform passes its ``self.R``).
        in_size: source ``(H, W)``.
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio ``width / height``.
        attempts: rejection-sampling tries before the fallback.

    Returns:
        ``(cy, cx, ch, cw)``: box centre and size in continuous pixel coordinates (floats).
    """
    h, w = float(in_size[0]), float(in_size[1])
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        area = h * w * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        cw, ch = math.sqrt(area * r), math.sqrt(area / r)
        # exp(log(r)) and sqrt round; a box that is "the whole image" must not be rejected by 1 ulp.
        if cw <= w * (1 + 1e-9) and ch <= h * (1 + 1e-9):
            cw, ch = min(cw, w), min(ch, h)
            cx = rng.uniform(cw / 2, w - cw / 2)
            cy = rng.uniform(ch / 2, h - ch / 2)
            return cy, cx, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, w / min(ratio)
    elif in_ratio > max(ratio):
        cw, ch = h * max(ratio), h
    else:
        cw, ch = w, h
    return h / 2, w / 2, ch, cw


def view_affine(
    box: Sequence[float],
    out_size: Sequence[int],
    angle_deg: float = 0.0,
    flip_h: bool = False,
    flip_v: bool = False,
) -> np.ndarray:
    """The ``3x3`` affine from output-view pixel coordinates to source pixel coordinates.

    The output view shows the crop ``box`` rotated by ``angle_deg`` about its centre, stretched to
    ``out_size``, then mirrored left-right (``flip_h``) and/or top-bottom (``flip_v``). Composition,
    applied right to left to an output point ``(x, y, 1)``::

        A = T(cx, cy) . R(angle) . S(cw, ch) . Flip . T(-1/2, -1/2) . S(1/Ws, 1/Hs)

    i.e. normalise the output to ``[0, 1]^2``, centre it, mirror, scale to the box size, rotate, move to
    the box centre. With ``box = (H/2, W/2, H, W)``, ``out_size = (H, W)``, no angle and no flips it is
    the identity.

    Args:
        box: ``(cy, cx, ch, cw)`` from :func:`sample_crop_box`.
        out_size: view ``(Hs, Ws)``.
        angle_deg: rotation of the sampled region in degrees (``R = [[cos, -sin], [sin, cos]]`` in
            ``(x, y)``; with ``y`` pointing down a positive angle turns the sampled region clockwise on
            screen, so the *content* turns anticlockwise).
        flip_h: mirror the view left-right.
        flip_v: mirror the view top-bottom.

    Returns:
        ``(3, 3)`` float64 array.
    """
    cy, cx, ch, cw = (float(v) for v in box)
    hs, ws = float(out_size[0]), float(out_size[1])
    t = math.radians(angle_deg)
    cos, sin = math.cos(t), math.sin(t)
    normalise = np.array([[1 / ws, 0, -0.5], [0, 1 / hs, -0.5], [0, 0, 1]])  # T(-1/2) . S(1/Ws, 1/Hs)
    flip = np.diag([-1.0 if flip_h else 1.0, -1.0 if flip_v else 1.0, 1.0])
    stretch = np.diag([cw, ch, 1.0])
    rotate_and_place = np.array([[cos, -sin, cx], [sin, cos, cy], [0, 0, 1]])  # T(cx, cy) . R
    return rotate_and_place @ stretch @ flip @ normalise


def random_view_affine(
    rng: np.random.RandomState,
    in_size: Sequence[int],
    out_size: Sequence[int],
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    rotate_range_deg: float = 30.0,
    flip_prob: float = 0.5,
    rotate_prob: float = 1.0,
) -> np.ndarray:
    """Draw one view's geometry: a random-resized crop, flips and a rotation, as a ``3x3`` affine.

    Draw order (fixed, so a seeded ``rng`` reproduces it): crop box, horizontal flip, vertical flip,
    rotation. Each flip happens with probability ``flip_prob``; the rotation angle is uniform in
    ``[-rotate_range_deg, rotate_range_deg]`` with probability ``rotate_prob`` and 0 otherwise.

    Args:
        rng: source of randomness.
        in_size: source ``(H, W)``.
        out_size: view ``(Hs, Ws)``.
        scale, ratio: see :func:`sample_crop_box`.
        rotate_range_deg: maximum absolute rotation in degrees.
        flip_prob: probability of each of the two flips.
        rotate_prob: probability of rotating at all.

    Returns:
        ``(3, 3)`` float64 view affine (see :func:`view_affine`).
    """
    box = sample_crop_box(rng, in_size, scale, ratio)
    flip_h = bool(rng.uniform() < flip_prob)
    flip_v = bool(rng.uniform() < flip_prob)
    angle = 0.0
    if rng.uniform() < rotate_prob:
        angle = float(rng.uniform(-rotate_range_deg, rotate_range_deg))
    return view_affine(box, out_size, angle, flip_h, flip_v)


def _pixel_to_grid(size: Sequence[int]) -> np.ndarray:
    """``3x3`` map from continuous pixel coordinates of an ``(H, W)`` image to ``grid_sample``'s
    normalised ``[-1, 1]`` coordinates with ``align_corners=False`` (``x_n = 2 x / W - 1``)."""
    h, w = float(size[0]), float(size[1])
    return np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])


def warp_view(
    image: torch.Tensor,
    affine: np.ndarray,
    out_size: Sequence[int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Resample ``image`` through a view affine with bilinear interpolation.

    Output pixel ``(r, c)`` takes the bilinearly interpolated source value at
    ``affine @ (c + 0.5, r + 0.5, 1)``. The pixel-space affine is conjugated into ``grid_sample``'s
    normalised space, ``theta = N_in . affine . N_out^-1``, and both ``affine_grid`` and ``grid_sample``
    run with ``align_corners=False`` so that their normalised coordinates agree with the pixel-area
    convention of this module (see the module docstring).

    Args:
        image: ``(C, H, W)`` floating tensor.
        affine: ``(3, 3)`` view affine (output pixel coords -> source pixel coords).
        out_size: view ``(Hs, Ws)``.
        padding_mode: ``grid_sample`` padding for points outside the source: ``"zeros"``, ``"border"``
            or ``"reflection"``.

    Returns:
        ``(C, Hs, Ws)`` tensor, same dtype and device as ``image``.
    """
    c = image.shape[0]
    hs, ws = int(out_size[0]), int(out_size[1])
    theta = _pixel_to_grid(image.shape[1:]) @ affine @ np.linalg.inv(_pixel_to_grid((hs, ws)))
    theta_t = torch.as_tensor(theta[:2], dtype=image.dtype, device=image.device)[None]  # (1, 2, 3)
    grid = F.affine_grid(theta_t, [1, c, hs, ws], align_corners=False)  # (1, Hs, Ws, 2) as (x, y)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out[0]


def correspondence(
    affine_from: np.ndarray,
    affine_to: np.ndarray,
    in_size: Sequence[int],
    view_size: Sequence[int],
    feature_stride: int = 16,
) -> torch.Tensor:
    """Dense feature-map correspondence from one view to another, both of size ``view_size``.

    For every feature cell ``i = (r, c)`` of the *from* view, its centre ``((c+0.5) s, (r+0.5) s)`` is
    mapped to the source slice by ``affine_from`` and from there into the *to* view by
    ``affine_to^-1``; the *to* cell containing that point (``floor(point / s)``) is the match.

    Args:
        affine_from: ``(3, 3)`` view affine of the view whose cells are queried.
        affine_to: ``(3, 3)`` view affine of the view searched for matches.
        in_size: source ``(H, W)``; a cell centre that lands outside ``[0, W) x [0, H)`` has no real
            counterpart (both views see padding there), so it gets -1.
        view_size: ``(Hs, Ws)`` of both views.
        feature_stride: input pixels per feature cell, ``s``.

    Returns:
        ``(Hs // s, Ws // s)`` int64 tensor; entry ``(r, c)`` is the row-major flat index
        ``r' * (Ws // s) + c'`` of the matched cell, or -1 when the point falls outside the source
        image or outside the cells of the other view.
    """
    s = int(feature_stride)
    fh, fw = int(view_size[0]) // s, int(view_size[1]) // s
    if fh < 1 or fw < 1:
        raise ValueError(f"view size {tuple(view_size)} is smaller than feature_stride={s}; no feature cells.")
    rows, cols = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
    centres = np.stack([(cols.ravel() + 0.5) * s, (rows.ravel() + 0.5) * s, np.ones(fh * fw)])  # (3, h*w)
    src = affine_from @ centres
    inside_src = (src[0] >= 0) & (src[0] < in_size[1]) & (src[1] >= 0) & (src[1] < in_size[0])
    dst = np.linalg.solve(affine_to, src)
    col_to = np.floor(dst[0] / s)
    row_to = np.floor(dst[1] / s)
    valid = inside_src & (col_to >= 0) & (col_to < fw) & (row_to >= 0) & (row_to < fh)
    flat = np.where(valid, row_to * fw + col_to, -1).astype(np.int64)
    return torch.from_numpy(flat.reshape(fh, fw))


class RandPairedViewsd(RandomizableTransform, MapTransform):
    """Make two independently augmented views of a 2D slice and their dense correspondence.

    Each view gets its own random geometry (random-resized crop with area fraction in ``scale`` and
    aspect ratio in ``ratio``, left-right and top-bottom flips, rotation within ``+-rotate_range_deg``),
    resampled bilinearly to ``spatial_size`` (:func:`warp_view`), then its own intensity augmentation:
    additive brightness ``U(-brightness, brightness)``, contrast ``U(contrast)`` about the view's
    per-channel mean (these two commute, since a shift moves the mean along with it) and Gaussian noise
    whose std is drawn from ``U(noise_std)``.

    Because the geometry is known, the transform also returns the feature-level correspondence at
    ``(h, w) = (Hs // feature_stride, Ws // feature_stride)`` in both directions (:func:`correspondence`),
    in the format :class:`ideal_monai.losses.DenseLocalContrastiveLoss` takes as ``match``.

    With probability ``1 - prob`` nothing random happens: both views are the whole slice resized to
    ``spatial_size`` and the correspondence is the identity (``arange(h*w)``) as long as
    ``spatial_size`` is a multiple of ``feature_stride``.

    Keys written (the input key is left in place; drop it with ``DeleteItemsd`` if slices of different
    sizes must be collated):

    - ``view_keys[0]``, ``view_keys[1]``: float32 ``(C, Hs, Ws)`` torch tensors (query and key view).
    - ``match_keys[0]``: int64 ``(h, w)``; query cell -> flat key cell index or -1.
    - ``match_keys[1]``: int64 ``(h, w)``; key cell -> flat query cell index or -1.
    - for each ``s`` in ``extra_feature_strides``: ``f"{match_keys[0]}_s{s}"`` and
      ``f"{match_keys[1]}_s{s}"``, the same at ``(Hs // s, Ws // s)`` (e.g. ``match_qk_s8`` for a
      projection head on the level above the deepest; what ``PretrainTrainer`` reads).

    ``spatial_size`` should be a multiple of ``feature_stride`` on both axes (the encoder's feature cells
    then tile the view exactly, and identity/flip correspondences are exact); other sizes work but the
    last ``Hs % feature_stride`` rows / columns belong to no cell.

    Args:
        keys: the one image key; its value is a ``(C, H, W)`` tensor, MetaTensor or numpy array
            (``C = 1`` for MR slices).
        view_keys: output keys of the query and key views.
        match_keys: output keys of the query->key and key->query correspondences.
        spatial_size: view ``(Hs, Ws)``; ``None``/-1 entries fall back to the input size (MONAI's
            ``fall_back_tuple``); an int means a square view.
        feature_stride: input pixels per feature cell (16 for the default 5-level encoder's deepest map).
        extra_feature_strides: further strides to emit correspondences for, from the same views.
        scale: range of the crop area as a fraction of the slice area.
        ratio: range of the crop aspect ratio ``width / height``.
        rotate_range_deg: maximum absolute rotation in degrees.
        flip_prob: probability of each flip (left-right, top-bottom), per view.
        rotate_prob: probability that a view is rotated at all.
        brightness: half-width of the additive brightness range.
        contrast: range of the multiplicative contrast factor.
        noise_std: range the Gaussian noise std is drawn from.
        intensity_prob: probability that a view gets the intensity augmentation.
        padding_mode: ``grid_sample`` padding outside the source (``"zeros"``, ``"border"``,
            ``"reflection"``); matches into padding are -1 regardless.
        prob: probability of augmenting at all (``RandomizableTransform``).
        allow_missing_keys: don't raise when the image key is missing.

    Example::

        t = RandPairedViewsd("image", spatial_size=(256, 256)).set_random_state(0)
        out = t({"image": torch.rand(1, 240, 210)})
        out["view_q"].shape, out["match_qk"].shape   # (1, 256, 256), (16, 16)
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        view_keys: Sequence[Hashable] = ("view_q", "view_k"),
        match_keys: Sequence[Hashable] = ("match_qk", "match_kq"),
        spatial_size: Sequence[int] | int | None = None,
        feature_stride: int = 16,
        extra_feature_strides: Sequence[int] = (),
        scale: Sequence[float] = (0.4, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        rotate_range_deg: float = 30.0,
        flip_prob: float = 0.5,
        rotate_prob: float = 1.0,
        brightness: float = 0.3,
        contrast: Sequence[float] = (0.7, 1.3),
        noise_std: Sequence[float] = (0.0, 0.05),
        intensity_prob: float = 1.0,
        padding_mode: str = "zeros",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ValueError(f"RandPairedViewsd takes exactly one image key, got {self.keys}.")
        if len(view_keys) != 2 or len(match_keys) != 2:
            raise ValueError("view_keys and match_keys must each name two outputs (query, key).")
        if int(feature_stride) < 1 or any(int(v) < 1 for v in extra_feature_strides):
            raise ValueError(f"feature strides must be positive integers, got {feature_stride}, {extra_feature_strides}.")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be 0 < low <= high, got {scale}.")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be 0 < low <= high, got {ratio}.")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', got {padding_mode!r}.")
        self.view_keys = tuple(view_keys)
        self.match_keys = tuple(match_keys)
        self.spatial_size = spatial_size
        self.feature_stride = int(feature_stride)
        self.extra_feature_strides = tuple(int(v) for v in extra_feature_strides)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.rotate_range_deg = float(rotate_range_deg)
        self.flip_prob = float(flip_prob)
        self.rotate_prob = float(rotate_prob)
        self.brightness = float(brightness)
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.noise_std = (float(noise_std[0]), float(noise_std[1]))
        self.intensity_prob = float(intensity_prob)
        self.padding_mode = padding_mode
        # Parameters of the last randomize() call, one entry per view (query, key).
        self._affines: list[np.ndarray] = []
        self._intensity: list[tuple[float, float, np.ndarray] | None] = []

    def randomize(self, img_shape: Sequence[int], out_size: Sequence[int]) -> None:  # type: ignore[override]
        """Draw both views' parameters from ``self.R``.

        Args:
            img_shape: source ``(C, H, W)``.
            out_size: view ``(Hs, Ws)``.
        """
        super().randomize(None)
        in_size = tuple(img_shape[1:])
        self._affines, self._intensity = [], []
        for _ in range(2):
            if not self._do_transform:
                whole = (in_size[0] / 2, in_size[1] / 2, in_size[0], in_size[1])
                self._affines.append(view_affine(whole, out_size))
                self._intensity.append(None)
                continue
            self._affines.append(
                random_view_affine(self.R, in_size, out_size, self.scale, self.ratio,
                                   self.rotate_range_deg, self.flip_prob, self.rotate_prob)
            )
            if self.R.uniform() < self.intensity_prob:
                shift = self.R.uniform(-self.brightness, self.brightness)
                factor = self.R.uniform(self.contrast[0], self.contrast[1])
                std = self.R.uniform(self.noise_std[0], self.noise_std[1])
                # Draw the noise field here too so the whole sample is a function of self.R's state.
                noise = (std * self.R.standard_normal((img_shape[0], *out_size))).astype(np.float32)
                self._intensity.append((shift, factor, noise))
            else:
                self._intensity.append(None)

    @staticmethod
    def _augment_intensity(view: torch.Tensor, params: tuple[float, float, np.ndarray]) -> torch.Tensor:
        """Brightness shift, contrast about the per-channel mean, additive noise on a ``(C, Hs, Ws)`` view."""
        shift, factor, noise = params
        mean = view.mean(dim=(1, 2), keepdim=True)
        view = (view - mean) * factor + mean + shift
        return view + torch.from_numpy(noise).to(view.device)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        """Add the two views and the two correspondences to a copy of ``data``."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:  # missing key with allow_missing_keys=True
            return d
        # Plain float32 tensor (from numpy, tensor or MetaTensor): the views are resampled crops, no
        # longer in the slice's world space, so carrying its affine/meta along would be wrong.
        img = convert_to_tensor(d[keys[0]], dtype=torch.float32, track_meta=False)
        if img.ndim != 3:
            raise ValueError(f"RandPairedViewsd expects a channel-first 2D slice (C, H, W), got shape {tuple(img.shape)}.")
        in_size = tuple(img.shape[1:])
        out_size = tuple(int(v) for v in fall_back_tuple(self.spatial_size, in_size))
        self.randomize(img.shape, out_size)
        for view_key, affine, params in zip(self.view_keys, self._affines, self._intensity):
            view = warp_view(img, affine, out_size, self.padding_mode)
            d[view_key] = view if params is None else self._augment_intensity(view, params)
        aff_q, aff_k = self._affines
        # Every stride reuses the same two affines: the multi-level loss must see one pair of views.
        for stride, suffix in [(self.feature_stride, "")] + [(v, f"_s{v}") for v in self.extra_feature_strides]:
            d[f"{self.match_keys[0]}{suffix}"] = correspondence(aff_q, aff_k, in_size, out_size, stride)
            d[f"{self.match_keys[1]}{suffix}"] = correspondence(aff_k, aff_q, in_size, out_size, stride)
        return d


RandPairedViewsD = RandPairedViewsDict = RandPairedViewsd
