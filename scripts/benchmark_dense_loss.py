"""Time and peak memory of DenseLocalContrastiveLoss (chunked) vs a full-matrix reference, fwd + bwd.

Each (size, method) runs in a fresh subprocess so that its peak RSS (``ru_maxrss``, a high-water
mark that never goes down) belongs to that configuration alone. Peak extra memory = peak RSS minus
the RSS after the inputs are allocated (on CUDA: ``max_memory_allocated`` minus the inputs).

    python scripts/benchmark_dense_loss.py                       # N = 4096 16384 65536, C = 128, CPU
    python scripts/benchmark_dense_loss.py --sizes 4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MAP_SIDE = 64  # feature maps are (B, C, 64, 64); N = B * 64 * 64


def reference_loss(query, key, target, tau):
    """The obvious implementation: the full (N, N) logits and F.cross_entropy (ignore -1)."""
    import torch.nn.functional as F

    c = query.shape[1]
    q = F.normalize(query, dim=1).flatten(2).transpose(1, 2).reshape(-1, c)
    k = F.normalize(key, dim=1).flatten(2).transpose(1, 2).reshape(-1, c)
    return F.cross_entropy((q / tau) @ k.t(), target, ignore_index=-1)  # scale the thin side, not N^2


def worker(args) -> dict:
    """Run one configuration once (after a tiny warm-up) in this process and return its measurements."""
    import torch

    from ideal_monai.losses import DenseLocalContrastiveLoss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    b = args.n // (MAP_SIDE * MAP_SIDE)
    s = MAP_SIDE * MAP_SIDE
    gen = torch.Generator().manual_seed(0)
    # correspondences as a geometric pipeline would give them: mostly valid, ~10% out of view
    match = torch.randint(0, s, (b, s), generator=gen)
    match[torch.rand(b, s, generator=gen) < 0.1] = -1
    target = torch.where(match >= 0, match + torch.arange(b)[:, None] * s, match).reshape(-1).to(device)
    match = match.to(device)
    query = torch.randn(b, args.channels, MAP_SIDE, MAP_SIDE, generator=gen).to(device).requires_grad_(True)
    key = torch.randn(b, args.channels, MAP_SIDE, MAP_SIDE, generator=gen).to(device).requires_grad_(True)

    if args.method == "chunked":
        loss_fn = DenseLocalContrastiveLoss(temperature=0.1, chunk_size=args.chunk_size)

        def step():
            return loss_fn(query, key, match)
    else:

        def step():
            return reference_loss(query, key, target, 0.1)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    # load kernels / thread pools on a tiny problem so the baseline excludes one-off setup
    tiny = DenseLocalContrastiveLoss(chunk_size=8)
    tiny(torch.randn(1, 4, 4, 4, device=device, requires_grad=True), torch.randn(1, 4, 4, 4, device=device)).backward()
    sync()
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t0, c0 = time.perf_counter(), cpu_seconds()
    loss = step()
    loss.backward()
    sync()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0

    if device.type == "cuda":
        peak_extra = torch.cuda.max_memory_allocated() - base
    else:
        peak_extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"n": args.n, "method": args.method, "wall_s": wall, "cpu_s": cpu, "peak_extra_mib": peak_extra / 2**20,
            "loss": loss.item()}


def reference_bytes(n: int) -> int:
    """Rough peak of the reference: about four live (N, N) float32 buffers during fwd + bwd."""
    return 4 * n * n * 4


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536], help="N = B*H*W (multiples of 4096)")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None, help="default: automatic (~64 MiB logits per chunk)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over all configurations, interleaved so that background load hits all alike")
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="a configuration whose run took longer than this is not repeated in later rounds")
    p.add_argument("--max-reference-gb", type=float, default=8.0, help="skip the reference when it would need more")
    p.add_argument("--methods", nargs="+", default=["chunked", "reference"], choices=["chunked", "reference"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="chunked", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return
    for n in args.sizes:
        if n % (MAP_SIDE * MAP_SIDE):
            p.error(f"size {n} is not a multiple of {MAP_SIDE * MAP_SIDE}")

    configs = [(n, m) for n in args.sizes for m in args.methods]
    runs = {c: [] for c in configs}
    skipped = {(n, m): reference_bytes(n) / 2**30 for n, m in configs
               if m == "reference" and reference_bytes(n) > args.max_reference_gb * 2**30}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for n, method in configs:
            if (n, method) in skipped or (runs[n, method] and runs[n, method][-1]["wall_s"] > args.time_budget):
                continue
            cmd = [sys.executable, __file__, "--worker", "--method", method, "--n", str(n),
                   "--channels", str(args.channels), "--device", args.device, "--threads", str(args.threads)]
            if args.chunk_size is not None:
                cmd += ["--chunk-size", str(args.chunk_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[n, method].append(json.loads(out.strip().splitlines()[-1]))
            print(out.strip(), file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}\n")
    print("| N = B*H*W | method | fwd+bwd wall, best / median (s) | CPU time, best / median (s) | runs "
          "| peak extra memory (MiB) | loss |")
    print("|---|---|---|---|---|---|---|")
    for n, method in configs:
        if (n, method) in skipped:
            print(f"| {n:,} | {method} | skipped (needs ~{skipped[n, method]:.0f} GiB) | - | - | - | - |")
            continue
        r = runs[n, method]
        wall, cpu = [x["wall_s"] for x in r], [x["cpu_s"] for x in r]
        print(f"| {n:,} | {method} | {min(wall):.3f} / {statistics.median(wall):.3f} | "
              f"{min(cpu):.3f} / {statistics.median(cpu):.3f} | {len(r)} | "
              f"{max(x['peak_extra_mib'] for x in r):.0f} | {r[0]['loss']:.4f} |")


if __name__ == "__main__":
    main()
