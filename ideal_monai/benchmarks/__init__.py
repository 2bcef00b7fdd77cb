"""Benchmarks of the IDEAL implementation (timings go to ``docs/BENCHMARKS.md``).

- :mod:`ideal_monai.benchmarks.speed`: training-step and inference speed of IDEAL against the
  plain supervised U-Net of the same encoder (``scripts/benchmark_speed.py``).
"""

from .speed import SpeedConfig, format_table, run_speed_benchmarks

__all__ = ["SpeedConfig", "run_speed_benchmarks", "format_table"]
