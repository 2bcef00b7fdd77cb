"""RandPairedViewsd and its geometry helpers: the returned correspondence must agree with what the
rendered views actually show.

The main check renders a *coordinate image* (channels: source x, source y, ones) through the transform,
recovers each view's output->source affine from the rendered pixels alone (least squares on pixels
whose ones-channel is 1, i.e. away from padding) and verifies every entry of ``match_qk``/``match_kq``
against it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ideal_monai.transforms import (
    RandPairedViewsd,
    correspondence,
    random_view_affine,
    sample_crop_box,
    view_affine,
    warp_view,
)

NO_INTENSITY = dict(intensity_prob=0.0)
NO_GEOMETRY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_range_deg=0.0, flip_prob=0.0)


def coordinate_image(h: int, w: int) -> torch.Tensor:
    """``(3, h, w)``: continuous x and y of each pixel centre (``col + 0.5``, ``row + 0.5``) and ones."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([cols + 0.5, rows + 0.5, torch.ones(h, w)])


def estimate_affine(view: torch.Tensor) -> np.ndarray:
    """Recover the ``3x3`` output->source affine of a rendered coordinate view ``(3, Hs, Ws)``.

    Only pixels with ones-channel == 1 are used: there bilinear interpolation of the linear coordinate
    field is exact, so the fit must be exact too (asserted).
    """
    hs, ws = view.shape[1:]
    rows, cols = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
    good = (np.abs(view[2].numpy() - 1.0) < 1e-5).ravel()
    assert good.sum() > 20, "view sees too little of the source to estimate its geometry"
    design = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5, np.ones(hs * ws)], 1)[good]
    target = view[:2].reshape(2, -1).numpy().T[good].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    assert np.abs(design @ coef - target).max() < 2e-3, "rendered view is not an affine image of the source"
    return np.vstack([coef.T, [0.0, 0.0, 1.0]])


def check_match(match: torch.Tensor, view_from: torch.Tensor, view_to: torch.Tensor, in_size, stride: int,
                tol: float = 0.02) -> tuple[int, int]:
    """Assert ``match`` against the geometry seen in two rendered coordinate views.

    For a matched query cell, the source point under its centre must lie inside the matched key cell's
    footprint (key-view box of the cell, grown by ``tol`` pixels for float32 rendering error). For a -1
    cell, that point must not lie strictly (by ``tol``) inside both the source image and the area covered
    by the key view's feature cells. Returns the number of matched and of -1 cells.
    """
    a_from, a_to = estimate_affine(view_from), estimate_affine(view_to)
    fh, fw = match.shape
    hs, ws = view_from.shape[1:]
    n_valid = n_invalid = 0
    for r in range(fh):
        for c in range(fw):
            centre = np.array([(c + 0.5) * stride, (r + 0.5) * stride, 1.0])
            src = a_from @ centre
            # Where the cell centre lies between four fully valid pixels, the rendered coordinates
            # themselves must agree with the fitted affine (guards against a fit that ignores pixels).
            cy, cx = int(centre[1]), int(centre[0])
            patch = view_from[:, cy - 1:cy + 1, cx - 1:cx + 1]
            if stride % 2 == 0 and torch.all((patch[2] - 1).abs() < 1e-5):
                np.testing.assert_allclose(patch[:2].mean(dim=(1, 2)).numpy(), src[:2], atol=2e-3)
            p = np.linalg.solve(a_to, src)  # point in the key view's pixel coordinates
            j = int(match[r, c])
            if j >= 0:
                n_valid += 1
                jr, jc = divmod(j, fw)
                assert -tol <= src[0] <= in_size[1] + tol and -tol <= src[1] <= in_size[0] + tol, (r, c, src)
                assert jc * stride - tol <= p[0] <= (jc + 1) * stride + tol, (r, c, j, p)
                assert jr * stride - tol <= p[1] <= (jr + 1) * stride + tol, (r, c, j, p)
            else:
                n_invalid += 1
                assert j == -1
                in_src = tol < src[0] < in_size[1] - tol and tol < src[1] < in_size[0] - tol
                in_key = tol < p[0] < fw * stride - tol and tol < p[1] < fh * stride - tol
                assert not (in_src and in_key), (r, c, src, p)
    return n_valid, n_invalid


