"""BidirectionalCopyPaste: what each mixed pixel holds, and where its target comes from."""

import pytest
import torch

from ideal_monai.transforms import BidirectionalCopyPaste, random_box_masks


def _batches(n_l=3, n_u=2, size=24):
    # distinct constant images make every pixel's source readable from its value
    x_l = torch.stack([torch.full((1, size, size), 10.0 + i) for i in range(n_l)])
    y_l = torch.stack([torch.full((1, size, size), 1 + i % 3) for i in range(n_l)]).to(torch.uint8)
    x_u = torch.stack([torch.full((1, size, size), -10.0 - i) for i in range(n_u)])
    pseudo = torch.zeros(n_u, 1, size, size, dtype=torch.long)
    return x_l, y_l, x_u, pseudo


def test_box_has_the_requested_side_and_lies_inside():
    torch.manual_seed(0)
    masks = random_box_masks(50, 30, 24, 2.0 / 3.0)
    assert masks.shape == (50, 1, 30, 24) and masks.dtype == torch.bool
    rows = masks.any(dim=3)[:, 0].sum(dim=1)
    cols = masks.any(dim=2)[:, 0].sum(dim=1)
    assert (rows == 20).all() and (cols == 16).all()
    assert (masks.sum(dim=(1, 2, 3)) == 20 * 16).all()  # one filled box, not scattered pixels
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 5  # the boxes move


def test_mix_pastes_both_ways_with_matching_targets():
    torch.manual_seed(1)
    x_l, y_l, x_u, pseudo = _batches()
    mixed = BidirectionalCopyPaste(0.5)(x_l, y_l, x_u, pseudo)
    assert mixed.image.shape == (5, 1, 24, 24) and mixed.target.dtype == torch.long
    from_l = mixed.from_labeled
    # every pixel marked labeled shows a labeled image (values >= 10), every other an unlabeled one
    assert (mixed.image[from_l] >= 10).all() and (mixed.image[~from_l] <= -10).all()
    # labeled-outside mixes first: mostly labeled pixels; the unlabeled-outside mixes: a quarter labeled
    frac = from_l.float().mean(dim=(1, 2, 3))
    assert torch.allclose(frac[:3], torch.full((3,), 0.75)) and torch.allclose(frac[3:], torch.full((2,), 0.25))
    # the target follows the pixel: ground truth of the image it came from, pseudo-label (0) elsewhere
    assert (mixed.target[~from_l] == 0).all()
    for j in range(3):
        assert (mixed.target[j][from_l[j]] == int(y_l[j, 0, 0, 0])).all()
        assert (mixed.image[j][from_l[j]] == 10.0 + j).all()
    for i in range(2):  # partners cycle: unlabeled i gets labeled i mod 3 inside
        assert (mixed.image[3 + i][from_l[3 + i]] == 10.0 + i).all()
        assert (mixed.image[3 + i][~from_l[3 + i]] == -10.0 - i).all()
    assert mixed.valid.all()


def test_unconfident_pseudo_labels_stay_invalid_after_mixing():
    torch.manual_seed(2)
    x_l, y_l, x_u, pseudo = _batches(n_l=2, n_u=2)
    valid_u = torch.zeros_like(pseudo, dtype=torch.bool)
    mixed = BidirectionalCopyPaste()(x_l, y_l, x_u, pseudo, valid_u)
    assert torch.equal(mixed.valid, mixed.from_labeled)  # only ground truth is usable


@pytest.mark.parametrize("fraction", [0.0, 1.0, True])
def test_box_fraction_outside_the_open_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="box_fraction"):
        BidirectionalCopyPaste(fraction)


def test_mismatched_shapes_are_refused():
    x_l, y_l, x_u, pseudo = _batches()
    with pytest.raises(ValueError, match="pseudo_u"):
        BidirectionalCopyPaste()(x_l, y_l, x_u, pseudo[:, :, :10])
    with pytest.raises(ValueError, match="one slice shape"):
        BidirectionalCopyPaste()(x_l, y_l, x_u[..., :10], pseudo)
