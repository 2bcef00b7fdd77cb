"""MixedSupervisionLoss: each region is scored on its own, the pseudo-labeled one weighted and masked."""

import pytest
import torch
from monai.losses import DiceCELoss

from ideal_monai.losses import MixedSupervisionLoss


def _case(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 4, size, size, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (b, 1, size, size), generator=g)
    return logits, target


def test_all_labeled_equals_dice_ce_pooled_over_the_batch():
    logits, target = _case()
    everywhere = torch.ones_like(target, dtype=torch.bool)
    loss = MixedSupervisionLoss(pseudo_weight=0.5)(logits, target, everywhere)
    expected = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.isclose(loss, expected, atol=1e-5)


def test_perfect_prediction_scores_zero_on_a_partial_region():
    """Pixels outside the region count for no class (not as background): a right answer inside costs ~0."""
    _, target = _case(b=4)
    logits = 50.0 * torch.nn.functional.one_hot(target[:, 0], 4).permute(0, 3, 1, 2).float()
    logits[..., 8:] = 50.0 * torch.randn(4, 4, 16, 8)  # wrong, confident outside the region
    region = torch.zeros_like(target, dtype=torch.bool)
    region[..., :8] = True
    gt, _ = MixedSupervisionLoss().terms(logits, target, region)
    assert float(gt) < 1e-4


def test_pseudo_region_weighted_and_masked():
    logits, target = _case()
    from_labeled = torch.zeros_like(target, dtype=torch.bool)
    from_labeled[..., :8] = True
    loss_fn = MixedSupervisionLoss(labeled_weight=1.0, pseudo_weight=0.5)
    gt, pseudo = loss_fn.terms(logits, target, from_labeled)
    assert torch.isclose(loss_fn(logits, target, from_labeled), gt + 0.5 * pseudo)
    assert torch.isclose(loss_fn(logits, target, from_labeled, pseudo_weight=0.0), gt)
    # a pseudo-label marked invalid changes nothing, whatever it says
    valid = torch.ones_like(from_labeled)
    valid[..., 12:] = False
    other = target.clone()
    other[..., 12:] = (other[..., 12:] + 1) % 4
    assert torch.isclose(loss_fn.terms(logits, target, from_labeled, valid)[1],
                         loss_fn.terms(logits, other, from_labeled, valid)[1])


def test_gradient_only_from_the_regions_that_count():
    logits, target = _case()
    from_labeled = torch.zeros_like(target, dtype=torch.bool)
    from_labeled[..., :8] = True
    valid = from_labeled.clone()  # no usable pseudo-label
    MixedSupervisionLoss()(logits, target, from_labeled, valid).backward()
    assert logits.grad[..., 8:].abs().max() == 0
    assert logits.grad[..., :8].abs().max() > 0


def test_empty_region_contributes_zero_not_nan():
    logits, target = _case()
    nowhere = torch.zeros_like(target, dtype=torch.bool)
    gt, pseudo = MixedSupervisionLoss().terms(logits, target, nowhere, nowhere)
    assert float(gt.detach()) == 0.0 and float(pseudo.detach()) == 0.0
    (gt + pseudo).backward()  # still part of the graph
    assert torch.isfinite(logits.grad).all()


def test_bad_shapes_and_weights_are_refused():
    logits, target = _case()
    with pytest.raises(ValueError, match="target"):
        MixedSupervisionLoss()(logits, target[:, :, :8], torch.ones_like(target, dtype=torch.bool))
    with pytest.raises(ValueError, match="pseudo_weight"):
        MixedSupervisionLoss(pseudo_weight=-1.0)
