"""Segmentation quality on ACDC: supervised-only vs consistency-only vs IDEAL, with 3 and 7 labeled patients.

Each arm trains with the same budget in its own bundle root under --output_dir, is evaluated on the
split's validation patients (and --test_dir), and the table lands in <output_dir>/results.md + .json.
See benchmarks/acdc.py for what each stage runs, and docs/RESULTS.md for results.

    python scripts/benchmark_acdc.py --output_dir benchmark_acdc            # CPU profile (duration: docs/history/BENCHMARKS.md)
    python scripts/benchmark_acdc.py --output_dir benchmark_acdc --skip_existing   # resume after an interruption
    python scripts/benchmark_acdc.py --profile gpu --output_dir benchmark_acdc_gpu
    python scripts/benchmark_acdc.py --arms supervised ideal --labeled 3 --minutes_per_arm 5 \\
        --set lambda_max=0.5 --set pretrain.temperature=0.2

--set KEY=VALUE (repeatable; Python literals) overrides a config key of the profile: a plain KEY goes to
finetune (patch_size, target_spacing, features, seed, cache_rate, num_workers go to every stage);
pretrain.KEY / finetune.KEY / inference.KEY target one stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.acdc import (  # noqa: E402
    ARMS,
    PROFILES,
    AcdcBenchmarkConfig,
    apply_sets,
    default_data_dir,
    parse_sets,
    run_acdc_benchmark,
)
from ideal_monai.errors import IdealInputError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="training settings (default cpu)")
    p.add_argument("--data_dir", type=Path, default=default_data_dir(), help="ACDC folder (default ../shared/data/acdc)")
    p.add_argument("--splits_file", type=Path, default=None, help="default <data_dir>/splits.json")
    p.add_argument("--output_dir", type=Path, default=Path("benchmark_acdc"))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--labeled", nargs="+", type=int, default=[3, 7], help="labeled patients (splits key labeled_N)")
    p.add_argument("--test_dir", type=Path, default=None, help="also evaluate on the labeled volumes of this folder")
    p.add_argument("--skip_existing", action="store_true", help="reuse finished stages with the same settings")
    p.add_argument("--patch_size", type=int, nargs=2, default=None, help="profile default: cpu 128 128, gpu 256 256")
    p.add_argument("--target_spacing", type=float, nargs=2, default=None,
                   help="in-plane mm (profile default: cpu 2.0 2.0, gpu none)")
    p.add_argument("--pretrain_minutes", type=float, default=None, help="pre-training budget (cpu default 10)")
    p.add_argument("--minutes_per_arm", type=float, default=None, help="training budget per arm (cpu default 10)")
    p.add_argument("--checkpoint", choices=["final", "ema", "best"], default=None,
                   help="weights evaluated: final (default), ema (moving average) or best validation epoch")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the profile (repeatable), see above")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)

    try:
        sets = parse_sets(args.sets)
        if args.patch_size:
            sets.setdefault("patch_size", list(args.patch_size))
        if args.target_spacing:
            sets.setdefault("target_spacing", list(args.target_spacing))
        profile = apply_sets(PROFILES[args.profile], sets)
        changes = {k: getattr(args, k) for k in ("pretrain_minutes", "minutes_per_arm", "checkpoint")
                   if getattr(args, k) is not None}
        profile = dataclasses.replace(profile, **changes)
        cfg = AcdcBenchmarkConfig(output_dir=args.output_dir, data_dir=args.data_dir, splits_file=args.splits_file,
                                  profile=profile, arms=tuple(args.arms), labeled=tuple(args.labeled),
                                  test_dir=args.test_dir, skip_existing=args.skip_existing)
    except IdealInputError as e:
        p.error(str(e))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = "python scripts/benchmark_acdc.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = run_acdc_benchmark(cfg, command=command)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
