"""TwoStreamTrainer: one iteration's loss equals L_sup + lambda(t) * L_bcr (+ w_u(t) * L_pseudo), unlabeled data
cycles, the teacher sees the weak view and the student the strong (copy-paste mixed) one."""

import pytest
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from ideal_monai.engines import TwoStreamTrainer
from ideal_monai.losses import BidirectionalConsistencyLoss, ConsistencyWeightSchedule, MixedSupervisionLoss
from ideal_monai.networks import DualDecoderUNet, split_streams
from ideal_monai.transforms import BidirectionalCopyPaste


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


class _CountingLoader:
    """An iterable over a loader that counts the passes started over it."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def test_unlabeled_loader_cycles_when_shorter_than_epoch():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders(n_l=2, n_u=2)  # one unlabeled batch per pass
    counting = _CountingLoader(unlabeled)
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                               unlabeled_data_loader=counting, epoch_length=5)
    trainer.run()
    assert trainer.state.iteration == 5
    assert counting.passes == 5  # every step got an unlabeled batch: the pool was cycled


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


class _Recorder(torch.nn.Module):
    """Wraps a network and keeps the inputs of its training-mode and eval-mode forwards."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.num_streams = net.num_streams
        self.train_inputs, self.eval_inputs = [], []

    def forward(self, x):
        (self.train_inputs if self.training else self.eval_inputs).append(x.detach().clone())
        return self.net(x)


class _ConstantTeacher(torch.nn.Module):
    """Eval-mode log-probabilities that put ``p`` on ``cls`` everywhere."""

    def __init__(self, cls=2, p=0.9, num_classes=4):
        super().__init__()
        self.cls, self.p, self.num_classes = cls, p, num_classes

    def forward(self, x):
        probs = torch.full((x.shape[0], self.num_classes, *x.shape[2:]), (1 - self.p) / (self.num_classes - 1))
        probs[:, self.cls] = self.p
        return probs.log()


def _strong_loaders(n_l=2, n_u=2, size=32):
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.rand(1, size, size, generator=g), "image_strong": -torch.rand(1, size, size, generator=g),
                "label": torch.randint(0, 4, (1, size, size), generator=g)} for _ in range(n_l)]
    unlabeled = [{"image": torch.rand(1, size, size, generator=g), "image_strong": -torch.rand(1, size, size, generator=g)}
                 for _ in range(n_u)]
    return DataLoader(labeled, batch_size=n_l), DataLoader(unlabeled, batch_size=n_u)


def test_weak_to_strong_teacher_sees_weak_student_sees_strong():
    torch.manual_seed(0)
    net = _Recorder(DualDecoderUNet(features=(4, 8, 8, 8, 8), perturbations=("none", "none")))
    labeled, unlabeled = _strong_loaders()
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.0),
                               unlabeled_data_loader=unlabeled, consistency_weight=0.3,
                               pseudo_supervision=MixedSupervisionLoss(), pseudo_label_weight=0.7)
    trainer.run()
    batch_l, batch_u = next(iter(labeled)), next(iter(unlabeled))
    assert len(net.eval_inputs) == 1 and torch.equal(net.eval_inputs[0], batch_u["image"])  # no teacher: itself
    assert torch.equal(net.train_inputs[0], torch.cat([batch_l["image_strong"], batch_u["image_strong"]]))
    out = trainer.state.output
    assert float(out["pseudo_weight"]) == pytest.approx(0.7)
    assert torch.isclose(out["loss"], out["loss_sup"] + 0.3 * out["loss_bcr"] + 0.7 * out["loss_pseudo"], atol=1e-6)


def test_pseudo_labels_follow_the_teacher_and_its_confidence():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders()
    x = torch.rand(3, 1, 16, 16)
    for p, threshold, expect_valid in ((0.9, 0.95, False), (0.97, 0.95, True), (0.5, None, True)):
        trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.0),
                                   unlabeled_data_loader=unlabeled, pseudo_supervision=MixedSupervisionLoss(),
                                   teacher=_ConstantTeacher(cls=2, p=p), pseudo_label_threshold=threshold)
        labels, valid = trainer.pseudo_labels(x)
        assert labels.shape == (3, 1, 16, 16) and (labels == 2).all()
        assert bool(valid.all()) is expect_valid and bool(valid.any()) is expect_valid


def test_copy_paste_trains_on_mixed_slices_only():
    torch.manual_seed(0)
    net = _Recorder(DualDecoderUNet(features=(4, 8, 8, 8, 8)))
    labeled, unlabeled = _strong_loaders(n_l=3, n_u=2)
    trainer = TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                               unlabeled_data_loader=unlabeled, pseudo_supervision=MixedSupervisionLoss(),
                               teacher=_ConstantTeacher(), copy_paste=BidirectionalCopyPaste())
    trainer.run()
    seen = net.train_inputs[0]
    batch_l, batch_u = next(iter(labeled)), next(iter(unlabeled))
    assert seen.shape == (5, 1, 32, 32)
    strong = torch.cat([batch_l["image_strong"], batch_u["image_strong"]])
    assert not torch.equal(seen, strong)  # boxes were pasted ...
    values = set(seen.flatten().tolist())
    assert values <= set(strong.flatten().tolist())  # ... from the strong views alone
    assert torch.isfinite(trainer.state.output["loss_pseudo"])


def test_copy_paste_without_its_loss_is_refused():
    net = DualDecoderUNet(features=(4, 8, 8, 8, 8))
    labeled, unlabeled = _loaders()
    with pytest.raises(ValueError, match="copy_paste needs pseudo_supervision"):
        TwoStreamTrainer("cpu", 1, labeled, net, torch.optim.SGD(net.parameters(), lr=0.0),
                         unlabeled_data_loader=unlabeled, copy_paste=BidirectionalCopyPaste())
