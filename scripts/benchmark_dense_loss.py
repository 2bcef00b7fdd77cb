"""Time and peak memory of DenseLocalContrastiveLoss (chunked) vs a full-matrix reference, fwd + bwd.

See ``benchmarks/dense_loss.py``, and docs/RESULTS.md for results.

    python scripts/benchmark_dense_loss.py                       # N = 4096 16384 65536, C = 128, CPU
    python scripts/benchmark_dense_loss.py --sizes 4096 --device cuda
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.dense_loss import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
