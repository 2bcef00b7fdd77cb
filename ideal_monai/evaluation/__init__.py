"""Evaluation: per-volume DSC / HD95 / ASD in mm, summaries, reports and overlay figures.

Layers inside: ``metrics`` (scores) <- ``pairing`` (finding and reading cases), ``report``,
``overlays`` <- ``curves``, ``evaluate`` (the folder evaluation that ties them together).

See :mod:`ideal_monai.evaluation.metrics` for the empty-mask convention (``CONVENTION``).
"""

from .metrics import (
    CONVENTION,
    DEFAULT_CLASS_NAMES,
    FAILURE_STATUSES,
    STATUSES,
    compute_case_metrics,
    summarize,
)
from .evaluate import evaluate_folders
from .curves import read_scalars, read_stages, save_curves_from_tensorboard, save_training_curves_png
from .overlays import save_overlay_png, select_slices
from .report import CSV_COLUMNS, write_report

__all__ = [
    "read_scalars",
    "read_stages",
    "save_curves_from_tensorboard",
    "CONVENTION",
    "CSV_COLUMNS",
    "DEFAULT_CLASS_NAMES",
    "FAILURE_STATUSES",
    "STATUSES",
    "compute_case_metrics",
    "evaluate_folders",
    "save_overlay_png",
    "save_training_curves_png",
    "select_slices",
    "summarize",
    "write_report",
]
