"""Inference: folder in, NIfTI labels (and optional uncertainty/probabilities) out."""

from .evaluator import (NOT_OUTPUT_SETTINGS, SegmentationEvaluator, StreamDisagreement, case_outputs, collate_cases,
                        inference_cases, inference_cohort, inference_fingerprint, report_failures)
from .flip_ensemble import IN_PLANE_FLIPS, FlipEnsembleInferer

__all__ = ["FlipEnsembleInferer", "IN_PLANE_FLIPS", "NOT_OUTPUT_SETTINGS", "SegmentationEvaluator", "StreamDisagreement",
           "case_outputs", "collate_cases", "inference_cases", "inference_cohort", "inference_fingerprint", "report_failures"]
