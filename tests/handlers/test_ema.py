"""WeightEMA: the warmed-up moving average, and a resumed run continuing its average exactly."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from ideal_monai.errors import IdealInputError
from ideal_monai.handlers import WeightEMA


def _engine(net: torch.nn.Module, steps: list[float]) -> Engine:
    """Iteration ``i`` (1-based) sets every weight of ``net`` to ``steps[i - 1]``, whatever the data order."""
    def step(engine, batch):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(steps[engine.state.iteration - 1])
    return Engine(step)


def test_average_follows_the_warmed_up_decay():
    net = torch.nn.Linear(2, 1)
    values = [1.0, 2.0, 3.0, 4.0]
    ema = WeightEMA(net, decay=0.9)
    engine = _engine(net, values)
    ema.attach(engine)
    engine.run(values, max_epochs=1)
    expected = values[0]  # the first update copies
    for t, v in enumerate(values[1:], start=1):
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * v
    assert torch.allclose(ema.averaged_network.weight, torch.full((1, 2), expected))
    assert net.weight.requires_grad and not ema.averaged_network.weight.requires_grad


def test_resumed_average_equals_the_uninterrupted_one(tmp_path):
    values = [float(v) for v in range(1, 9)]
    full_net = torch.nn.Linear(2, 1)
    full = WeightEMA(full_net, decay=0.99)
    engine = _engine(full_net, values)
    full.attach(engine)
    engine.run(values, max_epochs=2, epoch_length=4)

    state = tmp_path / "ema_checkpoint.pt"
    first_net = torch.nn.Linear(2, 1)
    first = WeightEMA(first_net, decay=0.99, state_path=state)
    engine = _engine(first_net, values)
    first.attach(engine)
    engine.run(values, max_epochs=1, epoch_length=4)  # "killed" after epoch 1 (its state was saved)
    assert torch.load(state, weights_only=True)["iteration"] == 4

    again_net = torch.nn.Linear(2, 1)
    again = WeightEMA(again_net, decay=0.99, state_path=state, export_path=tmp_path / "model_ema.pt")
    engine = _engine(again_net, values)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 4) or setattr(e.state, "epoch", 1))
    again.attach(engine)
    engine.run(values, max_epochs=2, epoch_length=4)
    assert torch.allclose(again.averaged_network.weight, full.averaged_network.weight)
    exported = torch.load(tmp_path / "model_ema.pt", weights_only=True)
    assert torch.allclose(exported["weight"], full.averaged_network.weight)


@pytest.mark.parametrize("decay", [1.0, -0.1, True])
def test_bad_decay_names_the_config_key(decay):
    with pytest.raises(IdealInputError, match="ema_decay"):
        WeightEMA(torch.nn.Linear(2, 1), decay=decay)
