"""The console during training: one progress bar over the run and one log line per epoch."""

from __future__ import annotations

import logging

import pytest
from ignite.engine import Engine, Events

from ideal_monai.engines import loss_terms
from ideal_monai.handlers import EpochLogger, ProgressBar


def _trainer(losses):
    """An engine whose output at iteration i is ``losses[i - 1]`` (the trainers' dict output)."""
    return Engine(lambda engine, batch: dict(losses[engine.state.iteration - 1]))


def test_epoch_logger_logs_epoch_means_and_validation(caplog):
    losses = [{"loss": 1.0, "loss_sup": 0.6, "loss_bcr": 0.4, "loss_global": 0.0, "lambda": 0.1},
              {"loss": 3.0, "loss_sup": 1.4, "loss_bcr": 1.6, "loss_global": 0.0, "lambda": 0.2}] * 2
    trainer = _trainer(losses)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.COMPLETED)
    def _metrics(engine):
        engine.state.metrics["val_mean_dice"] = 0.25 * trainer.state.epoch
        engine.state.key_metric_name, engine.state.best_metric = "val_mean_dice", 0.25 * trainer.state.epoch
        engine.state.best_metric_epoch = trainer.state.epoch

    @trainer.on(Events.EPOCH_COMPLETED(every=2))
    def _validate(engine):  # a ValidationHandler with interval 2
        evaluator.run([0])

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.state.metrics.__setitem__("lr", 0.05))
    EpochLogger(loss_terms, evaluator=evaluator, name="finetune").attach(trainer)
    with caplog.at_level(logging.INFO, logger="ideal_monai"):
        trainer.run(range(2), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "ideal_monai"]
    assert len(lines) == 2
    assert lines[0].startswith("finetune epoch 1/2: loss 2.000 (loss_sup 1.000, loss_bcr 1.000), lr 0.05,")
    assert "val_mean_dice" not in lines[0]  # no validation in epoch 1
    assert "loss_global" not in lines[0] and "lambda" not in lines[0]  # switched-off term, not a loss
    assert "val_mean_dice 0.500 (best 0.500, epoch 2)" in lines[1]


def test_progress_bar_spans_the_run_and_starts_at_a_resumed_iteration():
    trainer = _trainer([{"loss": 1.0}] * 12)
    bar = ProgressBar(output_transform=lambda o: {"loss": o["loss"]}, desc="finetune")
    bar.attach(trainer)
    totals = []
    trainer.add_event_handler(Events.STARTED, lambda e: totals.append((bar.bar.total, bar.bar.n)))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: totals.append((bar.bar.total, bar.bar.n)))
    trainer.run(range(4), max_epochs=3)
    assert totals == [(12, 0), (12, 5)] and bar.bar is None  # one bar of 12 iterations, closed at the end

    resumed = _trainer([{"loss": 1.0}] * 12)
    resumed.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 8) or setattr(e.state, "epoch", 2))
    bar = ProgressBar(desc="finetune")
    bar.attach(resumed)
    seen = []
    resumed.add_event_handler(Events.STARTED, lambda e: seen.append((bar.bar.total, bar.bar.n)))
    resumed.run(range(4), max_epochs=3)
    assert seen == [(12, 8)] and resumed.state.iteration == 12


@pytest.mark.parametrize("run_config", ["train.json", "pretrain.json"])
def test_training_configs_log_per_epoch_not_per_iteration(run_config):
    """The bundle's trainers have no per-iteration console logger, an EpochLogger after validation
    and one progress bar; ignite's own per-epoch INFO lines are silenced by logging.conf."""
    import configparser
    import json
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"
    config = json.loads((configs / run_config).read_text())
    section = config["train" if run_config == "train.json" else "pretraining"]
    targets = [h["_target_"] if isinstance(h, dict) else h for h in section["handlers"]]
    assert "StatsHandler" not in targets and targets.count("ideal_monai.handlers.ProgressBar") == 1
    assert targets.count("ideal_monai.handlers.EpochLogger") == 1
    if run_config == "train.json":
        assert targets.index("ideal_monai.handlers.EpochLogger") > targets.index("ValidationHandler")
        assert "StatsHandler" not in [h.get("_target_") for h in config["validate"]["handlers"]]
    conf = configparser.RawConfigParser()
    conf.read(configs / "logging.conf")
    ignite = [s for s in conf.sections() if conf.has_option(s, "qualname") and conf.get(s, "qualname") == "ignite.engine"]
    assert ignite and conf.get(ignite[0], "level") == "WARNING"