def test_match_agrees_with_rendered_coordinates():
    """Full augmentation (crop, flips, rotation), odd non-square source, non-square views."""
    in_size, out_size, stride = (91, 77), (64, 48), 8
    image = coordinate_image(*in_size)
    t = RandPairedViewsd("image", spatial_size=out_size, feature_stride=stride, **NO_INTENSITY)
    totals = np.zeros(2, int)
    for seed in range(6):
        out = t.set_random_state(seed)({"image": image})
        assert out["match_qk"].shape == (out_size[0] // stride, out_size[1] // stride)
        totals += check_match(out["match_qk"], out["view_q"], out["view_k"], in_size, stride)
        totals += check_match(out["match_kq"], out["view_k"], out["view_q"], in_size, stride)
    # Non-vacuous: plenty of matches, and some cells fall outside the other view.
    assert totals[0] > 200 and totals[1] > 20, totals


def test_match_with_rotation_beyond_source_border():
    """Whole-image crops rotated by up to 30 degrees put view corners outside the source: those are -1."""
    in_size, stride = (64, 64), 16
    t = RandPairedViewsd("image", feature_stride=stride, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                         rotate_range_deg=30.0, flip_prob=0.5, **NO_INTENSITY)
    seen_outside = False
    for seed in range(4):
        out = t.set_random_state(seed)({"image": coordinate_image(*in_size)})
        _, n_invalid = check_match(out["match_qk"], out["view_q"], out["view_k"], in_size, stride)
        seen_outside |= n_invalid > 0
    assert seen_outside


def test_identity_geometry_gives_arange_and_exact_views():
    image = torch.rand(1, 64, 64)
    out = RandPairedViewsd("image", **NO_GEOMETRY, **NO_INTENSITY).set_random_state(3)({"image": image})
    expected = torch.arange(16).reshape(4, 4)
    assert torch.equal(out["match_qk"], expected) and torch.equal(out["match_kq"], expected)
    # align_corners=False + pixel-centre sampling: the identity affine reproduces the input pixels.
    torch.testing.assert_close(out["view_q"], image, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["view_k"], image, atol=1e-5, rtol=0)


def test_identity_geometry_with_resize_to_spatial_size():
    """Non-square slice, whole-image crop, resized to a different multiple of the stride."""
    h, w = 80, 96
    t = RandPairedViewsd("image", spatial_size=(48, 64), scale=(1.0, 1.0), ratio=(w / h, w / h),
                         rotate_range_deg=0.0, flip_prob=0.0, **NO_INTENSITY)
    out = t.set_random_state(0)({"image": coordinate_image(h, w)})
    assert torch.equal(out["match_qk"], torch.arange(12).reshape(3, 4))
    assert torch.equal(out["match_kq"], torch.arange(12).reshape(3, 4))
    # The view is the whole slice: the fitted affine is a pure scale (w/Ws, h/Hs).
    np.testing.assert_allclose(estimate_affine(out["view_q"]), np.diag([w / 64, h / 48, 1.0]), atol=1e-4)


def test_prob_zero_skips_all_augmentation():
    image = torch.rand(1, 32, 48)
    out = RandPairedViewsd("image", prob=0.0).set_random_state(0)({"image": image})
    torch.testing.assert_close(out["view_q"], image, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["view_k"], image, atol=1e-5, rtol=0)
    assert torch.equal(out["match_qk"], torch.arange(6).reshape(2, 3))


def test_intensity_only_keeps_identity_match():
    image = torch.rand(1, 48, 48)
    t = RandPairedViewsd("image", **NO_GEOMETRY, noise_std=(0.0, 0.0))
    for seed in range(5):
        out = t.set_random_state(seed)({"image": image})
        assert torch.equal(out["match_qk"], torch.arange(9).reshape(3, 3))
        assert torch.equal(out["match_kq"], torch.arange(9).reshape(3, 3))
        slopes = []
        for key in ("view_q", "view_k"):
            # Without noise each view is an exact affine function of the image: (x - m) * c + m + b.
            x, y = image.ravel().double(), out[key].ravel().double()
            c, b = np.polyfit(x.numpy(), y.numpy(), 1)
            assert np.abs(np.polyval([c, b], x.numpy()) - y.numpy()).max() < 1e-4
            assert 0.7 - 1e-6 <= c <= 1.3 + 1e-6
            m = float(image.mean())
            assert abs((b - m * (1 - c))) <= 0.3 + 1e-5  # the brightness shift
            slopes.append(c)
        assert slopes[0] != slopes[1]  # the two views are augmented independently


def test_intensity_noise_std_in_range():
    image = torch.zeros(1, 64, 64)
    t = RandPairedViewsd("image", **NO_GEOMETRY, brightness=0.0, contrast=(1.0, 1.0), noise_std=(0.02, 0.05))
    out = t.set_random_state(1)({"image": image})
    for key in ("view_q", "view_k"):
        std = float(out[key].std())
        assert 0.018 < std < 0.055, std


def flip_index_map(fh: int, fw: int, flip_h: bool, flip_v: bool) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
    rows = fh - 1 - rows if flip_v else rows
    cols = fw - 1 - cols if flip_h else cols
    return rows * fw + cols


@pytest.mark.parametrize("flip_q", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("flip_k", [(False, False), (True, False)])
def test_flip_correspondence_is_exact(flip_q, flip_k):
    in_size, stride = (64, 48), 16
    whole = (32.0, 24.0, 64.0, 48.0)
    aff_q, aff_k = view_affine(whole, in_size, 0.0, *flip_q), view_affine(whole, in_size, 0.0, *flip_k)
    match = correspondence(aff_q, aff_k, in_size, in_size, stride)
    # Query cell -> source cell (undo q's flips) -> key cell (apply k's flips); flips compose as XOR.
    expected = flip_index_map(4, 3, flip_q[0] != flip_k[0], flip_q[1] != flip_k[1])
    assert torch.equal(match, expected)


def test_flip_only_transform_matches_flipped_views():
    image = torch.rand(1, 64, 48)
    t = RandPairedViewsd("image", scale=(1.0, 1.0), ratio=(0.75, 0.75), rotate_range_deg=0.0, flip_prob=0.5,
                         **NO_INTENSITY)
    candidates = {(fh, fv): torch.flip(image, [d for d, f in ((2, fh), (1, fv)) if f]) if (fh or fv) else image
                  for fh in (False, True) for fv in (False, True)}
    seen = set()
    for seed in range(12):
        out = t.set_random_state(seed)({"image": image})
        flips = []
        for key in ("view_q", "view_k"):
            found = [f for f, ref in candidates.items() if torch.allclose(out[key], ref, atol=1e-5)]
            assert len(found) == 1, "a flip-only view must be an exact flip of the slice"
            flips.append(found[0])
        (qh, qv), (kh, kv) = flips
        seen.add(flips[0])
        assert torch.equal(out["match_qk"], flip_index_map(4, 3, qh != kh, qv != kv))
        assert torch.equal(out["match_kq"], flip_index_map(4, 3, qh != kh, qv != kv))
    assert len(seen) >= 3  # the seeds exercised several flip combinations


def test_warp_view_follows_pixel_centre_convention():
    """Output pixel (r, c) samples the source at affine @ (c + 0.5, r + 0.5): checked on a coordinate image."""
    rng = np.random.RandomState(0)
    src = coordinate_image(50, 70)
    for _ in range(3):
        aff = random_view_affine(rng, (50, 70), (24, 40), scale=(0.2, 0.5), rotate_range_deg=20.0)
        view = warp_view(src, aff, (24, 40))
        rows, cols = np.meshgrid(np.arange(24), np.arange(40), indexing="ij")
        expected = aff @ np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5, np.ones(24 * 40)])
        inside = (np.abs(view[2].numpy() - 1) < 1e-5).ravel()
        assert inside.mean() > 0.5
        got = view[:2].reshape(2, -1).numpy()
        np.testing.assert_allclose(got[:, inside], expected[:2, inside], atol=2e-3)


