"""The fine-tuning / inference network: one shared encoder, one or two decoder streams.

Stream 1 = perturbation 1 + D1 (transposed-conv decoder), stream 2 = perturbation 2 + D2 (bilinear
decoder) [paper: shared encoder, "two different decoder architectures", "two perturbed branches
with the same input"]. ``num_streams=1`` is the plain U-Net of the supervised baseline, with the
same parameter names for the encoder and decoder 1, so checkpoints load across the two.

``forward`` returns exactly one tensor on every path, so DDP, ``verify_net_in_out`` and
``ckpt_export`` (TorchScript) work unchanged:

- training mode: the streams' logits concatenated on channels, ``(B, S*C, *spatial)``, stream 1
  first; :func:`split_streams` cuts it back into ``S`` tensors of ``(B, C, *spatial)``.
- eval mode: log-probabilities ``(B, C, *spatial)`` of the ensemble, ``log(mean_s softmax(z_s))``
  (or of stream ``eval_stream`` alone). Softmax of log-probabilities is the probabilities
  themselves and argmax is unchanged, so MONAI's ``Activations(softmax=True)`` / ``AsDiscrete(argmax=True)``
  post-processing and the bundle's ``softmax`` output description stay correct.
"""

# No ``from __future__ import annotations``: TorchScript must read the class-level
# ``eval_stream: Optional[int]`` annotation as a real type, not a string.
import math
from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn

from ..utils.classes import NUM_CLASSES
from .decoders import UNetDecoder
from .encoder import DEFAULT_ACT, DEFAULT_FEATURES, DEFAULT_NORM, UNetEncoder
from .perturbations import build_perturbation

__all__ = ["DualDecoderUNet", "split_streams", "stream_disagreement", "DECODER_UPSAMPLE", "DECODER_WIDTH"]

#: Upsampling mode of decoder ``s`` (1-based): D1 transposed conv, D2 bilinear [docs/METHOD.md §2].
DECODER_UPSAMPLE = {1: "deconv", 2: "nontrainable"}
#: Width of decoder ``s`` relative to the encoder's. ``(1.0, 0.5)`` (a half-width D2) makes the CPU
#: fine-tuning step clearly cheaper but validated lower on phantoms (docs/history/BENCHMARKS.md, "Step
#: and inference speed"), so the default keeps both at full width.
DECODER_WIDTH = {1: 1.0, 2: 1.0}


def split_streams(t: torch.Tensor, num_streams: int) -> List[torch.Tensor]:
    """Cut a training-mode output ``(B, S*C, *spatial)`` into ``S`` logits ``(B, C, *spatial)``,
    stream 1 first. The pieces are views (no copy), so gradients flow back into ``t``."""
    if t.shape[1] % num_streams != 0:
        raise ValueError(f"channel dim {t.shape[1]} is not divisible by num_streams={num_streams}.")
    return list(torch.chunk(t, num_streams, dim=1))


