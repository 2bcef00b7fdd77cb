"""The pre-training network: encoder E + dense projection head(s) G (+ optional global head).

Stage 1 trains this network with the dense local contrastive loss (and, for the "Global CL"
baseline, SimCLR on the global head); only :attr:`PretrainNetwork.encoder` is kept afterwards
and loaded into :attr:`DualDecoderUNet.encoder` for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .encoder import UNetEncoder
from .heads import DenseProjectionHead, GlobalProjectionHead

__all__ = ["PretrainNetwork", "DENSE_KEY", "GLOBAL_KEY", "FEATURES_KEY"]

#: Output key of the list of dense projections, one ``(B, D, h_l, w_l)`` per entry of ``dense_levels``.
DENSE_KEY = "dense"
#: Output key of the global projection ``(B, D)`` (present only with ``global_head=True``).
GLOBAL_KEY = "global"
#: Output key of the raw encoder features (all levels, shallow to deep), for losses that need them
#: (e.g. DenseCL-style correspondence from backbone similarity).
FEATURES_KEY = "features"


class PretrainNetwork(nn.Module):
    """Encoder with projection heads for self-supervised pre-training.

    Args:
        encoder: a :class:`UNetEncoder`, or a mapping of its constructor kwargs; ``None`` builds the
            default encoder.
        dense_levels: encoder levels to project densely, as indices into the encoder's level list
            (``-1`` = deepest, 256 channels at stride 16; ``(-1, -2)`` adds the 128-channel stride-8
            level [docs/METHOD.md §2 option]). Each level gets its own head. Empty disables the dense head.
        dense_head_kwargs: extra kwargs for every :class:`DenseProjectionHead` (``hidden_channels``,
            ``out_channels``, ``num_layers``); ``in_channels`` comes from the encoder.
        global_head: add a :class:`GlobalProjectionHead` on the deepest level (SimCLR baseline).
        global_head_kwargs: extra kwargs for it (``hidden_channels``, ``out_channels``, ``batch_norm``).

    ``forward(x)`` with ``x`` of shape ``(B, in_channels, H, W)`` returns a dict:

    - ``"dense"``: list of unit-norm projections, entry ``i`` is ``(B, D, H / 2**l, W / 2**l)`` for
      level ``l = dense_levels[i]`` (in the order given);
    - ``"global"``: ``(B, D_g)`` unit-norm projection, only when ``global_head=True``;
    - ``"features"``: the encoder's skip features (list, shallow to deep).
    """

    def __init__(
        self,
        encoder: UNetEncoder | Mapping[str, Any] | None = None,
        dense_levels: Sequence[int] = (-1,),
        dense_head_kwargs: Mapping[str, Any] | None = None,
        global_head: bool = False,
        global_head_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if encoder is None:
            encoder = UNetEncoder()
        elif isinstance(encoder, Mapping):
            encoder = UNetEncoder(**encoder)
        elif not isinstance(encoder, UNetEncoder):
            raise TypeError(f"encoder must be a UNetEncoder or its kwargs, got {type(encoder).__name__}.")
        self.encoder = encoder
        features = encoder.features
        levels = []
        for lvl in dense_levels:
            lvl = int(lvl)
            if not -len(features) <= lvl < len(features):
                raise ValueError(f"dense level {lvl} out of range for an encoder with {len(features)} levels.")
            levels.append(lvl % len(features))  # stored non-negative so (-1) and (4) mean the same level
        if len(set(levels)) != len(levels):
            raise ValueError(f"dense_levels has repeated levels: {tuple(dense_levels)}.")
        if not levels and not global_head:
            raise ValueError("PretrainNetwork needs at least one dense level or the global head.")
        self.dense_levels = tuple(levels)
        head_kwargs = dict(dense_head_kwargs or {})
        head_kwargs.pop("in_channels", None)
        head_kwargs.setdefault("spatial_dims", encoder.spatial_dims)
        self.dense_heads = nn.ModuleList(
            [DenseProjectionHead(in_channels=features[lvl], **head_kwargs) for lvl in self.dense_levels]
        )
        self.global_head = None
        if global_head:
            g_kwargs = dict(global_head_kwargs or {})
            g_kwargs.pop("in_channels", None)
            self.global_head = GlobalProjectionHead(in_channels=features[-1], **g_kwargs)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        """``(B, in_channels, H, W)`` -> ``{"dense": [...], "global": (B, D_g), "features": [...]}``
        (see the class docstring)."""
        feats = self.encoder(x)
        out: dict[str, Any] = {
            DENSE_KEY: [head(feats[lvl]) for head, lvl in zip(self.dense_heads, self.dense_levels)],
            FEATURES_KEY: feats,
        }
        if self.global_head is not None:
            out[GLOBAL_KEY] = self.global_head(feats[-1])
        return out

    def dense_strides(self) -> tuple[int, ...]:
        """Stride (input pixels per feature location) of each dense projection, e.g. ``(16,)``."""
        return tuple(2**lvl for lvl in self.dense_levels)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights, keyed exactly as ``DualDecoderUNet.encoder.load_state_dict`` expects
        (``conv_0.*``, ``downs.*``; no ``encoder.`` prefix). Tensors are detached CPU copies."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
