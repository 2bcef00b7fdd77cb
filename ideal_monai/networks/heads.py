"""Projection heads for pre-training: dense (IDEAL) and global (SimCLR baseline).

Both return L2-normalised embeddings, so a dot product between two outputs is their cosine
similarity and the contrastive losses only divide by the temperature.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv

__all__ = ["DenseProjectionHead", "GlobalProjectionHead"]


class DenseProjectionHead(nn.Module):
    """Per-location projection G [paper: "a 1x1 convolution layer instead of a traditional MLP"].

    ``num_layers - 1`` blocks of 1x1 conv -> BatchNorm -> ReLU, then a 1x1 conv to ``out_channels``,
    then L2 normalisation over channels at every location. There is no pooling, so the head is
    an MLP applied independently to each feature vector and the output keeps the input's grid.

    Args:
        spatial_dims: spatial dimensions of the feature map (2 for the method).
        in_channels: channels of the encoder level it projects (256 for the deepest default level).
        hidden_channels: width of the hidden 1x1 convs; ``None`` means ``in_channels``.
        out_channels: embedding size (128 by default [docs/METHOD.md §2]).
        num_layers: number of 1x1 convs; 1 is a single linear projection.

    Shapes: ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)``, unit norm along dim 1.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 256,
        hidden_channels: int | None = None,
        out_channels: int = 128,
        num_layers: int = 2,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        hidden = in_channels if hidden_channels is None else hidden_channels
        layers: list[nn.Module] = []
        chns = in_channels
        for _ in range(num_layers - 1):
            # bias=False: the BatchNorm right after the conv has its own shift.
            layers.append(Convolution(spatial_dims, chns, hidden, kernel_size=1, act="relu", norm="batch", bias=False))
            chns = hidden
        layers.append(Conv["conv", spatial_dims](chns, out_channels, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> float32 unit vectors ``(B, out_channels, *spatial)``.

        Normalised in float32 even under autocast: the contrastive loss divides their dot products
        by a temperature of 0.1, which would magnify bfloat16's rounding of the norm tenfold."""
        return F.normalize(self.proj(x).float(), dim=1)


class GlobalProjectionHead(nn.Module):
    """Image-level projection for the SimCLR ("Global CL") baseline.

    Global average pooling over all spatial axes -> Linear -> BatchNorm1d (optional) -> ReLU ->
    Linear, then L2 normalisation (SimCLR's loss uses cosine similarity, so normalising here changes
    nothing but lets both losses share the dot-product convention).

    Args:
        in_channels: channels of the pooled feature map.
        hidden_channels: MLP hidden width.
        out_channels: embedding size.
        batch_norm: BatchNorm1d after the hidden layer (as in SimCLR v2); it needs a batch of >= 2
            in training mode.

    Shapes: ``(B, in_channels, *spatial) -> (B, out_channels)``, unit norm along dim 1.
    """

    def __init__(self, in_channels: int = 256, hidden_channels: int = 256, out_channels: int = 128,
                 batch_norm: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels, bias=not batch_norm),
            nn.BatchNorm1d(hidden_channels) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, out_channels),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> unit vectors ``(B, out_channels)``."""
        pooled = x.flatten(2).mean(dim=2)
        return F.normalize(self.mlp(pooled).float(), dim=1)