def stream_disagreement(probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel disagreement of the streams, an uncertainty map [docs/METHOD.md §2].

    The total-variation distance ``0.5 * sum_c |p_s - p_t|`` between the class distributions of
    two streams, averaged over all stream pairs ``s < t``. It is 0 where the streams agree exactly
    and 1 where they put all their mass on different classes; unlike "argmax differs" it also sees
    disagreement in confidence. With one stream it is 0 everywhere.

    Args:
        probs: ``(B, S, C, *spatial)`` as returned by :meth:`DualDecoderUNet.stream_probabilities`.

    Returns:
        ``(B, 1, *spatial)`` in ``[0, 1]``.
    """
    num_streams = probs.shape[1]
    out = torch.zeros_like(probs[:, 0, :1])
    pairs = 0
    for s in range(num_streams):
        for t in range(s + 1, num_streams):
            out = out + 0.5 * (probs[:, s] - probs[:, t]).abs().sum(dim=1, keepdim=True)
            pairs += 1
    return out / max(pairs, 1)


class DualDecoderUNet(nn.Module):
    """Shared :class:`UNetEncoder` with one or two :class:`UNetDecoder` streams.

    Attributes:
        encoder: the shared encoder; its state_dict is the one :class:`PretrainNetwork` saves.
        decoder1: D1, ``upsample="deconv"``.
        decoder2: D2, ``upsample="nontrainable"`` (bilinear); ``None`` when ``num_streams=1``, so it
            has no state_dict keys.
        perturb1, perturb2: the perturbation applied to every skip feature decoder 1 / 2 receives,
            in training mode only (``perturb2`` is ``None`` when ``num_streams=1``).
        eval_stream: ``None`` for the ensemble at eval time, or ``1``/``2`` for one stream; it may be
            changed after construction (also on a scripted model).

    Args:
        spatial_dims: 2 for the method.
        in_channels: image channels.
        out_channels: classes (:data:`~ideal_monai.utils.classes.NUM_CLASSES`: background, RV, MYO, LV).
        features: encoder/decoder widths, shallow to deep.
        num_streams: 2 for IDEAL, 1 for the plain U-Net baseline.
        perturbations: one entry per stream, each ``"noise"``, ``"dropout"``, ``"none"`` or a module
            (see :func:`~ideal_monai.networks.perturbations.build_perturbation`). ``None`` means
            ``("noise", "dropout")`` for two streams [docs/METHOD.md §2] and ``("none",)`` for one, so the
            baseline is an unperturbed U-Net.
        eval_stream: see the attribute; 1-based, matching ``decoder1``/``decoder2``.
        act, norm, bias, dropout: passed to the encoder and both decoders.
        decoder_upsample: upsampling mode per stream; defaults to :data:`DECODER_UPSAMPLE`.
        decoder_width: width factor per stream (see ``UNetDecoder(width_factor=...)``); defaults to
            :data:`DECODER_WIDTH`, i.e. ``(1.0, 1.0)``; ``(1.0, 0.5)`` is the faster half-width D2.

    Shapes: input ``(B, in_channels, *spatial)``; output ``(B, S*out_channels, *spatial)`` logits in
    training mode, ``(B, out_channels, *spatial)`` log-probabilities in eval mode.
    """

    eval_stream: Optional[int]

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = NUM_CLASSES,
        features: Sequence[int] = DEFAULT_FEATURES,
        num_streams: int = 2,
        perturbations: Sequence[str | nn.Module | None] | None = None,
        eval_stream: int | None = None,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        bias: bool = False,
        dropout: float | tuple = 0.0,
        decoder_upsample: Sequence[str] | None = None,
        decoder_width: Sequence[float] | None = None,
    ):
        super().__init__()
        if num_streams not in (1, 2):
            raise ValueError(f"num_streams must be 1 or 2, got {num_streams}.")
        if perturbations is None:
            perturbations = ("noise", "dropout") if num_streams == 2 else ("none",)
        if isinstance(perturbations, (str, nn.Module)):
            perturbations = (perturbations,)
        perturbations = tuple(perturbations)
        if len(perturbations) != num_streams:
            raise ValueError(f"perturbations needs one entry per stream ({num_streams}), got {perturbations}.")
        if decoder_upsample is None:
            decoder_upsample = tuple(DECODER_UPSAMPLE[s + 1] for s in range(num_streams))
        decoder_upsample = tuple(decoder_upsample)
        if len(decoder_upsample) != num_streams:
            raise ValueError(f"decoder_upsample needs one entry per stream ({num_streams}), got {decoder_upsample}.")
        if decoder_width is None:
            decoder_width = tuple(DECODER_WIDTH[s + 1] for s in range(num_streams))
        decoder_width = tuple(float(w) for w in decoder_width)
        if len(decoder_width) != num_streams:
            raise ValueError(f"decoder_width needs one entry per stream ({num_streams}), got {decoder_width}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = tuple(int(f) for f in features)
        self.num_streams = num_streams
        self._log_num_streams = math.log(num_streams)

        self.encoder = UNetEncoder(spatial_dims, in_channels, self.features, act, norm, bias, dropout)
        dec_kwargs = dict(spatial_dims=spatial_dims, features=self.features, out_channels=out_channels,
                          act=act, norm=norm, bias=bias, dropout=dropout)
        self.decoder1 = UNetDecoder(upsample=decoder_upsample[0], width_factor=decoder_width[0], **dec_kwargs)
        self.perturb1 = build_perturbation(perturbations[0])
        # None (not an empty module) keeps decoder2.* out of the one-stream state_dict; TorchScript
        # compiles the ``is not None`` branches away.
        self.decoder2: Optional[UNetDecoder] = None
        self.perturb2: Optional[nn.Module] = None
        if num_streams == 2:
            self.decoder2 = UNetDecoder(upsample=decoder_upsample[1], width_factor=decoder_width[1], **dec_kwargs)
            self.perturb2 = build_perturbation(perturbations[1])
        self.eval_stream = None
        self.set_eval_stream(eval_stream)

    def set_eval_stream(self, eval_stream: int | None) -> None:
        """Choose the eval-mode output: ``None`` = ensemble of all streams, ``k`` = stream ``k`` (1-based)."""
        if eval_stream is not None and not 1 <= int(eval_stream) <= self.num_streams:
            raise ValueError(f"eval_stream must be None or in 1..{self.num_streams} (1-based), got {eval_stream}.")
        self.eval_stream = None if eval_stream is None else int(eval_stream)

    def _perturbed(self, skips: List[torch.Tensor], stream: int) -> List[torch.Tensor]:
        """Apply stream ``stream``'s perturbation to every skip feature (identity in eval mode)."""
        out: List[torch.Tensor] = []
        if stream == 1:
            for f in skips:
                out.append(self.perturb1(f))
        else:
            perturb2 = self.perturb2
            assert perturb2 is not None
            for f in skips:
                out.append(perturb2(f))
        return out

    def _stream_logits(self, skips: List[torch.Tensor], stream: int, perturb: bool) -> torch.Tensor:
        """Logits ``(B, C, *spatial)`` of stream ``stream`` (1-based) from the encoder's skips."""
        feats = self._perturbed(skips, stream) if perturb else skips
        if stream == 1:
            return self.decoder1(feats)
        decoder2 = self.decoder2
        assert decoder2 is not None
        return decoder2(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            training: concatenated stream logits ``(B, S*out_channels, *spatial)``, stream 1 first,
            each stream's decoder seeing its own perturbation of the shared skip features.
            eval: float32 log-probabilities ``(B, out_channels, *spatial)`` of the ensemble (or of
            ``eval_stream``), also under autocast.
        """
        skips = self.encoder(x)
        if self.training:
            logits = [self._stream_logits(skips, s, True) for s in range(1, self.num_streams + 1)]
            return torch.cat(logits, dim=1)
        stream = self.eval_stream
        if stream is not None:
            return torch.log_softmax(self._stream_logits(skips, stream, False).float(), dim=1)
        # float32 log-probabilities even under autocast: inference buffers and argmax stay exact.
        log_probs = [torch.log_softmax(self._stream_logits(skips, s, False).float(), dim=1)
                     for s in range(1, self.num_streams + 1)]
        # log(mean_s p_s) = logsumexp_s(log p_s) - log S: no exp/log round trip, no log(0).
        return torch.logsumexp(torch.stack(log_probs, dim=0), dim=0) - self._log_num_streams

    @torch.jit.export
    def stream_logits(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per-stream logits, each ``(B, out_channels, *spatial)``, stream 1 first; perturbed only in
        training mode (same as :meth:`forward`, without concatenating)."""
        skips = self.encoder(x)
        return [self._stream_logits(skips, s, self.training) for s in range(1, self.num_streams + 1)]

    @torch.jit.export
    def stream_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Every stream's softmax, ``(B, S, out_channels, *spatial)``; feed it to :func:`stream_disagreement`
        for an uncertainty map. Call in eval mode for unperturbed, deterministic probabilities."""
        return torch.stack([torch.softmax(z, dim=1) for z in self.stream_logits(x)], dim=1)
