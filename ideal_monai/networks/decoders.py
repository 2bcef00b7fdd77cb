"""U-Net decoders for the two fine-tuning streams (docs/METHOD.md §2).

[paper: "two different decoder architectures", shared encoder]. Both are chains of MONAI's
``UpCat`` blocks (upsample, concatenate the skip, ``TwoConv``) followed by a 1x1 conv to logits;
they differ in how they upsample:

- D1, ``upsample="deconv"``: a learned 2x2 stride-2 transposed conv (halving channels).
- D2, ``upsample="nontrainable"``: a 1x1 conv (halving channels) then bilinear interpolation. The
  1x1 conv and the interpolation are both linear and act on different axes, so this equals
  "bilinear upsampling + conv" at a quarter of the cost.

D1 can produce checkerboard patterns and sharper edges, D2 is smooth; their errors differ, which is
what bidirectional consistency needs.

``width_factor`` scales the decoder's own widths (not the encoder skips it concatenates).
``DualDecoderUNet(decoder_width=(1.0, 0.5))`` builds a half-width D2, which makes the CPU
fine-tuning step cheaper but validated lower on phantoms (docs/history/BENCHMARKS.md, "Step and
inference speed"), so both decoders are full width by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import UpCat

from .encoder import DEFAULT_ACT, DEFAULT_FEATURES, DEFAULT_NORM

__all__ = ["UNetDecoder", "UPSAMPLE_MODES"]


class _UpCat(UpCat):
    """MONAI's ``UpCat`` that pads the upsampled features only when their size differs from the skip's.

    ``UpCat`` always calls ``F.pad(x, sp, "replicate")``, a copy even when ``sp`` is all zeros (patches
    are multiples of 16, so it always is here). Under CPU bfloat16 autocast that copy is made in
    float32 (replication padding is on autocast's float32 list), which then promotes the
    concatenation and the next convolution's input to float32 and back: at 256x256 this cost 20 % of
    a two-stream bf16 training step (docs/history/BENCHMARKS.md, "Precision"). Same parameters, same results.
    """

    def forward(self, x: torch.Tensor, x_e: Optional[torch.Tensor]):
        x_0 = self.upsample(x)
        if x_e is not None:
            if x_e.shape[2:] != x_0.shape[2:]:  # odd edge lengths after 2x max-pooling
                dimensions = len(x.shape) - 2
                sp = [0] * (dimensions * 2)
                for i in range(dimensions):
                    if x_e.shape[-i - 1] != x_0.shape[-i - 1]:
                        sp[i * 2 + 1] = 1
                x_0 = torch.nn.functional.pad(x_0, sp, "replicate")
            return self.convs(torch.cat([x_e, x_0], dim=1))
        return self.convs(x_0)

#: Upsampling modes of MONAI's ``UpSample`` that this decoder supports.
UPSAMPLE_MODES = ("deconv", "nontrainable", "pixelshuffle")


class UNetDecoder(nn.Module):
    """U-Net decoder taking all skip features of :class:`~ideal_monai.networks.UNetEncoder`.

    Level ``l`` (deep to shallow) upsamples by 2, concatenates skip ``l-1`` (``features[l-1]``
    channels) and applies ``TwoConv`` to ``widths[l-1]`` channels; a 1x1 conv maps the
    full-resolution ``widths[0]`` channels to logits. ``widths = round(width_factor * features)``.

    Args:
        spatial_dims: 2 for the method.
        features: the encoder's widths, shallow to deep (same tuple as the encoder's).
        out_channels: number of classes.
        upsample: ``"deconv"`` (D1), ``"nontrainable"`` (D2) or ``"pixelshuffle"``.
        act, norm, bias, dropout: as for the encoder.
        interp_mode: interpolation of the ``"nontrainable"`` mode; ``"linear"`` becomes bilinear in 2D.
        align_corners: interpolation corner convention of the ``"nontrainable"`` mode.
        width_factor: scale of the decoder's widths relative to ``features`` (1.0 = the encoder's).

    Shapes: ``[(B, features[l], *spatial / 2**l) for l]`` -> logits ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        features: Sequence[int] = DEFAULT_FEATURES,
        out_channels: int = 4,
        upsample: str = "deconv",
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        bias: bool = False,
        dropout: float | tuple = 0.0,
        interp_mode: str = "linear",
        align_corners: bool | None = False,
        width_factor: float = 1.0,
    ):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"UNetDecoder needs at least two levels, got features={features}.")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}.")
        if not width_factor > 0:
            raise ValueError(f"width_factor must be > 0, got {width_factor}.")
        widths = tuple(max(2, int(round(width_factor * f))) for f in features)
        self.features = features
        self.widths = widths
        self.width_factor = float(width_factor)
        self.upsample = upsample
        self.num_levels = len(features)
        # ups[0] goes from the deepest level (the encoder's, features[-1] wide) to the one above it;
        # ups[-1] ends at full resolution. UpCat halves its input channels while upsampling.
        in_chns = [features[-1]] + [widths[i] for i in range(len(features) - 2, 0, -1)]
        self.ups = nn.ModuleList(
            [
                _UpCat(spatial_dims, in_chns[k], features[i - 1], widths[i - 1], act, norm, bias, dropout,
                      upsample=upsample, interp_mode=interp_mode, align_corners=align_corners)
                for k, i in enumerate(range(len(features) - 1, 0, -1))
            ]
        )
        self.final_conv = Conv["conv", spatial_dims](widths[0], out_channels, kernel_size=1)

    def forward(self, skips: List[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            skips: encoder features, shallow to deep, as returned by ``UNetEncoder.forward``.

        Returns:
            logits ``(B, out_channels, *spatial)`` at the resolution of ``skips[0]``.
        """
        if len(skips) != self.num_levels:
            raise ValueError(f"UNetDecoder expects {self.num_levels} skip features, got {len(skips)}.")
        x = skips[-1]
        for i, up in enumerate(self.ups):
            x = up(x, skips[self.num_levels - 2 - i])
        return self.final_conv(x)
