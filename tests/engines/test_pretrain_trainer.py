"""PretrainTrainer with one of its two terms off: only the heads of the terms that are on exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from ideal_monai.engines import PretrainTrainer
from ideal_monai.losses import GlobalContrastiveLoss
from ideal_monai.networks import PretrainNetwork

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
FEATURES = [4, 8, 8, 8, 8]


def _network_def(**values) -> PretrainNetwork:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "pretrain.json"))
    parser.update({"features": FEATURES, "projection_channels": 8, **values})
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("dense_weight, global_weight", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_pretrain_config_builds_the_heads_of_the_nonzero_terms(dense_weight, global_weight):
    net = _network_def(dense_weight=dense_weight, global_weight=global_weight)
    assert bool(net.dense_heads) == (dense_weight > 0)
    assert (net.global_head is not None) == (global_weight > 0)


def test_global_cl_step_gives_every_parameter_a_gradient():
    """Under DDP every parameter must get a gradient in every step, or the all-reduce fails."""
    torch.manual_seed(0)
    net = _network_def(dense_weight=0.0, global_weight=1.0)
    batch = {"view_q": torch.rand(2, 1, 32, 32), "view_k": torch.rand(2, 1, 32, 32)}
    trainer = PretrainTrainer("cpu", 1, [batch], net, torch.optim.SGD(net.parameters(), lr=0.01),
                              global_loss=GlobalContrastiveLoss(temperature=0.1), dense_weight=0.0, global_weight=1.0)
    trainer.run()
    assert trainer.state.iteration == 1 and float(trainer.state.output["loss_global"]) > 0
    assert all(p.grad is not None for p in net.parameters())


def test_a_head_whose_weight_is_zero_is_refused():
    net = PretrainNetwork(encoder={"features": FEATURES}, global_head=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="dense_weight is 0"):
        PretrainTrainer("cpu", 1, [], net, opt, global_loss=GlobalContrastiveLoss(), dense_weight=0.0, global_weight=1.0)
    with pytest.raises(ValueError, match="global_weight is 0"):
        PretrainTrainer("cpu", 1, [], net, opt, dense_weight=1.0, global_weight=0.0)
