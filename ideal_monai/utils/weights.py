"""Weights of networks: unwrapping DDP, reading checkpoint files safely, loading state dicts with
one-line errors, and the loaders of the pre-trained encoder and of trained models for inference.

The handlers that save checkpoints, the trainers and the inference all build on these, so they
sit here, below them.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch

from ..errors import IdealInputError

logger = logging.getLogger(__name__)

__all__ = ["unwrap", "is_rank0", "load_checkpoint_file", "load_state_dict_checked", "encoder_state_from_checkpoint",
           "init_from_pretrained", "load_model_weights"]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or itself)."""
    return module.module if hasattr(module, "module") and isinstance(
        module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else module


def is_rank0() -> bool:
    """True without a process group, or on rank 0 of it (the process that writes files).

    Unlike :func:`ideal_monai.distributed.is_rank0` it never starts a process group.
    """
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise IdealInputError(path, "checkpoint file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise IdealInputError(path, f"checkpoint is corrupt or truncated ({str(e).splitlines()[0][:100]})") from None
    except Exception as e:  # weights_only refuses pickled code objects
        raise IdealInputError(path, f"checkpoint cannot be loaded safely ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise IdealInputError(path, f"checkpoint holds a {type(obj).__name__}, expected a state dict")
    return obj


def load_state_dict_checked(module: torch.nn.Module, state: dict, path: str | os.PathLike, strict: bool = True) -> None:
    """``module.load_state_dict(state)`` (DDP unwrapped) turning key/shape mismatches into a one-line error."""
    try:
        unwrap(module).load_state_dict(state, strict=strict)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise IdealInputError(path, f"checkpoint does not match the network: {detail[:200]}") from None


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
