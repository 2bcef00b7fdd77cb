"""The one exception type for bad user input.

Every entry point catches :class:`IdealInputError` and prints its message as a single line
(``ideal-monai: error: <path>: <problem>``) with a non-zero exit; the full traceback only appears
with ``--debug`` / ``IDEAL_MONAI_DEBUG=1``.
"""

from __future__ import annotations

import os


class IdealInputError(ValueError):
    """A user-facing problem with an input file, folder, config key or checkpoint.

    Args:
        where: the file path or config key the problem is about.
        problem: what is wrong, phrased for a person ("label values outside {0,1,2,3}: [4, 255]").
    """

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)
