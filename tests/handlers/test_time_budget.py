"""TimeBudget: ignite's TimeLimit counted from STARTED, with a JSON log of the run."""

from __future__ import annotations

import json
import time

from ignite.engine import Engine
from ignite.handlers import TimeLimit

from ideal_monai.handlers.time_budget import TimeBudget


def test_budget_counts_from_started_not_from_construction(tmp_path):
    budget = TimeBudget(seconds=0.25, log_path=tmp_path / "log.json")
    assert isinstance(budget, TimeLimit)
    time.sleep(0.3)  # config parsing and dataset caching happen between construction and STARTED
    engine = Engine(lambda e, b: time.sleep(0.02))
    budget.attach(engine)
    engine.run(range(1000), max_epochs=1)
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["stopped_by_budget"] and 3 <= log["iterations"] < 1000
    assert log["budget_s"] == 0.25 and 0.25 <= log["elapsed_s"] < 1.0


def test_a_stop_by_another_handler_is_not_a_budget_stop():
    budget = TimeBudget(seconds=100)
    engine = Engine(lambda e, b: e.terminate() if e.state.iteration == 3 else None)
    budget.attach(engine)
    engine.run(range(10), max_epochs=1)
    assert engine.state.iteration == 3 and not budget.stopped_by_budget