def test_random_view_affine_respects_ranges():
    rng = np.random.RandomState(0)
    in_size, out_size = (80, 120), (32, 32)
    angles, flips = [], 0
    for _ in range(300):
        aff = random_view_affine(rng, in_size, out_size, scale=(0.4, 1.0), ratio=(0.75, 4 / 3),
                                 rotate_range_deg=30.0, flip_prob=0.5)
        lin = aff[:2, :2]
        cw, ch = np.linalg.norm(lin[:, 0]) * out_size[1], np.linalg.norm(lin[:, 1]) * out_size[0]
        area = cw * ch / (in_size[0] * in_size[1])
        assert 0.4 - 1e-9 <= area <= 1.0 + 1e-9 or (cw, ch) == pytest.approx((80 * 4 / 3, 80))  # fallback box
        assert 0.75 - 1e-9 <= cw / ch <= 4 / 3 + 1e-9
        flips += np.linalg.det(lin) < 0  # exactly one flip reverses orientation
        angles.append(np.degrees(np.arctan2(lin[1, 0], lin[0, 0])) % 180)
    assert 80 < flips < 220
    folded = np.minimum(np.array(angles), 180 - np.array(angles))  # flips add 180 deg; fold it away
    assert folded.max() <= 30 + 1e-6 and folded.max() > 20


