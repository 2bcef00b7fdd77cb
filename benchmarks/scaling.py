"""Data-parallel scaling on CPU: 1 process vs ``torchrun --nproc_per_node=N`` (gloo), same global batch.

Runs the real bundle (``pretrain.json`` / ``train.json``, plus ``multi_gpu_*.json`` for N > 1) on
synthetic phantoms with a :class:`~benchmarks.time_budget.TimeBudget` (no limit, it only
logs step times) on every rank, and reports the median step time after ``warmup`` steps, the
throughput (global slices per second) and the scaling efficiency ``T_1 / (N * T_N)``. Validation is
off (``val_interval`` > ``max_epochs``) so only training steps are timed.

    python -m benchmarks.scaling --output_dir /tmp/scaling --nprocs 2 --threads 1

On CPU the processes share the machine's cores and memory bandwidth, so this measures the
overhead of DDP (gradient all-reduce over gloo, sharded loading) more than a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from ideal_monai.bundle_runner import bundle_dir, config_path

from .runner import subprocess_env


def _run(run_id: str, nproc: int, root: Path, data: Path, global_batch: int, iterations: int, threads: int,
         patch: int, extra: list[str]) -> dict:
    out = root / f"{run_id}_n{nproc}"
    handlers_key = "+pretraining#handlers" if run_id == "pretrain" else "+train#handlers"
    timer = root / f"timer_{run_id}.json"
    timer.write_text(json.dumps({
        "+imports": ["$import ignite.distributed as idist"],
        handlers_key: [{"_target_": "benchmarks.time_budget.TimeBudget", "max_step_times": 1000,
                        "log_path": "$os.path.join(@output_dir, 'timing_rank' + str(idist.get_rank()) + '.json')"}],
    }))
    configs_dir = bundle_dir() / "configs"
    configs = [str(config_path(run_id))]
    if nproc > 1:
        configs.append(str(configs_dir / ("multi_gpu_pretrain.json" if run_id == "pretrain" else "multi_gpu_train.json")))
    configs.append(str(timer))
    local = global_batch // nproc
    batch = ["--batch_size", str(local)] if run_id == "pretrain" else \
        ["--batch_size_labeled", str(local), "--batch_size_unlabeled", str(local), "--num_labeled", "3", "--num_val", "1",
         "--val_interval", "100", "--use_pretrained", "False"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "monai.bundle", "run", run_id, "--config_file", str(configs),
           "--meta_file", str(configs_dir / "metadata.json"), "--logging_file", str(configs_dir / "logging.conf"),
           "--bundle_root", str(out), "--dataset_dir", str(data), "--patch_size", f"[{patch}, {patch}]",
           "--max_epochs", "1", "--iterations_per_epoch", str(iterations), "--resume", "False", *batch, *extra]
    env = subprocess_env(OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads((out / "runs" / "timing_rank0.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    from ideal_monai.data.synthetic import write_synthetic_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--global_batch", type=int, default=8)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--run_ids", nargs="+", default=["pretrain", "finetune"])
    args = p.parse_args(argv)
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if not data.exists():
        write_synthetic_dataset(data, num_cases=6, seed=0)
    results = {}
    for run_id in args.run_ids:
        row = {}
        for n in (1, args.nprocs):
            log = _run(run_id, n, root, data, args.global_batch, args.iterations, args.threads, args.patch, [])
            steps = log["step_times_s"][args.warmup:]
            row[n] = statistics.median(steps)
        t1, tn = row[1], row[args.nprocs]
        results[run_id] = {"step_s_1": t1, f"step_s_{args.nprocs}": tn,
                           "slices_per_s_1": args.global_batch / t1, f"slices_per_s_{args.nprocs}": args.global_batch / tn,
                           "efficiency": t1 / (args.nprocs * tn), "speedup": t1 / tn}
        print(run_id, json.dumps(results[run_id]), flush=True)
    (root / "scaling.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
