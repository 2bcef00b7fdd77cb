"""check_finite under DDP: a non-finite loss on one rank skips or stops the step on every rank.

Two real gloo processes train a DDP-wrapped DualDecoderUNet with TwoStreamTrainer; rank 1's loss is
NaN in iteration 2. Before the ranks agreed on finiteness, rank 1 skipped its backward (or left)
while rank 0 waited in DDP's gradient all-reduce for ever: here that is a timeout, i.e. a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

WORKER = textwrap.dedent("""
    import json, sys
    import ignite.distributed as idist
    import torch
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader
    from ideal_monai import distributed
    from ideal_monai.engines import TwoStreamTrainer
    from ideal_monai.losses import BidirectionalConsistencyLoss
    from ideal_monai.networks import DualDecoderUNet

    mode = sys.argv[1]
    torch.manual_seed(0)  # the same initial weights on both ranks, as DDP broadcasts anyway
    network = distributed.wrap_ddp(DualDecoderUNet(features=(4, 8, 8, 8, 8), perturbations=("none", "none")), "cpu")
    rank = idist.get_rank()
    g = torch.Generator().manual_seed(rank)
    labeled = [{"image": torch.rand(1, 32, 32, generator=g), "label": torch.randint(0, 4, (1, 32, 32), generator=g)}
               for _ in range(6)]
    unlabeled = [{"image": torch.rand(1, 32, 32, generator=g)} for _ in range(6)]
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    calls = {"n": 0}

    def supervised_loss(pred, label):  # called once per stream; NaN on rank 1 in iteration 2
        calls["n"] += 1
        loss = dice_ce(pred, label)
        return loss * float("nan") if rank == 1 and calls["n"] in (3, 4) else loss

    trainer = TwoStreamTrainer("cpu", 1, DataLoader(labeled, batch_size=2), network,
                               torch.optim.SGD(network.parameters(), lr=0.1),
                               unlabeled_data_loader=DataLoader(unlabeled, batch_size=2),
                               supervised_loss=supervised_loss, consistency_loss=BidirectionalConsistencyLoss(),
                               nonfinite=mode)
    try:
        trainer.run()
    except FloatingPointError as e:
        print(f"STOPPED {e}", file=sys.stderr)
        sys.exit(3)
    finally:
        distributed.cleanup()
    weights = sum(float(p.detach().double().sum()) for p in network.parameters())
    print(json.dumps({"rank": rank, "skipped": trainer.state.skipped_batches, "iterations": trainer.state.iteration,
                      "weights": weights}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path, mode: str) -> list[subprocess.CompletedProcess]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"nonfinite={mode!r}: the ranks hung (a NaN on one rank must not leave the other in all-reduce)")
    finally:
        for proc in procs:
            proc.kill()
    return results


def test_nonfinite_skip_on_one_rank_is_skipped_on_every_rank(tmp_path):
    results = _run_two_ranks(tmp_path, "skip")
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    outs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
    assert [o["skipped"] for o in outs] == [1, 1] and [o["iterations"] for o in outs] == [3, 3]
    assert outs[0]["weights"] == pytest.approx(outs[1]["weights"], rel=1e-6)  # the replicas stayed identical
    assert "non-finite loss on another process" in results[0].stderr  # rank 0 says why it skipped


def test_nonfinite_stop_on_one_rank_stops_every_rank(tmp_path):
    results = _run_two_ranks(tmp_path, "stop")
    assert [r.returncode for r in results] == [3, 3], [r.stderr[-2000:] for r in results]
    assert "STOPPED non-finite loss (nan) at epoch 1, iteration 2" in results[1].stderr
    assert "STOPPED non-finite loss on another process (rank 0 had" in results[0].stderr
