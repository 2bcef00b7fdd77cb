"""Inference: folder in, NIfTI labels (and optional uncertainty/probabilities) out."""

from .evaluator import SegmentationEvaluator, StreamDisagreement, collate_cases, inference_cases, report_failures

__all__ = ["SegmentationEvaluator", "StreamDisagreement", "collate_cases", "inference_cases", "report_failures"]
