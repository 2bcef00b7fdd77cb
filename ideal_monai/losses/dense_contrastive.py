"""Dense local contrastive loss (IDEAL pre-training, docs/METHOD.md §3; sources in bundle/docs/README.md), exact and memory-lean.

For unit feature vectors q_i (query view) and k_n (key view) of a batch of B maps with S = H*W
locations each, N = B*S, and the known correspondence j(i) of query location i in the key view:

    L = mean over valid i of  -log( exp(q_i . k_j(i) / tau) / sum_{n=1..N} exp(q_i . k_n / tau) )

i.e. cross-entropy over *all* key locations of *all* images in the batch with the matched one as
the target. Written naively this needs the (N, N) similarity matrix in forward and two more of
that size in backward (N = 65,536 -> 16 GiB each in float32). :class:`_ChunkedDenseInfoNCE`
instead streams over query chunks and recomputes each chunk's logits in backward, so memory is
O(N * C + chunk * N) while the result is the same cross-entropy (to rounding).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.modules.loss import _Loss

__all__ = ["DenseLocalContrastiveLoss", "dense_info_nce", "auto_chunk_size"]

#: Upper bound on one chunk's ``(chunk, N)`` logits block when the chunk is picked automatically.
CHUNK_BYTES = 64 * 2**20

#: Largest ``x`` with ``exp(-x)`` comfortably a normal number, per dtype (float32: e^-87 ~ tiny).
_SAFE_EXP_RANGE = {torch.float32: 80.0, torch.float64: 700.0}


def auto_chunk_size(num_keys: int, dtype: torch.dtype, budget_bytes: int = CHUNK_BYTES) -> int:
    """Largest number of query rows whose ``(rows, num_keys)`` logits block fits in ``budget_bytes``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, budget_bytes // (max(num_keys, 1) * itemsize))


