"""Combine several ACDC benchmark output folders that differ only in seed into one table.

    python scripts/benchmark_acdc.py --output_dir acdc_seed1 --labeled 7 --set seed=1
    python scripts/benchmark_acdc.py --output_dir acdc_seed2 --labeled 7 --set seed=2
    python scripts/summarize_acdc_seeds.py acdc_seed0 acdc_seed1 acdc_seed2 --output acdc_seeds.md

Prints the markdown (mean DSC per seed, mean and sd over seeds, per-volume comparison with the
supervised-only arm and its Wilcoxon p-value) and writes it to --output when given.
See benchmarks/acdc_seeds.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.acdc_seeds import combine_seeds, format_seed_summary  # noqa: E402
from ideal_monai.errors import IdealInputError  # noqa: E402
from ideal_monai.utils.atomic import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="output folders of scripts/benchmark_acdc.py")
    p.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    try:
        markdown = format_seed_summary(combine_seeds(args.folders))
        if args.output:
            atomic_write_text(markdown, args.output)  # OutputError (an IdealInputError) names the file
    except IdealInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
