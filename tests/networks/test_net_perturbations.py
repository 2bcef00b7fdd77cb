"""FeatureNoise / FeatureDropout: range of the noise, which region is dropped, eval identity."""

import pytest
import torch

from ideal_monai.networks import FeatureDropout, FeatureNoise, build_perturbation


def test_feature_noise_range_and_per_sample():
    torch.manual_seed(0)
    x = torch.rand(4, 8, 16, 16) + 0.5
    noise = FeatureNoise(0.3).train()
    ratio = noise(x) / x
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6
    assert ratio.std() > 0.1  # really perturbed, close to U(-.3,.3)'s std 0.173
    assert not torch.allclose(ratio[0], ratio[1])  # per sample by default
    shared = FeatureNoise(0.3, per_sample=False).train()
    r = shared(x) / x
    torch.testing.assert_close(r[0], r[3])


def test_feature_noise_in_bfloat16_is_uniform_on_every_element():
    # bf16 on the CPU takes the cheap path: eight grid values per 64-bit random word. Every one of
    # the eight byte positions must be uniform on [0.7, 1.3] (a plain random_() would leave the top
    # byte of each word in its lower half, i.e. every 8th element damped).
    x = torch.ones(16, 32, 32, 32, dtype=torch.bfloat16)
    torch.manual_seed(0)
    factor = FeatureNoise(0.3).train()(x).float()
    assert factor.dtype == torch.float32 and factor.min() >= 0.7 - 1e-3 and factor.max() <= 1.3 + 1e-3
    by_position = factor.reshape(-1, 8)
    torch.testing.assert_close(by_position.mean(0), torch.ones(8), atol=0.01, rtol=0)
    torch.testing.assert_close(by_position.std(0), torch.full((8,), 0.6 / 12**0.5), atol=0.01, rtol=0)
    assert factor.unique().numel() >= 50  # a fine grid, not a handful of levels
    assert not torch.equal(factor[0], factor[1])
    torch.manual_seed(0)
    assert torch.equal(FeatureNoise(0.3).train()(x).float(), factor)  # torch's generator: repeatable
    shared = FeatureNoise(0.3, per_sample=False).train()(x)
    assert torch.equal(shared[0], shared[15])
    assert FeatureNoise(0.3).train()(x).dtype == torch.bfloat16


def test_feature_dropout_zeros_top_region():
    torch.manual_seed(0)
    x = torch.full((2, 4, 8, 8), 0.1)
    x[0, :, 2:4, 2:4] = 1.0  # hot spot: attention 1.0, the rest 0.1 < 0.7 * 1.0
    x[1, :, 5:7, 0:3] = 2.0
    x[1, :, 0, 0] = 1.0  # attention 1.0 = 0.5 * max: below any threshold in [0.7, 0.9] * 2.0, so kept
    drop = FeatureDropout((0.7, 0.9)).train()
    y = drop(x)
    assert (y[0, :, 2:4, 2:4] == 0).all() and (y[1, :, 5:7, 0:3] == 0).all()
    expected_kept = torch.ones(2, 8, 8, dtype=torch.bool)
    expected_kept[0, 2:4, 2:4] = False
    expected_kept[1, 5:7, 0:3] = False
    assert torch.equal(y[:, 0] != 0, expected_kept)
    both = expected_kept[0] & expected_kept[1]
    torch.testing.assert_close(y[:, :, both], x[:, :, both])


def test_feature_dropout_threshold_is_per_sample():
    """Attention at 0.8 * max is dropped for some samples (u < 0.8) and kept for others (u > 0.8)."""
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 1, 2)
    x[..., 0] = 1.0
    x[..., 1] = 0.8
    dropped = FeatureDropout().train()(x)[:, 0, 0, 1] == 0
    assert 0 < dropped.sum() < 64


@pytest.mark.parametrize("module", [FeatureNoise(), FeatureDropout()])
def test_identity_in_eval_and_gradient(module):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert module.eval()(x) is x
    module.train()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_build_perturbation():
    assert isinstance(build_perturbation("noise"), FeatureNoise)
    assert isinstance(build_perturbation("dropout"), FeatureDropout)
    assert isinstance(build_perturbation("none"), torch.nn.Identity)
    custom = FeatureNoise(0.1)
    assert build_perturbation(custom) is custom
    with pytest.raises(ValueError, match="unknown perturbation"):
        build_perturbation("gaussian")
