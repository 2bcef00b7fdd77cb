"""Peak RSS of folder inference at 10 and at 100 volumes: memory must stay flat over a long run.

Each folder size runs in a fresh process through the bundle's inference components; see
``benchmarks/memory.py`` for what is measured, and docs/RESULTS.md for results.

    python scripts/benchmark_inference_memory.py                         # the documented settings
    python scripts/benchmark_inference_memory.py --shape 64 64 8 --patch 32 --features 4 8 8 8 8   # tiny
    python scripts/benchmark_inference_memory.py --counts 10 100 300 --output memory.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[10, 100], help="folder sizes (default 10 100)")
    p.add_argument("--shape", type=int, nargs=3, default=[192, 192, 10], help="mean volume shape X Y Z")
    p.add_argument("--patch", type=int, default=128, help="in-plane patch size (default 128)")
    p.add_argument("--features", type=int, nargs=5, default=[16, 32, 64, 128, 256])
    p.add_argument("--sw_batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the worker processes (default 1)")
    p.add_argument("--save_uncertainty", action="store_true", help="also write the uncertainty maps")
    p.add_argument("--workdir", default=None, help="keep volumes and outputs here (default: a removed temp folder)")
    p.add_argument("--output", default=None, help="also write the Markdown report here")
    p.add_argument("--json", default=None, help="also write all samples as JSON here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if min(a.counts) < 1 or min(a.shape) < 1 or a.patch < 16 or a.threads < 1:
        p.error("counts, shape and threads must be positive; patch at least 16")

    from benchmarks.memory import MemoryConfig, run_memory_benchmark

    cfg = MemoryConfig(counts=tuple(sorted(set(a.counts))), shape=tuple(a.shape), patch_size=a.patch,
                       features=tuple(a.features), sw_batch_size=a.sw_batch_size, threads=a.threads, seed=a.seed,
                       save_uncertainty=a.save_uncertainty, workdir=a.workdir)
    result = run_memory_benchmark(cfg)
    print(result["report"])
    if a.output:
        Path(a.output).write_text(result["report"] + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
