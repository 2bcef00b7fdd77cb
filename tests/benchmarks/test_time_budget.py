"""TimeBudget: ignite's TimeLimit counted from STARTED, with a JSON log of the run."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import TimeLimit
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR, StepLR

from benchmarks.time_budget import TimeBudget


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


class _Ramp:
    def __init__(self, rampup_iterations: int) -> None:
        self.rampup_iterations = rampup_iterations


def _sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _engine_with_schedule(step_s: float, scheduler, lrs: list) -> Engine:
    def step(engine, batch):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])  # the rate this iteration trains with
        scheduler.optimizer.step()
        time.sleep(step_s)

    engine = Engine(step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())  # as LrScheduleHandler does
    return engine


def test_replan_lengthens_a_run_planned_too_short_and_moves_its_schedules_with_it(tmp_path):
    """Planned 10 iterations for a 1 s budget at 10 ms per step: after the first epoch the run is re-planned
    to fill half the budget, the learning rate follows a poly schedule of the new length from the start,
    and the ramp-up scales with the total."""
    optimizer = _sgd()
    scheduler = PolynomialLR(optimizer, total_iters=10, power=0.9)
    ramp, lrs = _Ramp(4), []
    engine = _engine_with_schedule(0.01, scheduler, lrs)
    budget = TimeBudget(seconds=1.0, log_path=tmp_path / "log.json", replan_after_epochs=1, fill=0.5,
                        lr_scheduler=scheduler, ramps=[ramp])
    budget.attach(engine)
    engine.run(range(5), max_epochs=2)
    log = json.loads((tmp_path / "log.json").read_text())
    replanned = log["replanned"]
    assert replanned["after_iterations"] == 5 and replanned["from_iterations"] == 10
    total = replanned["to_iterations"]
    assert total % 5 == 0 and 10 < total <= 50  # 0.5 s of 10 ms steps at most
    assert log["planned_iterations"] == total and engine.state.iteration == total and not log["stopped_by_budget"]
    assert log["elapsed_s"] < 1.0
    assert ramp.rampup_iterations == round(4 * total / 10)
    # every iteration after the re-plan trains at the closed form of a poly schedule planned for `total`
    expected = [0.1 * (1 - i / total) ** 0.9 for i in range(5, total)]
    assert lrs[5:] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule ends with the run


def test_replan_shortens_a_run_planned_too_long():
    optimizer, lrs = _sgd(), []
    scheduler = CosineAnnealingLR(optimizer, T_max=1000)
    engine = _engine_with_schedule(0.01, scheduler, lrs)
    budget = TimeBudget(seconds=0.4, replan_after_epochs=2, fill=0.5, lr_scheduler=scheduler)
    budget.attach(engine)
    engine.run(range(4), max_epochs=250)
    summary = budget.summary(engine)
    total = summary["replanned"]["to_iterations"]
    assert summary["replanned"]["after_iterations"] == 8 and 8 <= total <= 20 and total % 4 == 0
    assert scheduler.T_max == total and engine.state.iteration == total  # ended by the plan, not the hard stop
    assert not summary["stopped_by_budget"]
    # the rest of the run anneals as a cosine of the new length would (to 0 at its end)
    expected = [0.05 * (1 + math.cos(math.pi * i / total)) for i in range(8, total)]
    assert lrs[8:] == pytest.approx(expected, rel=1e-6, abs=1e-12)


def _slowing_engine(scheduler, lrs: list) -> Engine:
    """Steps of 5 ms in the first epoch (5 iterations), 20 ms after: a first epoch that misleads."""
    def step(engine, batch):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        time.sleep(0.005 if engine.state.iteration <= 5 else 0.02)

    engine = Engine(step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
    return engine


@pytest.mark.parametrize("replan_until", [0.0, 0.5])
def test_replanning_until_half_way_follows_a_step_that_changes_after_the_first_epoch(replan_until):
    """Planned from a first epoch 4x faster than the rest, a run re-planned once overruns and is cut by the
    hard stop with its learning rate still high; re-planned until half-way it ends by its own plan, inside
    the budget, with the schedule run to its end."""
    optimizer, lrs = _sgd(), []
    scheduler = PolynomialLR(optimizer, total_iters=10, power=0.9)
    engine = _slowing_engine(scheduler, lrs)
    budget = TimeBudget(seconds=1.0, replan_after_epochs=1, replan_until=replan_until, fill=0.8,
                        lr_scheduler=scheduler)
    budget.attach(engine)
    engine.run(range(5), max_epochs=2)
    summary = budget.summary(engine)
    assert summary["replanned"]["after_iterations"] == 5 and summary["replanned"]["to_iterations"] > 100
    if replan_until == 0.0:
        assert summary["stopped_by_budget"] and summary["replanned_again"] == []
        assert optimizer.param_groups[0]["lr"] > 0.01  # cut off early in its decay
        return
    again = summary["replanned_again"]
    assert again and all(r["step_s"] > 0.015 for r in again)
    last = again[-1]
    # no re-plan once half of the plan had run
    assert last["after_iterations"] < 0.5 * last["from_iterations"] and engine.state.iteration == last["to_iterations"]
    assert not summary["stopped_by_budget"] and 0.5 < summary["elapsed_s"] < 1.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_replan_needs_a_budget_and_a_schedule_it_can_move():
    with pytest.raises(ValueError, match="replan_after_epochs"):
        TimeBudget(replan_after_epochs=1)
    with pytest.raises(TypeError, match="StepLR"):
        TimeBudget(seconds=10, replan_after_epochs=1, lr_scheduler=StepLR(_sgd(), step_size=5))
    with pytest.raises(TypeError, match="rampup_iterations"):
        TimeBudget(seconds=10, replan_after_epochs=1, ramps=[object()])
    with pytest.raises(ValueError, match="replan_until"):
        TimeBudget(seconds=10, replan_after_epochs=1, replan_until=1.0)


def test_without_replan_the_plan_is_kept():
    engine = Engine(lambda e, b: None)
    budget = TimeBudget(seconds=100)
    budget.attach(engine)
    engine.run(range(3), max_epochs=2)
    assert engine.state.iteration == 6 and budget.summary(engine)["replanned"] is None
