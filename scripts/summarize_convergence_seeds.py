"""Combine convergence studies that differ only in seed: plateau, peak and margin over seeds.

    python scripts/benchmark_convergence.py --output_dir conv_s1 --set seed=1 --set pretrain.seed=1
    python scripts/benchmark_convergence.py --output_dir conv_s2 --set seed=2 --set pretrain.seed=2
    python scripts/summarize_convergence_seeds.py conv conv_s1 conv_s2 --output seeds.md --figure seeds.png

Prints the markdown (per labeled count and run: the last snapshot and the plateau, the mean of the
last --plateau_points snapshots, per seed with mean and sd; the peak; the margin over supervised-only
of the same seed) and writes it to --output, the mean curves with their seed range to --figure.
Works mid-study: seeds that have not reached a run's last iteration are listed, not averaged.
See benchmarks/convergence_seeds.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.convergence_seeds import combine_studies, format_study_seeds, plot_study_seeds  # noqa: E402
from ideal_monai.errors import IdealInputError  # noqa: E402
from ideal_monai.utils.atomic import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="output folders of scripts/benchmark_convergence.py")
    p.add_argument("--kind", choices=["ema", "final"], default="ema", help="snapshot weights (default ema)")
    p.add_argument("--plateau_points", type=int, default=3, help="last snapshots averaged per seed (default 3)")
    p.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    p.add_argument("--figure", type=Path, default=None, help="write the mean curves (PNG) here")
    args = p.parse_args(argv)
    try:
        summary = combine_studies(args.folders, kind=args.kind, plateau_points=args.plateau_points)
        markdown = format_study_seeds(summary)
        if args.output:
            atomic_write_text(markdown, args.output)  # OutputError (an IdealInputError) names the file
        if args.figure:
            plot_study_seeds(summary, args.figure)
    except IdealInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
