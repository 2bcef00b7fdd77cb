"""Validation DSC of trained convergence runs without and with the test-time flip ensemble.

    python scripts/benchmark_test_time_flips.py --runs conv/ideal_labeled3 conv/supervised_labeled3 \
        --iteration 6000 --kinds ema --output conv/test_time_flips.md

Each evaluation is kept in <run>/flips/ and reused: rerun the command to resume or to rebuild the table.
See benchmarks/test_time_flips.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.test_time_flips import evaluate_test_time_flips, format_test_time_flips  # noqa: E402
from ideal_monai.errors import IdealInputError  # noqa: E402
from ideal_monai.utils.atomic import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders of benchmark_convergence.py")
    p.add_argument("--iteration", type=int, default=6000, help="the snapshot to score (default 6000)")
    p.add_argument("--kinds", nargs="+", choices=["ema", "final"], default=["ema"])
    p.add_argument("--eval_dir", type=Path, default=None, help="default <study>/eval_sets/val")
    p.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        rows = evaluate_test_time_flips(args.runs, args.iteration, args.kinds, args.eval_dir)
    except IdealInputError as e:
        p.error(str(e))
    command = "python scripts/benchmark_test_time_flips.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = f"- command: `{command}`\n\n" + format_test_time_flips(rows)
    if args.output:
        atomic_write_text(table, args.output)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
