"""Time and peak memory of :class:`~ideal_monai.losses.DenseLocalContrastiveLoss` (chunked) against a
full-matrix reference, forward + backward.

Each (size, method) runs in a fresh subprocess (``python -m benchmarks.dense_loss
--worker``) so that its peak RSS belongs to that configuration alone; the configurations are
interleaved over rounds. Method and results: docs/history/BENCHMARKS.md, section "Dense contrastive loss".
Entry point: ``scripts/benchmark_dense_loss.py``.
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
from collections.abc import Callable, Sequence

from .runner import subprocess_env

__all__ = ["MAP_SIDE", "reference_loss", "reference_bytes", "measure_once", "run_dense_loss_benchmark",
           "format_table", "main"]

MAP_SIDE = 64  #: feature maps are (B, C, 64, 64); N = B * 64 * 64
METHODS = ("chunked", "reference")


def reference_loss(query, key, target, tau):
    """The obvious implementation: the full (N, N) logits and F.cross_entropy (ignore -1).

    ``query``, ``key``: ``(B, C, H, W)``; ``target``: ``(B*H*W,)`` flat key index per query cell or -1.
    """
    import torch.nn.functional as F

    c = query.shape[1]
    q = F.normalize(query, dim=1).flatten(2).transpose(1, 2).reshape(-1, c)
    k = F.normalize(key, dim=1).flatten(2).transpose(1, 2).reshape(-1, c)
    return F.cross_entropy((q / tau) @ k.t(), target, ignore_index=-1)  # scale the thin side, not N^2


def reference_bytes(n: int) -> int:
    """Rough peak of the reference: about four live (N, N) float32 buffers during fwd + bwd."""
    return 4 * n * n * 4


def measure_once(n: int, method: str, channels: int = 128, device: str = "cpu", threads: int = 2,
                 chunk_size: int | None = None) -> dict:
    """Run one configuration once (after a tiny warm-up) in this process and return its measurements:
    ``{"n", "method", "wall_s", "cpu_s", "peak_extra_mib", "loss"}``. Peak extra memory is the peak
    RSS minus the RSS after the inputs are allocated (CUDA: ``max_memory_allocated`` minus the inputs),
    so call it in a fresh process."""
    import torch

    from ideal_monai.losses import DenseLocalContrastiveLoss
    from ideal_monai.utils.allocator import peak_rss

    torch.set_num_threads(threads)
    dev = torch.device(device)
    b = n // (MAP_SIDE * MAP_SIDE)
    s = MAP_SIDE * MAP_SIDE
    gen = torch.Generator().manual_seed(0)
    # correspondences as a geometric pipeline would give them: mostly valid, ~10% out of view
    match = torch.randint(0, s, (b, s), generator=gen)
    match[torch.rand(b, s, generator=gen) < 0.1] = -1
    target = torch.where(match >= 0, match + torch.arange(b)[:, None] * s, match).reshape(-1).to(dev)
    match = match.to(dev)
    query = torch.randn(b, channels, MAP_SIDE, MAP_SIDE, generator=gen).to(dev).requires_grad_(True)
    key = torch.randn(b, channels, MAP_SIDE, MAP_SIDE, generator=gen).to(dev).requires_grad_(True)

    if method == "chunked":
        loss_fn = DenseLocalContrastiveLoss(temperature=0.1, chunk_size=chunk_size)

        def step():
            return loss_fn(query, key, match)
    else:

        def step():
            return reference_loss(query, key, target, 0.1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    # load kernels / thread pools on a tiny problem so the baseline excludes one-off setup
    tiny = DenseLocalContrastiveLoss(chunk_size=8)
    tiny(torch.randn(1, 4, 4, 4, device=dev, requires_grad=True), torch.randn(1, 4, 4, 4, device=dev)).backward()
    sync()
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = peak_rss()

    t0, c0 = time.perf_counter(), cpu_seconds()
    loss = step()
    loss.backward()
    sync()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0

    peak_extra = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else peak_rss() - base
    return {"n": n, "method": method, "wall_s": wall, "cpu_s": cpu, "peak_extra_mib": peak_extra / 2**20,
            "loss": loss.item()}


def run_dense_loss_benchmark(sizes: Sequence[int] = (4096, 16384, 65536), methods: Sequence[str] = METHODS,
                             channels: int = 128, device: str = "cpu", threads: int = 2, chunk_size: int | None = None,
                             rounds: int = 3, time_budget: float = 60.0, max_reference_gb: float = 8.0,
                             log: Callable[[str], None] | None = None) -> dict:
    """Every (size, method) once per round, each in a fresh worker process; a configuration whose run
    took longer than ``time_budget`` seconds is not repeated, and the reference is skipped where it
    would need more than ``max_reference_gb``.

    Returns ``{"configs", "runs": {(n, method): [measurement, ...]}, "skipped": {(n, method): GiB},
    "load_before", "load_after"}``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for n in sizes:
        if n % (MAP_SIDE * MAP_SIDE):
            raise ValueError(f"size {n} is not a multiple of {MAP_SIDE * MAP_SIDE}")
    configs = [(n, m) for n in sizes for m in methods]
    runs = {c: [] for c in configs}
    skipped = {(n, m): reference_bytes(n) / 2**30 for n, m in configs
               if m == "reference" and reference_bytes(n) > max_reference_gb * 2**30}
    # the workers import this package as the caller does, also from a checkout that is not installed
    env = subprocess_env()
    load_before = os.getloadavg()
    for _ in range(rounds):
        for n, method in configs:
            if (n, method) in skipped or (runs[n, method] and runs[n, method][-1]["wall_s"] > time_budget):
                continue
            cmd = [sys.executable, "-m", "benchmarks.dense_loss", "--worker", "--method", method,
                   "--n", str(n), "--channels", str(channels), "--device", device, "--threads", str(threads)]
            if chunk_size is not None:
                cmd += ["--chunk-size", str(chunk_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            runs[n, method].append(json.loads(out.strip().splitlines()[-1]))
            log(out.strip())
    return {"configs": configs, "runs": runs, "skipped": skipped, "load_before": load_before,
            "load_after": os.getloadavg()}


def format_table(result: dict) -> str:
    """The load averages and the Markdown table of :func:`run_dense_loss_benchmark`'s result."""
    lines = [f"load average (1, 5, 15 min) before: {result['load_before']}, after: {result['load_after']}", "",
             "| N = B*H*W | method | fwd+bwd wall, best / median (s) | CPU time, best / median (s) | runs "
             "| peak extra memory (MiB) | loss |",
             "|---|---|---|---|---|---|---|"]
    for n, method in result["configs"]:
        if (n, method) in result["skipped"]:
            lines.append(f"| {n:,} | {method} | skipped (needs ~{result['skipped'][n, method]:.0f} GiB) | - | - | - | - |")
            continue
        r = result["runs"][n, method]
        wall, cpu = [x["wall_s"] for x in r], [x["cpu_s"] for x in r]
        lines.append(f"| {n:,} | {method} | {min(wall):.3f} / {statistics.median(wall):.3f} | "
                     f"{min(cpu):.3f} / {statistics.median(cpu):.3f} | {len(r)} | "
                     f"{max(x['peak_extra_mib'] for x in r):.0f} | {r[0]['loss']:.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``scripts/benchmark_dense_loss.py`` (and of the ``--worker`` processes)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
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
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="chunked", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(measure_once(args.n, args.method, args.channels, args.device, args.threads, args.chunk_size)))
        return 0
    try:
        result = run_dense_loss_benchmark(args.sizes, args.methods, args.channels, args.device, args.threads,
                                          args.chunk_size, args.rounds, args.time_budget, args.max_reference_gb)
    except ValueError as e:
        p.error(str(e))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
