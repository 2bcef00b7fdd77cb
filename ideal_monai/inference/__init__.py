"""Inference: folder in, NIfTI labels (and optional uncertainty/probabilities) out."""

from .evaluator import SegmentationEvaluator, StreamDisagreement, collate_cases, inference_cases, report_failures
from .flip_ensemble import IN_PLANE_FLIPS, FlipEnsembleInferer

__all__ = ["FlipEnsembleInferer", "IN_PLANE_FLIPS", "SegmentationEvaluator", "StreamDisagreement", "collate_cases", "inference_cases", "report_failures"]
