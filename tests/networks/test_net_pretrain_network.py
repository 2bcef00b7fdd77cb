"""PretrainNetwork: outputs per level, global head, and the encoder weights it hands on."""

import pytest
import torch

from ideal_monai.networks import DualDecoderUNet, PretrainNetwork, UNetEncoder

SMALL = (8, 16, 32, 64, 128)


def test_dense_levels_and_global_head():
    torch.manual_seed(0)
    net = PretrainNetwork(encoder={"features": SMALL}, dense_levels=(-1, -2),
                          dense_head_kwargs={"out_channels": 32}, global_head=True)
    assert net.dense_strides() == (16, 8)
    out = net(torch.randn(3, 1, 64, 48))
    dense = out["dense"]
    assert [tuple(d.shape) for d in dense] == [(3, 32, 4, 3), (3, 32, 8, 6)]
    for d in dense:
        torch.testing.assert_close(d.norm(dim=1), torch.ones(d.shape[0], *d.shape[2:]))
    assert out["global"].shape == (3, 128)
    torch.testing.assert_close(out["global"].norm(dim=1), torch.ones(3))
    assert [f.shape[1] for f in out["features"]] == list(SMALL)
    # each level has its own head, sized to its level's channels
    assert net.dense_heads[0].proj[0].conv.in_channels == 128 and net.dense_heads[1].proj[0].conv.in_channels == 64
    # the dense loss trains the encoder
    sum(d.sum() for d in dense).backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


def test_default_is_deepest_level_only():
    net = PretrainNetwork()
    out = net(torch.randn(2, 1, 32, 32))
    assert set(out) == {"dense", "features"}
    assert len(out["dense"]) == 1 and out["dense"][0].shape == (2, 128, 2, 2)


def test_encoder_state_dict_loads_into_dual_decoder_unet():
    torch.manual_seed(1)
    enc = UNetEncoder(features=SMALL)
    net = PretrainNetwork(encoder=enc)
    assert net.encoder is enc
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    sd = net.encoder_state_dict()
    seg = DualDecoderUNet(features=SMALL)
    seg.encoder.load_state_dict(sd)  # strict: identical key names
    assert all(torch.equal(seg.encoder.state_dict()[k], v) for k, v in sd.items())
    assert all(v.device.type == "cpu" and not v.requires_grad for v in sd.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        PretrainNetwork(dense_levels=(5,))
    with pytest.raises(ValueError, match="repeated"):
        PretrainNetwork(dense_levels=(-1, 4))
    with pytest.raises(ValueError, match="at least one"):
        PretrainNetwork(dense_levels=())
    with pytest.raises(TypeError):
        PretrainNetwork(encoder=torch.nn.Conv2d(1, 1, 1))
