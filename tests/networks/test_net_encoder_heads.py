"""UNetEncoder and the projection heads: shapes, errors, unit norm, key layout."""

import pytest
import torch

from ideal_monai.networks import DenseProjectionHead, GlobalProjectionHead, UNetEncoder


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_encoder_shapes(size):
    enc = UNetEncoder()
    h, w = size
    feats = enc(torch.randn(2, 1, h, w))
    assert [tuple(f.shape) for f in feats] == [
        (2, 16, h, w), (2, 32, h // 2, w // 2), (2, 64, h // 4, w // 4), (2, 128, h // 8, w // 8),
        (2, 256, h // 16, w // 16),
    ]


def test_encoder_non_multiple_of_16_and_errors():
    enc = UNetEncoder(features=(4, 8, 16))
    # not a multiple of 4 (2**(levels-1)): the pools floor, no error
    assert [tuple(f.shape[2:]) for f in enc(torch.randn(1, 1, 10, 7))] == [(10, 7), (5, 3), (2, 1)]
    with pytest.raises(ValueError, match="smaller than 4"):
        enc(torch.randn(1, 1, 3, 32))
    with pytest.raises(ValueError, match="spatial"):
        enc(torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="two levels"):
        UNetEncoder(features=(8,))


def test_encoder_keys_and_bias():
    enc = UNetEncoder()
    keys = list(enc.state_dict())
    assert keys[0] == "conv_0.conv_0.conv.weight"
    assert any(k.startswith("downs.3.") for k in keys) and not any(k.startswith("downs.4.") for k in keys)
    # conv bias is off by default (BatchNorm follows every conv)
    assert not any(k.endswith("conv.bias") for k in keys)
    assert any(k.endswith("conv.bias") for k in UNetEncoder(bias=True).state_dict())


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_dense_head_unit_norm_and_structure(num_layers):
    head = DenseProjectionHead(in_channels=32, hidden_channels=24, out_channels=16, num_layers=num_layers)
    x = torch.randn(3, 32, 5, 6)
    y = head(x)
    assert y.shape == (3, 16, 5, 6)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3, 5, 6))
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == num_layers
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == num_layers - 1


def test_dense_head_is_per_location():
    """A 1x1 head has no spatial context: each location's output depends only on its own input vector."""
    head = DenseProjectionHead(in_channels=8, out_channels=4).eval()
    x = torch.randn(1, 8, 4, 4)
    y = head(x)
    x2 = x.clone()
    x2[..., 0, 0] += 5.0
    y2 = head(x2)
    assert not torch.allclose(y[..., 0, 0], y2[..., 0, 0])
    torch.testing.assert_close(y[..., 1:, :], y2[..., 1:, :])
    torch.testing.assert_close(y[..., 0, 1:], y2[..., 0, 1:])


def test_global_head():
    head = GlobalProjectionHead(in_channels=32, hidden_channels=16, out_channels=8)
    z = head(torch.randn(4, 32, 3, 5))
    assert z.shape == (4, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    # pooling makes it invariant to a spatial permutation of the features (in eval mode)
    head.eval()
    x = torch.randn(2, 32, 3, 5)
    torch.testing.assert_close(head(x), head(x.flip(-1).flip(-2)))
