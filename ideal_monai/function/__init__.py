"""Cardiac function from segmentations: volumes, ED/ES, SV, EF, myocardial mass, quality flags, agreement."""

from .agreement import agreement, agreement_table
from .indices import (ACDC_CLASSES, INDEX_NAMES, MYOCARDIAL_DENSITY, VolumeUnit, cardiac_indices, class_volumes,
                      find_ed_es, volume_curves, volume_unit)
from .patients import function_patients, read_info_cfg
from .plots import plot_agreement, plot_volume_curves
from .qc import quality_flags
from .workflow import patient_function, run_function

__all__ = ["ACDC_CLASSES", "INDEX_NAMES", "MYOCARDIAL_DENSITY", "VolumeUnit", "agreement", "agreement_table",
           "cardiac_indices", "class_volumes", "find_ed_es", "plot_agreement", "plot_volume_curves", "quality_flags",
           "volume_curves", "volume_unit", "function_patients", "patient_function", "read_info_cfg", "run_function"]