class _ChunkedDenseInfoNCE(torch.autograd.Function):
    """Per-query InfoNCE over all keys without ever holding the full similarity matrix.

    Inputs (float32 or float64, same device), already flattened and restricted to valid queries:

    - ``q``: ``(M, C)`` query vectors (unit length for the IDEAL loss; any length is computed exactly).
    - ``k``: ``(N, C)`` key vectors, every location of every image (all are candidates).
    - ``target``: ``(M,)`` long, index into ``k`` of each query's positive.

    Output: ``(M,)`` per-query losses ``logsumexp_n(q.k_n / tau) - q.k_target / tau``.

    Only ``[q / tau, -shift]``, ``[k, 1]``, ``target`` and the per-query logsumexp are saved
    (O((M + N) C)); backward rebuilds each chunk's softmax P and forms ``dL/dlogits = g (P - Y)``,
    giving ``dq = g (P - Y) k / tau`` and ``dk += (P - Y)^T (g q / tau)``.

    The per-block elementwise passes cost about as much as the GEMM here (C is small), so two
    are folded into the GEMM by one extra column: ``[q/tau, -s] . [k, 1] = q.k/tau - s``. In backward
    ``s`` is the saved logsumexp, so one ``exp_`` turns the block into P. In forward ``s`` is the
    Cauchy-Schwarz bound ``max|q| max|k| / tau`` >= every logit, which can stand in for the row max of
    a stable logsumexp as long as ``exp(-2 s)`` cannot underflow; otherwise (tiny tau) the row max is
    taken as usual.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, target: torch.Tensor, temperature: float, chunk: int):
        # autocast would silently run the GEMMs in half precision; the logits reach 1/tau in magnitude
        # and the logsumexp runs over ~1e5 terms, so keep the dtype we were given
        with torch.autocast(device_type=q.device.type, enabled=False):
            m, c = q.shape
            qs = q / temperature
            bound = float(qs.norm(dim=1).max()) * float(k.norm(dim=1).max()) if m else 0.0
            use_bound = 2.0 * bound <= _SAFE_EXP_RANGE.get(q.dtype, 0.0)
            shift = bound if use_bound else 0.0
            qa = torch.cat([qs, qs.new_full((m, 1), -shift)], dim=1)  # (M, C+1)
            ka = torch.cat([k, k.new_ones(k.shape[0], 1)], dim=1)  # (N, C+1)
            lse = q.new_empty(m)
            pos = q.new_empty(m)
            for start in range(0, m, chunk):
                stop = min(start + chunk, m)
                z = torch.mm(qa[start:stop], ka.t())  # (c, N) logits - shift: the only large buffer
                pos[start:stop] = z.gather(1, target[start:stop, None]).squeeze(1)
                if use_bound:
                    lse[start:stop] = z.exp_().sum(dim=1).log_()
                else:
                    row_max = z.amax(dim=1, keepdim=True)
                    lse[start:stop] = z.sub_(row_max).exp_().sum(dim=1).log_().add_(row_max.squeeze(1))
                del z
            lse.add_(shift)
            pos.add_(shift)
        ctx.save_for_backward(qs, ka, target, lse)
        ctx.temperature = temperature
        ctx.chunk = chunk
        return lse - pos

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        qs, ka, target, lse = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_q or need_k):
            return None, None, None, None, None
        with torch.autocast(device_type=qs.device.type, enabled=False):
            m, c = qs.shape
            grad_loss = grad_loss.to(qs.dtype)
            k = ka[:, :c]  # strided view, BLAS takes it without a copy
            qa = torch.cat([qs, -lse[:, None]], dim=1)  # [q/tau, -lse] . [k, 1] = logits - lse
            dq = torch.empty_like(qs) if need_q else None
            dk = torch.zeros_like(k, memory_format=torch.contiguous_format) if need_k else None
            for start in range(0, m, ctx.chunk):
                stop = min(start + ctx.chunk, m)
                g = grad_loss[start:stop, None]  # (c, 1)
                p = torch.mm(qa[start:stop], ka.t()).exp_()  # (c, N) softmax P of the chunk
                rows = torch.arange(stop - start, device=p.device)
                p[rows, target[start:stop]] -= 1.0  # P - Y
                # the upstream grad is a per-row scale; apply it to the thin (c, C) factors, not to P
                if need_q:
                    dq[start:stop] = torch.mm(p, k).mul_(g / ctx.temperature)
                if need_k:
                    dk.addmm_(p.t(), qs[start:stop] * g)
                del p
        return dq, dk, None, None, None


def dense_info_nce(
    q: torch.Tensor, k: torch.Tensor, target: torch.Tensor, temperature: float, chunk_size: int | None = None
) -> torch.Tensor:
    """Per-query InfoNCE losses over all keys, chunked (see :class:`_ChunkedDenseInfoNCE`).

    Args:
        q: ``(M, C)`` unit query vectors.
        k: ``(N, C)`` unit key vectors.
        target: ``(M,)`` long index into ``k`` of each query's positive (all must be valid).
        temperature: softmax temperature tau.
        chunk_size: query rows per chunk; ``None`` picks :func:`auto_chunk_size`.

    Returns:
        ``(M,)`` losses, differentiable wrt ``q`` and ``k``.
    """
    chunk = auto_chunk_size(k.shape[0], k.dtype) if chunk_size is None else int(chunk_size)
    return _ChunkedDenseInfoNCE.apply(q, k, target, float(temperature), chunk)


class DenseLocalContrastiveLoss(_Loss):
    """Dense local contrastive (InfoNCE) loss between corresponding locations of two views.

    One direction (query -> key); the training step symmetrises by also calling it with the views
    swapped. Each valid query location is classified among all ``B * S`` key locations of the batch
    (S = number of spatial locations per map): its matched location is the positive, every other
    location of the same image and every location of the other images are negatives.

    Args:
        temperature: softmax temperature tau (> 0).
        chunk_size: query locations processed per chunk; ``None`` keeps each chunk's ``(chunk, B*S)``
            logits block under ~64 MiB. Only memory and speed depend on it, not the value.
        reduction: ``"mean"`` (over valid query locations), ``"sum"``, or ``"none"`` (``(B, *spatial)``
            per-location losses, 0 where a location has no correspondence).
        gather: under ``torch.distributed`` with more than one rank, classify each query among the key
            locations of *all* ranks (``world_size * B * S`` keys, like one process with the global
            batch); ignored without a process group. Every rank must hold the same ``B * S``.
            The gathered keys keep their gradient (``torch.distributed.nn.functional.all_gather``
            sums the gradients of a rank's keys over all ranks in backward), so with DDP's gradient
            averaging the step is that of the global-batch loss (up to BatchNorm, whose statistics
            stay per rank). Trade-off: more (and harder) negatives and the single-GPU loss, at the
            cost of one all-gather of ``world_size * B * S * C`` floats per direction and step each
            way, and a ``world_size``-times wider logits matrix. Off (default): each rank contrasts
            only its own keys, no communication (the paper's per-GPU batch setting). The reduction
            runs over this rank's queries either way.
    """

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None, reduction: str = "mean",
                 gather: bool = False) -> None:
        super().__init__(reduction=reduction)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
        self.temperature = float(temperature)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.gather = bool(gather)

    def forward(self, query: torch.Tensor, key: torch.Tensor, match: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: ``(B, C, H, W)`` query-view projections (any number of spatial dims); not normalised.
            key: key-view projections, same shape as ``query``.
            match: ``(B, H, W)`` or ``(B, H*W)`` integer tensor; ``match[b, i]`` is the row-major flat
                index into the key map of image ``b`` that query location ``i`` corresponds to, or -1
                if it has none. ``None`` means the identity (location i <-> location i).

        Returns:
            scalar for ``"mean"`` / ``"sum"``; ``(B, *spatial)`` for ``"none"``. With no valid location
            the result is zero but still attached to the graph, so ``backward()`` works.
        """
        if query.shape != key.shape:
            raise ValueError(
                f"query and key must have the same shape (B, C, H, W), got {tuple(query.shape)} and {tuple(key.shape)}"
            )
        if query.ndim < 3:
            raise ValueError(f"expected (B, C, H, W) feature maps, got shape {tuple(query.shape)}")
        b, c = query.shape[:2]
        spatial = tuple(query.shape[2:])
        s = math.prod(spatial)
        target = self._global_targets(match, b, spatial, query.device)  # (B*S,)

        # (B, C, *spatial) -> (B*S, C) unit vectors; normalisation stays in ordinary autograd
        work_dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
        q = F.normalize(query.to(work_dtype).flatten(2).transpose(1, 2).reshape(b * s, c), dim=1)
        k = F.normalize(key.to(work_dtype).flatten(2).transpose(1, 2).reshape(b * s, c), dim=1)
        if self.gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank gathers before anything can return early: the collectives must match up
            k = torch.cat(dist_fn.all_gather(k), dim=0)  # (world * B * S, C); this rank's rows at rank * B * S
            target = torch.where(target >= 0, target + dist.get_rank() * b * s, target)

        valid = (target >= 0).nonzero().squeeze(1)  # (M,)
        if valid.numel() == 0:
            # k (gathered or not) stays in the graph, so a rank without correspondences still joins
            # the gather's backward collective
            zero = query.sum() * 0 + key.sum() * 0 + k.sum() * 0
            return zero.expand(b, *spatial) if self.reduction == "none" else zero
        if valid.numel() < b * s:
            q, target = q[valid], target[valid]  # only queries with a positive cost compute
        per_query = dense_info_nce(q, k, target, self.temperature, self.chunk_size)  # (M,)

        if self.reduction == "mean":
            return per_query.mean()
        if self.reduction == "sum":
            return per_query.sum()
        return per_query.new_zeros(b * s).index_copy(0, valid, per_query).reshape(b, *spatial)

    @staticmethod
    def _global_targets(match: torch.Tensor | None, b: int, spatial: tuple, device: torch.device) -> torch.Tensor:
        """Turn per-image key indices ``(B, ...)`` into indices into the batch's ``B*S`` keys (-1 kept)."""
        s = math.prod(spatial)
        offsets = torch.arange(b, device=device).mul_(s)[:, None]  # (B, 1): image b's keys start at b*S
        if match is None:
            return (torch.arange(s, device=device)[None, :] + offsets).reshape(-1)
        if match.dtype.is_floating_point or match.dtype == torch.bool or match.is_complex():
            raise ValueError(f"match must be an integer tensor, got dtype {match.dtype}")
        if tuple(match.shape) not in ((b, *spatial), (b, s)):
            raise ValueError(
                f"match must have shape {(b, *spatial)} or {(b, s)} for features of spatial size {spatial}, "
                f"got {tuple(match.shape)}"
            )
        match = match.to(device=device, dtype=torch.long).reshape(b, s)
        if bool(((match < -1) | (match >= s)).any()):
            raise ValueError(f"match values must be -1 or in [0, {s}), got range [{int(match.min())}, {int(match.max())}]")
        return torch.where(match >= 0, match + offsets, match).reshape(-1)