def test_sample_crop_box_stays_inside_image():
    rng = np.random.RandomState(1)
    for _ in range(200):
        cy, cx, ch, cw = sample_crop_box(rng, (40, 100), scale=(0.1, 1.0), ratio=(0.5, 2.0))
        assert 0 <= cx - cw / 2 and cx + cw / 2 <= 100 + 1e-9
        assert 0 <= cy - ch / 2 and cy + ch / 2 <= 40 + 1e-9
    # Impossible request (ratio far from the slice's): centred fallback with the ratio clamped.
    assert sample_crop_box(rng, (40, 100), scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (20.0, 50.0, 40.0, 40.0)


def test_set_random_state_reproduces_and_seeds_differ():
    image = torch.rand(1, 64, 64)
    t = RandPairedViewsd("image")
    a = t.set_random_state(7)({"image": image})
    b = t.set_random_state(7)({"image": image})
    c = t.set_random_state(8)({"image": image})
    for key in ("view_q", "view_k", "match_qk", "match_kq"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["view_q"], c["view_q"])
    assert not torch.equal(a["view_q"], a["view_k"])  # the two views get independent draws
    again = t({"image": image})  # the state advances between calls
    assert not torch.equal(again["view_q"], c["view_q"])


@pytest.mark.parametrize("make", [lambda a: a, torch.from_numpy, lambda a: MetaTensor(torch.from_numpy(a))])
def test_shapes_and_dtypes_odd_input(make):
    array = np.random.RandomState(0).randint(0, 500, size=(1, 37, 53)).astype(np.int16)
    out = RandPairedViewsd("image").set_random_state(0)({"image": make(array)})
    for key in ("view_q", "view_k"):
        assert type(out[key]) is torch.Tensor and out[key].dtype == torch.float32
        assert out[key].shape == (1, 37, 53)  # default spatial_size: the input size
    for key in ("match_qk", "match_kq"):
        m = out[key]
        assert m.dtype == torch.int64 and m.shape == (2, 3)  # 37 // 16, 53 // 16
        assert int(m.min()) >= -1 and int(m.max()) < 6
    assert out["image"] is not None  # the source stays


@pytest.mark.parametrize("spatial_size, view_shape, match_shape",
                         [(32, (32, 32), (2, 2)), ((48, -1), (48, 53), (3, 3)), ((64, 80), (64, 80), (4, 5))])
def test_spatial_size_override(spatial_size, view_shape, match_shape):
    t = RandPairedViewsd("img", view_keys=("a", "b"), match_keys=("ab", "ba"), spatial_size=spatial_size)
    out = t.set_random_state(0)({"img": torch.rand(1, 37, 53)})
    assert out["a"].shape == out["b"].shape == (1, *view_shape)
    assert out["ab"].shape == out["ba"].shape == match_shape


def test_missing_key_and_bad_inputs():
    assert RandPairedViewsd("image", allow_missing_keys=True)({"label": 1}) == {"label": 1}
    with pytest.raises(KeyError):
        RandPairedViewsd("image")({"label": 1})
    with pytest.raises(ValueError, match="exactly one image key"):
        RandPairedViewsd(("image", "label"))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        RandPairedViewsd("image")({"image": torch.rand(32, 32)})
    with pytest.raises(ValueError, match="smaller than feature_stride"):
        RandPairedViewsd("image", spatial_size=8)({"image": torch.rand(1, 32, 32)})


def test_extra_feature_strides_share_the_same_views():
    in_size, out_size = (70, 90), (64, 64)
    t = RandPairedViewsd("image", spatial_size=out_size, feature_stride=16, extra_feature_strides=(8,),
                         **NO_INTENSITY)
    out = t.set_random_state(2)({"image": coordinate_image(*in_size)})
    assert out["match_qk"].shape == (4, 4) and out["match_qk_s8"].shape == (8, 8)
    assert out["match_kq_s8"].shape == (8, 8)
    # Both levels are verified against the one pair of rendered views.
    check_match(out["match_qk"], out["view_q"], out["view_k"], in_size, 16)
    check_match(out["match_qk_s8"], out["view_q"], out["view_k"], in_size, 8)
    check_match(out["match_kq_s8"], out["view_k"], out["view_q"], in_size, 8)
    # Same seed without the extra level: identical views and level-16 matches (no extra draws).
    plain = RandPairedViewsd("image", spatial_size=out_size, **NO_INTENSITY).set_random_state(2)
    ref = plain({"image": coordinate_image(*in_size)})
    assert torch.equal(ref["view_q"], out["view_q"]) and torch.equal(ref["match_qk"], out["match_qk"])
