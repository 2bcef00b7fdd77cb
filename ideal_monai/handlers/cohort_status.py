"""Record each finished case of a cohort run in its status log, as it finishes."""

from __future__ import annotations

from ignite.engine import Engine, Events

from ..cohort import Cohort


class CohortStatus:
    """At ``ITERATION_COMPLETED``: append the iteration's cases to the cohort's status log.

    The engine's ``state.output["cases"]`` lists ``{"case_id", "status", "reason", "seconds"}`` per case
    (what :class:`~ideal_monai.inference.SegmentationEvaluator` returns). Recording at once, not at
    the end, lets ``ideal-monai status`` follow a long run and keeps the record of a run that is killed.

    Args:
        cohort: the run's :class:`~ideal_monai.cohort.Cohort` (planned: its ``run_id`` is set).
    """

    def __init__(self, cohort: Cohort) -> None:
        self.cohort = cohort

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, dict) else {}
        for case in output.get("cases", ()):
            self.cohort.record(case["case_id"], case["status"], case.get("reason", ""), case.get("seconds"))
