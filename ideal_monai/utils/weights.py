"""Loading weights into networks: the pre-trained encoder, and trained models for inference."""

from __future__ import annotations

import logging
import os

import torch

from ..errors import IdealInputError
from ..handlers.checkpoint import load_checkpoint_file, load_state_dict_checked

logger = logging.getLogger(__name__)


def encoder_state_from_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder weights in ``path``: a ``PretrainNetwork`` state_dict (``encoder.*`` keys) or a bare
    encoder state_dict. Raises :class:`IdealInputError` when the file has no encoder weights."""
    state = load_checkpoint_file(path)
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder and any(k.startswith("conv_0.") for k in state):
        encoder = dict(state)
    if not encoder:
        raise IdealInputError(path, "holds no encoder weights (expected 'encoder.*' keys from pre-training)")
    return encoder


def init_from_pretrained(network: torch.nn.Module, path: str | os.PathLike | None) -> torch.nn.Module:
    """Load pre-trained encoder weights from ``path`` into ``network.encoder`` (exact key match).

    ``path=None`` (or ``""``) leaves the network as initialised: training from scratch.
    Returns ``network`` so bundle configs can chain it.
    """
    if not path:
        return network
    if not os.path.exists(path):
        raise IdealInputError(path, "pre-trained encoder not found: run 'pretrain' first, or set use_pretrained to false")
    load_state_dict_checked(network.encoder, encoder_state_from_checkpoint(path), path, strict=True)
    logger.info("encoder initialised from %s", path)
    return network


def load_model_weights(network: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> torch.nn.Module:
    """Load a flat state_dict (``models/model.pt``) into ``network`` with ``weights_only=True``.

    Raises :class:`IdealInputError` naming ``path`` when it is missing, corrupt or does not match
    the network. Returns ``network`` so bundle configs can chain it.
    """
    if not os.path.exists(path):
        raise IdealInputError(path, "model weights not found: train with 'finetune' first or pass --model_path")
    load_state_dict_checked(network, load_checkpoint_file(path), path, strict=strict)
    return network
