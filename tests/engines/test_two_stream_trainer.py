"""TwoStreamTrainer: one iteration's loss equals L_sup + lambda(t) * L_bcr, unlabeled data cycles."""

import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from ideal_monai.engines import TwoStreamTrainer
from ideal_monai.losses import BidirectionalConsistencyLoss, ConsistencyWeightSchedule
from ideal_monai.networks import DualDecoderUNet, split_streams


def _loaders(n_l=4, n_u=6, size=32):
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.rand(1, size, size, generator=g), "label": torch.randint(0, 4, (1, size, size), generator=g)}
               for _ in range(n_l)]
    unlabeled = [{"image": torch.rand(1, size, size, generator=g)} for _ in range(n_u)]
    return DataLoader(labeled, batch_size=2), DataLoader(unlabeled, batch_size=2)


def test_iteration_loss_equals_sup_plus_lambda_bcr():
    """Recompute the last iteration by hand (lr=0 keeps weights; no perturbation keeps it deterministic)."""
    torch.manual_seed(0)
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8), perturbations=("none", "none"))
    labeled, unlabeled = _loaders()
    schedule = ConsistencyWeightSchedule(lambda_max=0.5, rampup_iterations=4)
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.0),
                               unlabeled_data_loader=unlabeled, consistency_weight=schedule)
    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 2
    assert abs(float(out["lambda"]) - schedule(2)) < 1e-7

    x_l = torch.stack([d["image"] for d in labeled.dataset[2:4]])
    y_l = torch.stack([d["label"] for d in labeled.dataset[2:4]])
    x_u = torch.stack([d["image"] for d in unlabeled.dataset[2:4]])
    net.train()
    with torch.no_grad():
        z1, z2 = split_streams(net(torch.cat([x_l, x_u])), 2)
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        sup = 0.5 * dice_ce(z1[:2], y_l) + 0.5 * dice_ce(z2[:2], y_l)
        bcr = BidirectionalConsistencyLoss()(z1, z2)
    assert torch.isclose(out["loss_sup"], sup, atol=1e-5)
    assert torch.isclose(out["loss_bcr"], bcr, atol=1e-5)
    assert torch.isclose(out["loss"], sup + schedule(2) * bcr, atol=1e-5)


def test_unlabeled_loader_cycles_when_shorter_than_epoch():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders(n_l=2, n_u=2)
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                               unlabeled_data_loader=unlabeled, epoch_length=5)
    trainer.run()
    assert trainer.state.iteration == 5
    assert trainer._unlabeled_passes >= 4


def test_single_stream_is_supervised_only():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8), num_streams=1)
    labeled, unlabeled = _loaders()
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                               unlabeled_data_loader=unlabeled)
    assert trainer.unlabeled_data_loader is None  # one stream: nothing to be consistent with
    trainer.run()
    out = trainer.state.output
    assert float(out["loss_bcr"]) == 0.0
    assert torch.isclose(out["loss"], out["loss_sup"])
    assert out["pred"].shape == (2, 4, 32, 32)


def test_nonfinite_loss_stops_with_clear_message():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                               unlabeled_data_loader=unlabeled)
    try:
        trainer.run()
    except FloatingPointError as e:
        assert "non-finite loss" in str(e)
    else:
        raise AssertionError("a NaN loss must stop training")


def test_nonfinite_skip_keeps_weights():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = DiceCELoss(to_onehot_y=True, softmax=True)
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.1),
                               unlabeled_data_loader=unlabeled, supervised_loss=lambda p, y: bad(p, y) * float("nan"),
                               consistency_loss=BidirectionalConsistencyLoss(), nonfinite="skip")
    trainer.run()
    assert trainer.state.skipped_batches == 2
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point() and "running" not in k
               and "num_batches" not in k)
