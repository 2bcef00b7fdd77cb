"""The ``precision`` key: what ``auto`` resolves to, bad values, and a bfloat16 training step."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.inferers import SliceInferer

from ideal_monai.engines import TwoStreamTrainer
from ideal_monai.errors import IdealInputError
from ideal_monai.networks import DualDecoderUNet, PretrainNetwork
from ideal_monai.utils.precision import AutocastInferer, cpu_has_native_bf16, resolve_precision


def test_explicit_precisions_resolve_to_themselves_and_auto_follows_the_hardware():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"  # no GPU needed to decide
    assert resolve_precision("fp16", "cuda:0") == "fp16"


def test_native_bf16_detection_agrees_with_the_kernel_flags():
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("value, fragment", [("bf17", "must be one of"), ("fp16", "needs a CUDA device"),
                                             (True, "must be one of")])
def test_bad_precision_is_a_one_line_error_naming_the_key(value, fragment):
    with pytest.raises(IdealInputError) as err:
        resolve_precision(value, "cpu")
    message = str(err.value)
    assert "precision" in message and fragment in message and "\n" not in message


def _batch(n_l=4, n_u=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ({"image": torch.rand(n_l, 1, size, size, generator=g),
             "label": torch.randint(0, 4, (n_l, 1, size, size), generator=g)},
            [{"image": torch.rand(n_u, 1, size, size, generator=g)}])


def test_bf16_training_keeps_weights_bn_statistics_and_losses_in_float32():
    torch.manual_seed(0)
    net = DualDecoderUNet(features=(4, 8, 8, 16, 16))
    labeled, unlabeled = _batch()
    trainer = TwoStreamTrainer(device="cpu", max_epochs=1, epoch_length=3, train_data_loader=[labeled] * 3,
                               unlabeled_data_loader=unlabeled, network=net,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.01), precision="bf16")
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run()
    assert trainer.precision == "bf16" and trainer.scaler is None  # bfloat16 needs no loss scaling
    assert len(losses) == 3 and all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses)
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.running_mean.dtype == torch.float32 and m.running_var.dtype == torch.float32 for m in bn)
    assert any(m.num_batches_tracked.item() == 3 for m in bn)  # statistics were updated under autocast


def test_bf16_step_follows_the_fp32_step_closely():
    """One SGD step from the same weights and batch: the losses and the updated weights differ only by
    bfloat16 rounding of the convolutions."""
    labeled, unlabeled = _batch(seed=1)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = DualDecoderUNet(features=(4, 8, 8, 16, 16), perturbations=("none", "none"))
        trainer = TwoStreamTrainer(device="cpu", max_epochs=1, epoch_length=1, train_data_loader=[labeled],
                                   unlabeled_data_loader=unlabeled, network=net,
                                   optimizer=torch.optim.SGD(net.parameters(), lr=0.1), precision=precision)
        trainer.run()
        results[precision] = (float(trainer.state.output["loss"]), torch.nn.utils.parameters_to_vector(net.parameters()))
    (l32, w32), (l16, w16) = results["fp32"], results["bf16"]
    assert l16 == pytest.approx(l32, rel=0.02)
    assert not torch.equal(w32, w16)  # bf16 really ran
    assert (w32 - w16).norm() / w32.norm() < 0.01


def test_pretrain_heads_return_float32_unit_vectors_under_autocast():
    net = PretrainNetwork(encoder={"spatial_dims": 2, "in_channels": 1, "features": (4, 8, 8, 16, 16)})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = net(torch.rand(2, 1, 32, 32))["dense"][-1]
    assert dense.dtype == torch.float32
    assert torch.allclose(dense.norm(dim=1), torch.ones(()), atol=1e-5)


def test_autocast_inferer_returns_float32_log_probabilities_close_to_fp32():
    torch.manual_seed(0)
    net = DualDecoderUNet(features=(4, 8, 8, 16, 16)).eval()
    volume = torch.rand(1, 1, 32, 32, 5)
    base = SliceInferer(roi_size=(32, 32), sw_batch_size=8, spatial_dim=2)
    with torch.no_grad():
        ref = base(volume, net)
        out = AutocastInferer(base, "bf16", "cpu")(volume, net)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.exp() - ref.exp()).abs().max() < 0.05
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.95
