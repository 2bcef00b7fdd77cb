"""What every benchmark shares: where the repository is, and how its worker processes find the code.

The benchmarks live beside the package, not in it (the wheel ships ``ideal_monai`` only): they are
importable as ``benchmarks`` from a checkout, which ``scripts/*.py`` put on ``sys.path``. A worker
process (``python -m benchmarks.<module>``, ``torchrun``, a bundle run whose extra config names
``benchmarks.time_budget.TimeBudget``) needs the same: :func:`subprocess_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "subprocess_env"]

#: The repository checkout that holds ``benchmarks/`` and ``ideal_monai/``.
REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the repository root first on ``PYTHONPATH``, plus ``extra`` variables."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}
