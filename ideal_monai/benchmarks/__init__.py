"""Benchmarks of the IDEAL implementation (results go to ``docs/BENCHMARKS.md``).

- :mod:`ideal_monai.benchmarks.speed`: training-step and inference speed of IDEAL against the
  plain supervised U-Net of the same encoder (``scripts/benchmark_speed.py``).
- :mod:`ideal_monai.benchmarks.acdc`, :mod:`~ideal_monai.benchmarks.memory`,
  :mod:`~ideal_monai.benchmarks.scaling`: segmentation quality on ACDC, inference memory and
  data-parallel scaling (imported on their own; see their scripts).
"""

from .speed import SpeedConfig, format_table, run_speed_benchmarks

__all__ = ["SpeedConfig", "run_speed_benchmarks", "format_table"]
