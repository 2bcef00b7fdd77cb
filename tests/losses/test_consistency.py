"""BidirectionalConsistencyLoss and the consistency-weight ramp-up."""

from __future__ import annotations

import math

import pytest
import torch

from ideal_monai.losses import BidirectionalConsistencyLoss, ConsistencyWeightSchedule, sigmoid_rampup


def random_logits(seed, shape=(2, 4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3, torch.randn(shape, generator=g,
                                                                                    dtype=torch.float64) * 3


def hand_ce(logits, labels, mask=None):
    """Mean over masked locations of -log softmax(logits)[label], written out explicitly."""
    logp = logits - logits.exp().sum(dim=1, keepdim=True).log()
    nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1)
    if mask is None:
        return nll.mean()
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def test_matches_hand_written_reference():
    l1, l2 = random_logits(0)
    y1, y2 = l1.argmax(1), l2.argmax(1)
    want = hand_ce(l1, y2) + hand_ce(l2, y1)
    torch.testing.assert_close(BidirectionalConsistencyLoss()(l1, l2), want)


def test_pseudo_labels_carry_no_gradient():
    l1, l2 = random_logits(1)
    l1.requires_grad_(True)
    l2.requires_grad_(True)
    BidirectionalConsistencyLoss()(l1, l2).backward()
    # only CE(logits2, y1) may reach logits2, only CE(logits1, y2) may reach logits1
    a1 = l1.detach().clone().requires_grad_(True)
    a2 = l2.detach().clone().requires_grad_(True)
    hand_ce(a2, l1.detach().argmax(1)).backward()
    hand_ce(a1, l2.detach().argmax(1)).backward()
    torch.testing.assert_close(l2.grad, a2.grad)
    torch.testing.assert_close(l1.grad, a1.grad)


def test_threshold_one_gives_zero_with_grad_and_threshold_zero_is_unmasked():
    l1, l2 = random_logits(2)
    l1.requires_grad_(True)
    zero = BidirectionalConsistencyLoss(confidence_threshold=1.0)(l1, l2)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.count_nonzero(l1.grad) == 0
    torch.testing.assert_close(BidirectionalConsistencyLoss(confidence_threshold=0.0)(l1, l2),
                               BidirectionalConsistencyLoss()(l1, l2))


def test_mask_uses_the_label_giving_streams_confidence():
    l1, l2 = random_logits(3)
    eta = 0.7
    c1, y1 = torch.softmax(l1, 1).max(1)
    c2, y2 = torch.softmax(l2, 1).max(1)
    m1, m2 = (c2 > eta).double(), (c1 > eta).double()
    assert 0 < m1.sum() < m1.numel() and 0 < m2.sum() < m2.numel() and not torch.equal(m1, m2)
    want = hand_ce(l1, y2, m1) + hand_ce(l2, y1, m2)
    torch.testing.assert_close(BidirectionalConsistencyLoss(confidence_threshold=eta)(l1, l2), want)
    want_sum = (hand_ce(l1, y2, m1) * m1.sum() + hand_ce(l2, y1, m2) * m2.sum())
    torch.testing.assert_close(BidirectionalConsistencyLoss(eta, reduction="sum")(l1, l2), want_sum)
    per_location = BidirectionalConsistencyLoss(eta, reduction="none")(l1, l2)
    assert per_location.shape == (2, 5, 6)
    torch.testing.assert_close(per_location.sum(), want_sum)


def test_agreeing_streams_score_lower_and_3d_inputs_work():
    l1, l2 = random_logits(4, shape=(1, 3, 4, 4, 2))
    loss = BidirectionalConsistencyLoss()
    assert loss(l1, l1 * 5) < loss(l1, l2)
    with pytest.raises(ValueError, match="same shape"):
        loss(l1, l2[..., :1])
    with pytest.raises(ValueError, match="confidence_threshold"):
        BidirectionalConsistencyLoss(confidence_threshold=1.5)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0, 0) == 1.0
    values = [sigmoid_rampup(t, 100) for t in range(0, 101, 10)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        sigmoid_rampup(1, -1)


def test_consistency_weight_schedule():
    schedule = ConsistencyWeightSchedule(lambda_max=0.5, rampup_iterations=40)
    assert schedule(0) == pytest.approx(0.5 * math.exp(-5))
    assert schedule(20) == pytest.approx(0.5 * math.exp(-1.25))
    assert schedule(40) == 0.5 and schedule(10_000) == 0.5
    assert ConsistencyWeightSchedule(0.3, 0)(0) == 0.3
    with pytest.raises(ValueError):
        ConsistencyWeightSchedule(-1.0, 10)
