"""Sigmoid-shaped ramp-up of the consistency weight (docs/METHOD.md §4; sources in bundle/docs/README.md).

Early in fine-tuning both streams' pseudo-labels are mostly wrong, so the consistency term is
faded in: ``lambda(t) = lambda_max * exp(-5 (1 - min(t / T, 1))^2)`` (Laine & Aila, 2017).
"""

from __future__ import annotations

import math

__all__ = ["sigmoid_rampup", "ConsistencyWeightSchedule"]


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - clip(current / rampup_length, 0, 1))^2)``: ~0.0067 at 0, 1.0 from ``rampup_length`` on.

    ``rampup_length == 0`` means no ramp-up (always 1.0).
    """
    if rampup_length < 0:
        raise ValueError(f"rampup_length must be >= 0, got {rampup_length}")
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(float(current) / rampup_length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


class ConsistencyWeightSchedule:
    """``lambda(t) = lambda_max * sigmoid_rampup(t, rampup_iterations)``, callable on an iteration number.

    Args:
        lambda_max: final weight of the consistency loss (>= 0).
        rampup_iterations: iterations T over which the weight ramps up; 0 disables the ramp-up.
    """

    def __init__(self, lambda_max: float, rampup_iterations: int) -> None:
        if lambda_max < 0:
            raise ValueError(f"lambda_max must be >= 0, got {lambda_max}")
        if rampup_iterations < 0:
            raise ValueError(f"rampup_iterations must be >= 0, got {rampup_iterations}")
        self.lambda_max = float(lambda_max)
        self.rampup_iterations = rampup_iterations

    def __call__(self, iteration: int) -> float:
        return self.lambda_max * sigmoid_rampup(iteration, self.rampup_iterations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lambda_max={self.lambda_max}, rampup_iterations={self.rampup_iterations})"
