"""DenseLocalContrastiveLoss against a straightforward full-similarity-matrix reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ideal_monai.losses import DenseLocalContrastiveLoss, GlobalContrastiveLoss
from ideal_monai.losses.dense_contrastive import _ChunkedDenseInfoNCE, auto_chunk_size

B, C, H, W = 3, 8, 5, 6  # N = B*H*W = 90 key candidates
N = B * H * W


def reference_loss(query, key, match, tau, reduction="mean"):
    """Full (N, N) logits over all key locations of all images; F.cross_entropy ignores -1."""
    b, c, h, w = query.shape
    q = F.normalize(query, dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    k = F.normalize(key, dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    match = match.reshape(b, h * w)
    offsets = torch.arange(b)[:, None] * h * w
    target = torch.where(match >= 0, match + offsets, match).reshape(-1)
    logits = q @ k.t() / tau
    if reduction == "none":
        return F.cross_entropy(logits, target, ignore_index=-1, reduction="none").reshape(b, h, w)
    return F.cross_entropy(logits, target, ignore_index=-1, reduction=reduction)


def random_inputs(seed, dtype=torch.float64, invalid_fraction=0.3):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    key = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    match = torch.randint(0, H * W, (B, H, W), generator=g)
    match[torch.rand(B, H, W, generator=g) < invalid_fraction] = -1
    return query, key, match


def value_and_grads(fn, query, key):
    query = query.clone().requires_grad_(True)
    key = key.clone().requires_grad_(True)
    loss = fn(query, key)
    loss.sum().backward()
    return loss.detach(), query.grad, key.grad


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 32, 89, 90, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_full_matrix_reference_values_and_grads(chunk_size, reduction):
    query, key, match = random_inputs(seed=0)
    assert (match == -1).any() and (match >= 0).any()
    loss_fn = DenseLocalContrastiveLoss(temperature=0.1, chunk_size=chunk_size, reduction=reduction)
    got = value_and_grads(lambda q, k: loss_fn(q, k, match), query, key)
    want = value_and_grads(lambda q, k: reference_loss(q, k, match, 0.1, reduction), query, key)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)  # float64: the two agree far below 1e-5


def test_float32_matches_float64_reference():
    query, key, match = random_inputs(seed=1)
    loss_fn = DenseLocalContrastiveLoss(temperature=0.07, chunk_size=16)
    got = value_and_grads(lambda q, k: loss_fn(q, k, match), query.float(), key.float())
    want = value_and_grads(lambda q, k: reference_loss(q, k, match, 0.07), query, key)
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tau", [(torch.float32, 0.01), (torch.float64, 0.001)])
def test_small_temperature_stays_exact(dtype, tau):
    # logits up to 1/tau: beyond the range where the Cauchy-Schwarz bound may replace the row max.
    # Query and key live in (nearly) orthogonal channel halves, so every logit is far below that
    # bound and a bound-shifted exp() would underflow to 0 / denormals.
    query, key, match = random_inputs(seed=9)
    query[:, C // 2:] *= 0.01
    key[:, : C // 2] *= 0.01
    loss_fn = DenseLocalContrastiveLoss(temperature=tau, chunk_size=7)
    got = value_and_grads(lambda q, k: loss_fn(q, k, match), query.to(dtype), key.to(dtype))
    want = value_and_grads(lambda q, k: reference_loss(q, k, match, tau), query, key)
    assert torch.isfinite(got[0]) and got[0] > 1.0
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


def test_identity_match_and_flat_match_layouts_agree():
    query, key, _ = random_inputs(seed=2)
    loss_fn = DenseLocalContrastiveLoss(chunk_size=11)
    identity = torch.arange(H * W).expand(B, H * W)
    a = loss_fn(query, key)
    b = loss_fn(query, key, identity)
    c = loss_fn(query, key, identity.reshape(B, H, W))
    torch.testing.assert_close(a, reference_loss(query, key, identity, 0.1), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_gradcheck_of_chunked_function():
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(13, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    target = torch.randint(0, 13, (10,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: _ChunkedDenseInfoNCE.apply(a, b, target, 0.2, 3), (q, k))


def test_aligned_views_score_lower_than_shuffled():
    g = torch.Generator().manual_seed(4)
    features = torch.randn(B, 32, H, W, generator=g)
    noisy = features + 0.05 * torch.randn(B, 32, H, W, generator=g)
    loss_fn = DenseLocalContrastiveLoss(temperature=0.1)
    aligned = loss_fn(features, noisy)
    perm = torch.randperm(H * W, generator=g)
    shuffled = loss_fn(features, noisy.flatten(2)[:, :, perm].reshape(B, 32, H, W))
    # the same shuffled key map scores as well as aligned once the match follows the shuffle
    inverse = torch.argsort(perm).expand(B, H * W)
    tracked = loss_fn(features, noisy.flatten(2)[:, :, perm].reshape(B, 32, H, W), inverse)
    assert aligned < 0.1
    assert shuffled > 2.0
    torch.testing.assert_close(tracked, aligned)


def test_no_valid_location_gives_zero_with_grad():
    query, key, _ = random_inputs(seed=5)
    query.requires_grad_(True)
    key.requires_grad_(True)
    match = torch.full((B, H, W), -1)
    for reduction in ("mean", "sum", "none"):
        loss = DenseLocalContrastiveLoss(reduction=reduction)(query, key, match)
        assert loss.requires_grad
        assert torch.count_nonzero(loss) == 0
        loss.sum().backward()
        assert torch.count_nonzero(query.grad) == 0 and torch.count_nonzero(key.grad) == 0


def test_never_saves_a_quadratic_tensor_for_backward():
    query, key, match = random_inputs(seed=6, dtype=torch.float32, invalid_fraction=0.0)
    query.requires_grad_(True)
    key.requires_grad_(True)
    saved_numels = []

    def pack(t):
        saved_numels.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = DenseLocalContrastiveLoss(chunk_size=16)(query, key, match)
    loss.backward()
    assert saved_numels and max(saved_numels) <= N * (C + 1)  # O(N*C), never the (N, N) logits
    assert query.grad.abs().sum() > 0 and key.grad.abs().sum() > 0


def test_auto_chunk_size_keeps_logits_block_under_budget():
    assert auto_chunk_size(65536, torch.float32) == 256  # 256 * 65536 * 4 B = 64 MiB
    assert auto_chunk_size(65536, torch.float64) == 128
    assert auto_chunk_size(10**9, torch.float32) == 1


def test_shape_and_match_errors():
    loss_fn = DenseLocalContrastiveLoss()
    query = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(query, torch.randn(2, 4, 3, 4))
    with pytest.raises(ValueError, match="match must have shape"):
        loss_fn(query, query, torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(query, query, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"-1 or in \[0, 9\)"):
        loss_fn(query, query, torch.full((2, 9), 9))
    with pytest.raises(ValueError, match="temperature"):
        DenseLocalContrastiveLoss(temperature=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    query, key, match = random_inputs(seed=7, dtype=torch.float32)
    loss_fn = DenseLocalContrastiveLoss(chunk_size=13)
    cpu = value_and_grads(lambda q, k: loss_fn(q, k, match), query, key)
    gpu = value_and_grads(lambda q, k: loss_fn(q, k, match.cuda()), query.cuda(), key.cuda())
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-5)


def test_global_contrastive_loss_is_nt_xent_on_pooled_projections():
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(6, 16, generator=g)
    z2 = z1 + 0.01 * torch.randn(6, 16, generator=g)
    loss_fn = GlobalContrastiveLoss(temperature=0.1)
    # NT-Xent by hand: 2B views, positive = the other view of the same slice, self excluded
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t() / 0.1).fill_diagonal_(float("-inf"))
    want = F.cross_entropy(sim, torch.cat([torch.arange(6, 12), torch.arange(6)]))
    torch.testing.assert_close(loss_fn(z1, z2), want, rtol=1e-5, atol=1e-5)
    assert loss_fn(z1, z2) < loss_fn(z1, z2.roll(1, dims=0))


GATHER_WORKER = """
import json, sys
import torch
import torch.distributed as dist
from ideal_monai.losses import DenseLocalContrastiveLoss

