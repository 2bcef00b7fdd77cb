"""DualDecoderUNet: output contract per mode, ensemble maths, perturbations, weights, TorchScript."""

import io

import pytest
import torch

from ideal_monai.networks import (
    DualDecoderUNet,
    FeatureDropout,
    FeatureNoise,
    UNetDecoder,
    UNetEncoder,
    split_streams,
    stream_disagreement,
)

SMALL = (8, 16, 32, 64, 128)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(2, 1, 32, 48)


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_shapes_default_widths(size):
    net = DualDecoderUNet()
    inp = torch.randn(2, 1, *size)
    assert net.train()(inp).shape == (2, 8, *size)
    assert net.eval()(inp).shape == (2, 4, *size)
    assert net.stream_probabilities(inp).shape == (2, 2, 4, *size)


def test_decoders_are_different_architectures():
    net = DualDecoderUNet()
    up1, up2 = net.decoder1.ups[0].upsample, net.decoder2.ups[0].upsample
    assert isinstance(up1.deconv, torch.nn.ConvTranspose2d) and not hasattr(up1, "upsample_non_trainable")
    assert isinstance(up2.upsample_non_trainable, torch.nn.Upsample) and not hasattr(up2, "deconv")
    assert up2.upsample_non_trainable.mode == "bilinear"
    k1 = {k for k in net.decoder1.state_dict()}
    k2 = {k for k in net.decoder2.state_dict()}
    assert k1 != k2
    assert n_params(net.decoder1) != n_params(net.decoder2)
    assert isinstance(net.perturb1, FeatureNoise) and isinstance(net.perturb2, FeatureDropout)


def test_eval_is_log_mean_softmax(x):
    torch.manual_seed(1)
    net = DualDecoderUNet(features=SMALL).eval()
    with torch.no_grad():
        skips = net.encoder(x)
        p1 = torch.softmax(net.decoder1(skips), dim=1)
        p2 = torch.softmax(net.decoder2(skips), dim=1)
        out = net(x)
        torch.testing.assert_close(out, torch.log((p1 + p2) / 2))
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 32, 48))  # valid log-probabilities
        # MONAI's softmax post-processing recovers the ensemble probabilities
        torch.testing.assert_close(torch.softmax(out, dim=1), (p1 + p2) / 2)
        net.set_eval_stream(2)
        torch.testing.assert_close(net(x), torch.log(p2))
        net.set_eval_stream(1)
        torch.testing.assert_close(net(x), torch.log(p1))
        torch.testing.assert_close(net.stream_probabilities(x), torch.stack([p1, p2], dim=1))
        assert torch.equal(net(x), net(x))  # no perturbation in eval: deterministic
    with pytest.raises(ValueError, match="1-based"):
        net.set_eval_stream(0)
    with pytest.raises(ValueError, match="1-based"):
        DualDecoderUNet(features=SMALL, num_streams=1, eval_stream=2)


def test_train_returns_concatenated_perturbed_logits(x):
    torch.manual_seed(2)
    net = DualDecoderUNet(features=SMALL).train()
    clean = DualDecoderUNet(features=SMALL, perturbations=("none", "none")).train()
    clean.load_state_dict(net.state_dict())
    out = net(x)
    assert out.shape == (2, 8, 32, 48)
    z1, z2 = split_streams(out, 2)
    assert z1.shape == z2.shape == (2, 4, 32, 48)
    with torch.no_grad():
        # the same modules without perturbation (BatchNorm uses batch statistics in both)
        skips = net.encoder(x)
        ref1, ref2 = net.decoder1(skips), net.decoder2(skips)
        torch.testing.assert_close(clean(x), torch.cat([ref1, ref2], dim=1))
    assert (z1 - ref1).abs().mean() > 1e-3 * ref1.abs().mean()
    assert (z2 - ref2).abs().mean() > 1e-3 * ref2.abs().mean()
    # two training passes draw different perturbations
    assert not torch.allclose(net(x), out)
    # gradients reach the encoder and both decoders (no in-place autograd errors with the perturbations)
    out.square().mean().backward()
    for part in (net.encoder, net.decoder1, net.decoder2):
        assert all(p.grad is not None for p in part.parameters())


