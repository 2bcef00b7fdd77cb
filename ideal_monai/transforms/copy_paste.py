"""Bidirectional copy-paste mixing of a labeled and an unlabeled batch (BCP, Bai et al., CVPR 2023).

A box of ``box_fraction`` of the image side is cut from one image and pasted into another, in both
directions between the labeled and the unlabeled batch::

    labeled-outside mix:   x_l[j] outside the box, x_u[j mod B_u] inside   (B_l images)
    unlabeled-outside mix: x_u[i] outside the box, x_l[i mod B_l] inside   (B_u images)

The targets are mixed the same way: ground truth where the pixel came from a labeled image, the
teacher's pseudo-label where it came from an unlabeled one. The network then learns at every step
that a labeled heart and an unlabeled one belong to one distribution, which the BCP paper's ablation
credits with most of its gain at 3 labeled ACDC patients; the recipe's keys are in bundle/docs/README.md.

It works on batches already on the device (the pseudo-labels only exist inside the training step),
so it is a callable of tensors, not a dictionary transform. Its randomness is torch's global
generator, which :class:`~ideal_monai.handlers.EpochSeeder` seeds per epoch: a resumed run mixes
exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["BidirectionalCopyPaste", "MixedBatch", "random_box_masks", "side_by_side"]


class MixedBatch(NamedTuple):
    """The output of :class:`BidirectionalCopyPaste`, ``B = B_l + B_u`` mixed slices.

    Attributes:
        image: ``(B, C, H, W)`` the mixed images, the ``B_l`` labeled-outside mixes first.
        target: ``(B, 1, H, W)`` long, ground truth where ``from_labeled`` else the pseudo-label.
        from_labeled: ``(B, 1, H, W)`` bool, True where the pixel came from a labeled image.
        valid: ``(B, 1, H, W)`` bool, False where the pseudo-label was not confident enough (labeled
            pixels are always valid).
    """

    image: torch.Tensor
    target: torch.Tensor
    from_labeled: torch.Tensor
    valid: torch.Tensor


def side_by_side(x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, pseudo_u: torch.Tensor,
                 valid_u: torch.Tensor) -> MixedBatch:
    """The unmixed batch as a :class:`MixedBatch`: the ``B_l`` labeled slices, then the ``B_u`` unlabeled ones
    (arguments as for :meth:`BidirectionalCopyPaste.__call__`, ``valid_u`` required)."""
    labeled = torch.ones_like(y_l, dtype=torch.bool)
    return MixedBatch(torch.cat([x_l, x_u]), torch.cat([y_l.long(), pseudo_u.long()]),
                      torch.cat([labeled, torch.zeros_like(valid_u)]), torch.cat([labeled, valid_u]))


def random_box_masks(n: int, height: int, width: int, box_fraction: float, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 1, H, W)`` bool masks, each True inside one box of ``round(box_fraction * side)`` per axis
    placed uniformly inside the image (one independent box per mask)."""
    bh = min(height, max(1, round(box_fraction * height)))
    bw = min(width, max(1, round(box_fraction * width)))
    top = torch.randint(0, height - bh + 1, (n,), generator=generator).to(device)
    left = torch.randint(0, width - bw + 1, (n,), generator=generator).to(device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + bh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + bw).view(n, 1, 1)))
    return inside.unsqueeze(1)


class BidirectionalCopyPaste:
    """Mix a labeled batch with an unlabeled one in both directions (see the module docstring).

    Args:
        box_fraction: side of the pasted box relative to the image side, in ``(0, 1)``; BCP uses 2/3.
    """

    def __init__(self, box_fraction: float = 2.0 / 3.0) -> None:
        if isinstance(box_fraction, bool) or not 0.0 < float(box_fraction) < 1.0:
            raise ValueError(f"box_fraction must be in (0, 1), got {box_fraction!r}")
        self.box_fraction = float(box_fraction)

    def __call__(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, pseudo_u: torch.Tensor,
                 valid_u: torch.Tensor | None = None) -> MixedBatch:
        """
        Args:
            x_l: ``(B_l, C, H, W)`` labeled images.
            y_l: ``(B_l, 1, H, W)`` their labels (any integer or float dtype holding class indices).
            x_u: ``(B_u, C, H, W)`` unlabeled images.
            pseudo_u: ``(B_u, 1, H, W)`` their pseudo-labels.
            valid_u: optional ``(B_u, 1, H, W)`` bool, where ``pseudo_u`` may be trusted.
        """
        if x_l.ndim != 4 or x_u.ndim != 4 or x_l.shape[1:] != x_u.shape[1:]:
            raise ValueError(f"expected (B, C, H, W) batches of one slice shape, got {tuple(x_l.shape)} and "
                             f"{tuple(x_u.shape)}")
        n_l, n_u = x_l.shape[0], x_u.shape[0]
        if n_l == 0 or n_u == 0:
            raise ValueError("copy-paste needs at least one labeled and one unlabeled slice")
        h, w = x_l.shape[-2:]
        for name, t, n in (("y_l", y_l, n_l), ("pseudo_u", pseudo_u, n_u)):
            if t.shape != (n, 1, h, w):
                raise ValueError(f"{name} must be ({n}, 1, {h}, {w}), got {tuple(t.shape)}")
        y_l = y_l.long()
        pseudo_u = pseudo_u.long()
        if valid_u is None:
            valid_u = torch.ones_like(pseudo_u, dtype=torch.bool)
        device = x_l.device
        # Partners cycle when the batches differ in size (the CPU profile has 12 labeled, 4 unlabeled).
        u_for_l = torch.arange(n_l, device=device) % n_u
        l_for_u = torch.arange(n_u, device=device) % n_l
        box_l = random_box_masks(n_l, h, w, self.box_fraction, device)  # unlabeled content inside
        box_u = random_box_masks(n_u, h, w, self.box_fraction, device)  # labeled content inside

        image = torch.cat([torch.where(box_l, x_u[u_for_l], x_l), torch.where(box_u, x_l[l_for_u], x_u)])
        target = torch.cat([torch.where(box_l, pseudo_u[u_for_l], y_l), torch.where(box_u, y_l[l_for_u], pseudo_u)])
        from_labeled = torch.cat([~box_l, box_u])
        valid = torch.cat([~box_l | valid_u[u_for_l], box_u | valid_u])
        return MixedBatch(image, target, from_labeled, valid)