dist.init_process_group("gloo")
rank = dist.get_rank()
query, key, match = torch.load(sys.argv[1])  # the global batch; this rank holds images [2 * rank, 2 * rank + 2)
part = slice(2 * rank, 2 * rank + 2)
q = query[part].clone().requires_grad_(True)
k = key[part].clone().requires_grad_(True)
loss = DenseLocalContrastiveLoss(temperature=0.2, chunk_size=7, gather=True)(q, k, match[part])
loss.backward()
# a rank without any correspondence still takes part in the gather, forward and backward
m = match[part].clone() if rank == 0 else torch.full_like(match[part], -1)
k2 = key[part].clone().requires_grad_(True)
empty = DenseLocalContrastiveLoss(temperature=0.2, gather=True)(q.detach(), k2, m)
empty.backward()
print(json.dumps({"loss": loss.item(), "dq": q.grad.tolist(), "dk": k.grad.tolist(), "empty": empty.item()}))
dist.destroy_process_group()
"""


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_gather_across_two_ranks_is_the_global_batch_loss(tmp_path):
    """Two gloo processes with gather=True: each rank's loss classifies its queries among both ranks'
    keys, and its key gradient is that of the sum of both ranks' losses (what DDP averages)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    g = torch.Generator().manual_seed(3)
    query = torch.randn(4, C, H, W, generator=g, dtype=torch.float64)
    key = torch.randn(4, C, H, W, generator=g, dtype=torch.float64)
    match = torch.randint(0, H * W, (4, H, W), generator=g)
    match[torch.rand(4, H, W, generator=g) < 0.3] = -1
    torch.save((query, key, match), tmp_path / "batch.pt")
    (tmp_path / "worker.py").write_text(GATHER_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "batch.pt")],
                              env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port, OMP_NUM_THREADS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung in the gathered loss")
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    q, k = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
    per_location = reference_loss(q, k, match, 0.2, reduction="none")  # one process, global batch
    valid = match >= 0
    rank_losses = [per_location[r * 2:r * 2 + 2][valid[r * 2:r * 2 + 2]].mean() for r in (0, 1)]
    sum(rank_losses).backward()
    for r, res in enumerate(results):
        part = slice(2 * r, 2 * r + 2)
        assert res["loss"] == pytest.approx(rank_losses[r].item(), rel=1e-9)
        torch.testing.assert_close(torch.tensor(res["dq"], dtype=torch.float64), q.grad[part])
        torch.testing.assert_close(torch.tensor(res["dk"], dtype=torch.float64), k.grad[part])
    assert results[1]["empty"] == 0.0 and results[0]["empty"] > 0
