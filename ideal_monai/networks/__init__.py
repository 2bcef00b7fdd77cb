"""Networks of IDEAL (docs/METHOD.md §2; sources in bundle/docs/README.md).

- :class:`UNetEncoder`: the shared 5-level 2D U-Net encoder E, returning all skip features.
- :class:`DenseProjectionHead` (G, 1x1 convs, per-location unit vectors) and
  :class:`GlobalProjectionHead` (pooled MLP, SimCLR baseline).
- :class:`PretrainNetwork`: E + heads for stage 1.
- :class:`UNetDecoder`: D1 (transposed conv) / D2 (bilinear) decoders.
- :class:`FeatureNoise`, :class:`FeatureDropout`: the per-stream feature perturbations.
- :class:`DualDecoderUNet`: E + D1 (+ D2) for stage 2 and inference; :func:`split_streams`,
  :func:`stream_disagreement` for its outputs.
"""

from .decoders import UPSAMPLE_MODES, UNetDecoder
from .dual_decoder_unet import DECODER_UPSAMPLE, DualDecoderUNet, split_streams, stream_disagreement
from .encoder import DEFAULT_ACT, DEFAULT_FEATURES, DEFAULT_NORM, UNetEncoder
from .heads import DenseProjectionHead, GlobalProjectionHead
from .perturbations import PERTURBATIONS, FeatureDropout, FeatureNoise, build_perturbation
from .pretrain_network import DENSE_KEY, FEATURES_KEY, GLOBAL_KEY, PretrainNetwork

__all__ = [
    "UNetEncoder",
    "DEFAULT_FEATURES",
    "DEFAULT_ACT",
    "DEFAULT_NORM",
    "DenseProjectionHead",
    "GlobalProjectionHead",
    "FeatureNoise",
    "FeatureDropout",
    "build_perturbation",
    "PERTURBATIONS",
    "UNetDecoder",
    "UPSAMPLE_MODES",
    "DualDecoderUNet",
    "DECODER_UPSAMPLE",
    "split_streams",
    "stream_disagreement",
    "PretrainNetwork",
    "DENSE_KEY",
    "GLOBAL_KEY",
    "FEATURES_KEY",
]