def test_single_stream_baseline(x):
    torch.manual_seed(3)
    net = DualDecoderUNet(features=SMALL, num_streams=1)
    assert net.decoder2 is None and net.perturb2 is None
    assert isinstance(net.perturb1, torch.nn.Identity)  # plain, unperturbed U-Net
    assert not any(k.startswith("decoder2.") for k in net.state_dict())
    train_out = net.train()(x)
    assert train_out.shape == (2, 4, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(train_out, net.decoder1(net.encoder(x)))
        net.eval()
        torch.testing.assert_close(net(x), torch.log_softmax(net.decoder1(net.encoder(x)), dim=1))
        assert net.stream_probabilities(x).shape == (2, 1, 4, 32, 48)
        assert split_streams(train_out, 1)[0].shape == (2, 4, 32, 48)


def test_state_dict_cross_loading(x):
    torch.manual_seed(4)
    two = DualDecoderUNet(features=SMALL).eval()
    one = DualDecoderUNet(features=SMALL, num_streams=1).eval()
    res = one.load_state_dict(two.state_dict(), strict=False)
    assert res.missing_keys == []
    assert res.unexpected_keys and all(k.startswith("decoder2.") for k in res.unexpected_keys)
    two.set_eval_stream(1)
    with torch.no_grad():
        torch.testing.assert_close(one(x), two(x))
    fresh = DualDecoderUNet(features=SMALL)
    res = fresh.load_state_dict(one.state_dict(), strict=False)
    assert res.unexpected_keys == [] and all(k.startswith("decoder2.") for k in res.missing_keys)
    for k, v in one.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_encoder_state_dict_loads_unchanged():
    torch.manual_seed(5)
    enc = UNetEncoder(features=SMALL)
    for p in enc.parameters():
        torch.nn.init.normal_(p)
    net = DualDecoderUNet(features=SMALL)
    assert set(enc.state_dict()) == set(net.encoder.state_dict())
    net.encoder.load_state_dict(enc.state_dict())  # strict
    for k, v in enc.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v)
    # and under the "encoder." prefix of the full model's flat state_dict
    full = net.state_dict()
    assert all(torch.equal(full["encoder." + k], v) for k, v in enc.state_dict().items())


def test_torchscript_parity_and_roundtrip(x):
    torch.manual_seed(6)
    net = DualDecoderUNet(features=SMALL).eval()
    scripted = torch.jit.script(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(scripted(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
        loaded.eval_stream = 2
        net.set_eval_stream(2)
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.stream_probabilities(x), net.stream_probabilities(x))
    scripted.train()
    assert scripted(x).shape == (2, 8, 32, 48)
    one = torch.jit.script(DualDecoderUNet(features=SMALL, num_streams=1).eval())
    assert one(x).shape == (2, 4, 32, 48)


def test_stream_disagreement():
    p = torch.softmax(torch.randn(2, 1, 4, 5, 6), dim=2)
    assert torch.equal(stream_disagreement(torch.cat([p, p], dim=1)), torch.zeros(2, 1, 5, 6))
    assert torch.equal(stream_disagreement(p), torch.zeros(2, 1, 5, 6))
    a = torch.zeros(1, 2, 4, 1, 2)
    a[0, 0, 1] = 1.0  # stream 1: class 1 everywhere
    a[0, 1, 2, :, 0] = 1.0  # stream 2: class 2 at x=0, class 1 at x=1
    a[0, 1, 1, :, 1] = 1.0
    torch.testing.assert_close(stream_disagreement(a), torch.tensor([[[[1.0, 0.0]]]]))
    q = torch.softmax(torch.randn(2, 2, 4, 5, 6), dim=2)
    d = stream_disagreement(q)
    assert d.shape == (2, 1, 5, 6) and d.min() >= 0 and d.max() <= 1


def test_parameter_counts(capsys):
    net = DualDecoderUNet()
    counts = {
        "encoder": n_params(net.encoder),
        "decoder1 (deconv)": n_params(net.decoder1),
        "decoder2 (bilinear)": n_params(net.decoder2),
        "two streams": n_params(net),
        "one stream": n_params(DualDecoderUNet(num_streams=1)),
    }
    with capsys.disabled():
        print("\nparameter counts:", counts)
    # a 16..256 U-Net is ~2M parameters; D2's 1x1 pre-conv is ~4x lighter than D1's 2x2 deconv
    assert 1.0e6 < counts["encoder"] < 1.6e6
    assert counts["decoder2 (bilinear)"] < counts["decoder1 (deconv)"] < 1.0e6
    assert counts["two streams"] == counts["encoder"] + counts["decoder1 (deconv)"] + counts["decoder2 (bilinear)"]
    assert counts["one stream"] == counts["encoder"] + counts["decoder1 (deconv)"]


def test_decoder_width_option(x):
    """``decoder_width`` scales a decoder's own widths (the skips it concatenates keep theirs); the
    output contract does not change. Default: both full width."""
    assert DualDecoderUNet(features=SMALL).decoder2.widths == SMALL
    net = DualDecoderUNet(features=SMALL, decoder_width=(1.0, 0.5))
    assert net.decoder1.widths == SMALL and net.decoder2.widths == (4, 8, 16, 32, 64)
    assert net.decoder2.final_conv.in_channels == 4
    # the full-resolution level concatenates the 8-channel skip with 4 upsampled channels
    assert net.decoder2.ups[-1].convs.conv_0.conv.in_channels == 8 + 4
    assert net.train()(x).shape == (2, 8, *x.shape[2:]) and net.eval()(x).shape == (2, 4, *x.shape[2:])
    assert n_params(DualDecoderUNet(features=SMALL).decoder2) > 2 * n_params(net.decoder2)
    with pytest.raises(ValueError, match="decoder_width"):
        DualDecoderUNet(decoder_width=(1.0,))
    with pytest.raises(ValueError, match="width_factor"):
        UNetDecoder(width_factor=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_streams"):
        DualDecoderUNet(num_streams=3)
    with pytest.raises(ValueError, match="one entry per stream"):
        DualDecoderUNet(perturbations=("noise",))
    with pytest.raises(ValueError, match="upsample"):
        UNetDecoder(upsample="transpose")
    with pytest.raises(ValueError, match="skip features"):
        UNetDecoder(features=SMALL)([torch.zeros(1, 8, 4, 4)])
