"""Convergence curves on ACDC: validation DSC every --eval_every iterations, out to --iterations, per arm.

Resumable: rerun the same command after an interruption and it continues (training from the last epoch
checkpoint, evaluation from the last evaluated snapshot). See benchmarks/convergence.py.

    python scripts/benchmark_convergence.py --output_dir conv --labeled 3 7 --iterations 6000
    python scripts/benchmark_convergence.py --output_dir conv --arms ideal --pretrain_iterations 1500 6000
    python scripts/benchmark_convergence.py --output_dir conv --set precision=fp32   # any config override
    python scripts/benchmark_convergence.py --output_dir conv --rescore --kinds ema   # after an inference change
    # two processes, one thread each, sharing the study folder (different arms):
    python scripts/benchmark_convergence.py --output_dir conv --arms supervised consistency --threads 1 &
    python scripts/benchmark_convergence.py --output_dir conv --arms ideal --threads 1

--set KEY=VALUE as in scripts/benchmark_acdc.py (a plain KEY goes to finetune; pretrain.KEY, inference.KEY).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.acdc import ARMS, PROFILES, apply_sets, default_data_dir, parse_sets  # noqa: E402
from benchmarks.convergence import KINDS, ConvergenceConfig, rescore, run_convergence  # noqa: E402
from ideal_monai.errors import IdealInputError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="training settings (default cpu)")
    p.add_argument("--data_dir", type=Path, default=default_data_dir(), help="ACDC folder (default ../shared/data/acdc)")
    p.add_argument("--splits_file", type=Path, default=None, help="default <data_dir>/splits.json")
    p.add_argument("--output_dir", type=Path, default=Path("benchmark_convergence"))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--labeled", nargs="+", type=int, default=[3, 7])
    p.add_argument("--iterations", type=int, default=6000, help="fine-tuning iterations per run (multiple of 50)")
    p.add_argument("--eval_every", type=int, default=500, help="snapshot + evaluation interval (multiple of 50)")
    p.add_argument("--pretrain_iterations", type=int, nargs="+", default=[1500],
                   help="one IDEAL run per pre-training length (multiples of 50)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--report_only", action="store_true",
                   help="only rebuild results.md / results.json / convergence.png from what --output_dir holds now "
                        "(e.g. while the study still runs)")
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: re-evaluate the kept snapshots of --arms/--labeled whose curve points were "
                        "scored after another post-processing than this checkout's inference (e.g. before the "
                        "heart-first step); --set inference.KEY applies")
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                   help="with --rescore: which snapshots (default both)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's). Two processes of one thread each may share "
                        "--output_dir on different --arms (docs/history/BENCHMARKS.md, section Convergence curves)")
    args = p.parse_args(argv)
    if args.report_only:
        from benchmarks.convergence import write_results

        if not args.output_dir.is_dir():
            p.error(f"{args.output_dir}: no such study folder")
        write_results(args.output_dir)
        print((args.output_dir / "results.md").read_text())
        return 0
    try:
        profile = apply_sets(PROFILES[args.profile], parse_sets(args.sets))
        cfg = ConvergenceConfig(output_dir=args.output_dir, data_dir=args.data_dir, splits_file=args.splits_file,
                                profile=profile, arms=tuple(args.arms), labeled=tuple(args.labeled),
                                iterations=args.iterations, eval_every=args.eval_every,
                                pretrain_iterations=tuple(args.pretrain_iterations))
    except IdealInputError as e:
        p.error(str(e))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.rescore:
        if not args.output_dir.is_dir():
            p.error(f"{args.output_dir}: no such study folder")
        try:
            count = rescore(cfg, kinds=args.kinds)
        except IdealInputError as e:
            p.error(str(e))
        print(f"rescored {count} curve points")
        print((cfg.output_dir / "results.md").read_text())
        return 0
    command = "python scripts/benchmark_convergence.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    run_convergence(cfg, command=command)
    print((cfg.output_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
