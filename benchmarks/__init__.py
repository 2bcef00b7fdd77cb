"""Benchmarks of the IDEAL implementation (method and results: ``docs/history/BENCHMARKS.md``).

- :mod:`~benchmarks.bundle_config`: the one way they read the bundle (``ConfigParser``
  over the bundle's configs, with overrides).
- :mod:`~benchmarks.speed`: training-step and inference speed of IDEAL against the plain
  supervised U-Net of the same encoder (``scripts/benchmark_speed.py``).
- :mod:`~benchmarks.acdc`, :mod:`~benchmarks.acdc_seeds`,
  :mod:`~benchmarks.convergence`: segmentation quality on ACDC, over seeds, and against
  iterations; :mod:`~benchmarks.memory`: inference memory over a folder;
  :mod:`~benchmarks.scaling`: data-parallel scaling; :mod:`~benchmarks.dense_loss`:
  the chunked dense loss against the full-matrix reference; :mod:`~benchmarks.label_server`:
  concurrent requests to a MONAI Label server (imported on their own; see their scripts).
"""

from .speed import SpeedConfig, format_table, run_speed_benchmarks

__all__ = ["SpeedConfig", "run_speed_benchmarks", "format_table"]
