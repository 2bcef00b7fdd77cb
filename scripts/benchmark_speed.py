"""Step and inference speed of IDEAL vs the plain supervised U-Net of the same encoder, on CPU.

All arms run in one process, interleaved, after warm-up; medians of the repetitions. See
``benchmarks/speed.py`` for what exactly each arm runs, and docs/RESULTS.md for results.

    python scripts/benchmark_speed.py                                   # the documented run (docs/history/BENCHMARKS.md)
    python scripts/benchmark_speed.py --patch 128 --reps 5 --output speed.md
    python scripts/benchmark_speed.py --omp_wait_policy PASSIVE           # no OpenMP spin-waiting (shared CPUs)
    python scripts/benchmark_speed.py --benchmarks inference --data_dir /path/to/acdc --weights models/model.pt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# torch is imported only after the arguments are read: --omp_wait_policy must be in the environment
# before the OpenMP runtime starts.
BENCHMARKS = ("pretrain", "finetune", "inference", "precision")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--patch", type=int, default=256, choices=[128, 256], help="in-plane patch size (default 256)")
    p.add_argument("--batch_size", type=int, default=16, help="B of the pre-training comparison (default 16)")
    p.add_argument("--batch_labeled", type=int, default=12)
    p.add_argument("--batch_unlabeled", type=int, default=12)
    p.add_argument("--valid_fraction", type=float, default=0.8, help="fraction of matched cells (default 0.8)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions per arm (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per arm, at least (default 3)")
    p.add_argument("--budget_s", type=float, default=90.0,
                   help="per comparison: add repetitions while they fit in this many seconds (default 90)")
    p.add_argument("--max_reps", type=int, default=15, help="at most this many repetitions (default 15)")
    p.add_argument("--inference_reps", type=int, default=None, help="minimum for inference (default: --reps)")
    p.add_argument("--num_volumes", type=int, default=5)
    p.add_argument("--data_dir", default=None, help="ACDC-style folder (default ../shared/data/acdc from the repo); "
                                                    "synthetic phantoms when absent")
    p.add_argument("--weights", default=None, help="optional fine-tuned model.pt for the inference networks")
    p.add_argument("--sw_batch_size", type=int, default=None, help="default: bundle/configs/inference.json's")
    p.add_argument("--profile", action="store_true",
                   help="for a missed target: torch.profiler top ops of each arm (and, for fine-tuning, the "
                        "step's cost by component)")
    p.add_argument("--output", default=None, help="also write the Markdown report here")
    p.add_argument("--omp_wait_policy", choices=["PASSIVE", "ACTIVE"], default=None,
                   help="set OMP_WAIT_POLICY for this run (default: leave the environment as it is). PASSIVE "
                        "stops idle OpenMP threads from spinning, which matters on a machine shared with other work")
    p.add_argument("--glibc_default_allocator", action="store_true",
                   help="do not keep freed memory on the heap (training does, see ideal_monai/utils/allocator.py); "
                        "shows what page-faulting every large tensor anew costs")
    p.add_argument("--nchw", action="store_true",
                   help="keep the networks in NCHW memory order (the bundle configs' channels_last=false); the "
                        "default is channels-last, as the configs' default")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the configs' precision key for every arm (default auto, the configs' default: bf16 on "
                        "CPUs with bf16 units); the 'precision' comparison always measures it against fp32")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    from benchmarks.speed import SpeedConfig, run_speed_benchmarks
    if not 0.0 < args.valid_fraction <= 1.0:
        p.error("--valid_fraction must be in (0, 1]")
    if min(args.reps, args.batch_size, args.batch_labeled, args.batch_unlabeled, args.num_volumes, args.threads) < 1:
        p.error("counts must be positive")

    cfg = SpeedConfig(
        threads=args.threads, benchmarks=tuple(args.benchmarks), patch=args.patch, batch_size=args.batch_size,
        batch_labeled=args.batch_labeled, batch_unlabeled=args.batch_unlabeled, valid_fraction=args.valid_fraction,
        warmup=args.warmup, reps=args.reps, budget_s=args.budget_s, max_reps=args.max_reps,
        inference_reps=args.inference_reps, num_volumes=args.num_volumes,
        data_dir=args.data_dir, weights=args.weights, sw_batch_size=args.sw_batch_size, profile=args.profile,
        seed=args.seed, retain_freed_memory=not args.glibc_default_allocator,
        channels_last=not args.nchw, precision=args.precision,
    )
    command = "python scripts/benchmark_speed.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = run_speed_benchmarks(cfg, command=command)
    text = result["report"] + "".join(f"\n\n#### {title}\n\n{body}" for title, body in result["profiles"].items())
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
