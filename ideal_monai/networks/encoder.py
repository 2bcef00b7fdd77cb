"""The shared 2D U-Net encoder E (docs/METHOD.md §2; sources in bundle/docs/README.md).

Built from MONAI's ``BasicUNet`` blocks: one ``TwoConv`` at full resolution, then one ``Down``
(2x max-pool + ``TwoConv``) per further level. It returns every level's features so that both the
pre-training heads and the two decoders can use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
import torch.nn as nn
from monai.networks.nets.basic_unet import Down, TwoConv

__all__ = ["UNetEncoder", "DEFAULT_FEATURES", "DEFAULT_ACT", "DEFAULT_NORM"]

#: Channel widths of the five encoder levels, shallow to deep [docs/METHOD.md §2].
DEFAULT_FEATURES = (16, 32, 64, 128, 256)
#: MONAI ``BasicUNet``'s activation; in-place is safe because no block reads its input after the activation.
DEFAULT_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
#: Batch norm: the dense projection head and the fine-tuning batches (24 slices) are both BN-sized.
DEFAULT_NORM = ("batch", {"affine": True})


class UNetEncoder(nn.Module):
    """2D/3D U-Net encoder returning the skip features of every level.

    Level 0 is a ``TwoConv`` at input resolution; level ``l >= 1`` is a ``Down`` block, so level ``l``
    has stride ``2**l``. With the default five widths and a ``(B, 1, H, W)`` input the outputs are
    ``(B, 16, H, W)``, ``(B, 32, H/2, W/2)``, ``(B, 64, H/4, W/4)``, ``(B, 128, H/8, W/8)`` and
    ``(B, 256, H/16, W/16)``.

    Spatial size: any size of at least ``2**(levels-1)`` per axis is accepted (the max-pools floor and
    MONAI's ``UpCat`` pads the decoder back by one pixel). Only multiples of ``2**(levels-1)`` (16 by
    default) keep feature location ``i`` exactly aligned with input pixels ``i*stride ..``, which the
    dense contrastive loss relies on, so the pipeline's patches (256x256) are multiples of 16. A size
    below ``2**(levels-1)`` raises ``ValueError`` instead of failing deep inside a pooling layer.

    Args:
        spatial_dims: 2 for slices (the method), 3 also works.
        in_channels: image channels.
        features: channel width of each level, shallow to deep; at least two levels.
        act: activation name/args, as for MONAI ``Convolution``.
        norm: normalisation name/args, as for MONAI ``Convolution``.
        bias: conv bias. Off by default because every conv is followed by the norm, which cancels it.
        dropout: dropout rate inside the conv blocks.

    The state_dict keys are ``conv_0.*`` and ``downs.<l-1>.*``; they are the same whether the encoder
    stands alone, sits in :class:`~ideal_monai.networks.PretrainNetwork` or in
    :class:`~ideal_monai.networks.DualDecoderUNet` (under the ``encoder.`` prefix).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        bias: bool = False,
        dropout: float | tuple = 0.0,
    ):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"UNetEncoder needs at least two levels, got features={features}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.features = features
        self.num_levels = len(features)
        # The smallest spatial size that survives the (levels - 1) max-pools.
        self.min_size = 2 ** (len(features) - 1)
        self.conv_0 = TwoConv(spatial_dims, in_channels, features[0], act, norm, bias, dropout)
        self.downs = nn.ModuleList(
            [Down(spatial_dims, features[i], features[i + 1], act, norm, bias, dropout)
             for i in range(len(features) - 1)]
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            one tensor per level, shallow to deep: level ``l`` is
            ``(B, features[l], *[s // 2**l for s in spatial])``.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"UNetEncoder expects a (B, C, *spatial) tensor with {self.spatial_dims} spatial "
                             f"dims, got shape {x.shape}.")
        for s in x.shape[2:]:
            if s < self.min_size:
                raise ValueError(f"UNetEncoder input spatial size {x.shape[2:]} is smaller than {self.min_size} "
                                 f"(2**(levels-1)) on some axis; pad the image first.")
        x = self.conv_0(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        return skips
