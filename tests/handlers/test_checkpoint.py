"""TrainingCheckpoint: what a resume restores, and a checkpoint written before an entry existed."""

import logging

import pytest
import torch
from ignite.engine import Engine

from ideal_monai.errors import IdealInputError
from ideal_monai.handlers import TrainingCheckpoint, WeightEMA


def _engine(epochs: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = epochs
    return engine


def test_average_is_restored_with_the_weights(tmp_path):
    net = torch.nn.Linear(2, 2)
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    TrainingCheckpoint(tmp_path / "ck.pt", {"network": net, "ema": ema}).save(_engine(1))

    net2 = torch.nn.Linear(2, 2)
    ema2 = WeightEMA(net2, decay=0.5)
    TrainingCheckpoint(tmp_path / "ck.pt", {"network": net2, "ema": ema2}).load(_engine(1))
    assert all(torch.equal(saved[k], v) for k, v in ema2.state_dict().items())


def test_an_optional_entry_may_be_missing_and_a_required_one_may_not(tmp_path, caplog):
    net = torch.nn.Linear(2, 2)
    TrainingCheckpoint(tmp_path / "old.pt", {"network": net}).save(_engine(1))  # before "ema" existed
    ema = WeightEMA(net, decay=0.5)
    fresh = {k: v.clone() for k, v in ema.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        TrainingCheckpoint(tmp_path / "old.pt", {"network": net, "ema": ema}, optional=["ema"]).load(_engine(1))
    assert "has no 'ema'" in caplog.text
    assert all(torch.equal(fresh[k], v) for k, v in ema.state_dict().items())
    with pytest.raises(IdealInputError, match="lacks entries"):
        TrainingCheckpoint(tmp_path / "old.pt", {"network": net, "ema": ema}).load(_engine(1))
