"""The model and the pre-trained encoder shipped inside the package, and the settings a model was trained with.

A segmentation network only segments well with the geometry it was trained at (patch size, in-plane
spacing) and only loads into the architecture it was trained as (features, streams, decoder widths).
Those *model settings* travel with the weights, as ``model_settings.json`` in the weights' folder:

- ``finetune`` writes ``<bundle_root>/models/model_settings.json`` with the weights it saves there
  (``model.pt``, ``model_final.pt``, ``model_ema.pt``: the ``ModelSaver`` handlers);
- this package's ``release/`` folder holds the shipped ``model.pt``, its ``model_settings.json``, the
  shipped ``pretrained_encoder.pt`` and ``release.json`` (the model card's numbers: name, version,
  SHA-256 of each file, how it was trained, its validation scores).

``inference.json`` and ``function.json`` read their geometry and architecture keys through
:func:`model_settings` (a key given on the command line or in an overlay still wins), and take
:func:`model_or_shipped`: ``<bundle_root>/models/model.pt`` when one was trained there, else the shipped
model. ``train.json`` takes :func:`encoder_or_shipped` the same way, so ``finetune`` on a user's few labels
starts from the shipped encoder when they have not run ``pretrain``.

The shipped files are release artefacts, replaced on purpose (``scripts/release_model.py``), never by a
study; their checksums are checked before they are used.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import IdealInputError
from ..utils.checksums import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["RELEASE_DIR", "SETTINGS_FILE", "SETTING_KEYS", "release_card", "shipped_model_file", "shipped_encoder_file",
           "is_shipped", "model_or_shipped", "encoder_or_shipped", "model_settings", "write_model_settings",
           "model_label"]

#: The folder of the shipped files (package data).
RELEASE_DIR = Path(__file__).resolve().parent
#: The settings file beside a model's weights.
SETTINGS_FILE = "model_settings.json"
#: The config keys a model's weights depend on: what it loads into and the geometry it segments at.
SETTING_KEYS = ("patch_size", "target_spacing", "features", "num_streams", "decoder_width", "num_classes")


def release_card() -> dict:
    """``release/release.json``: ``name``, ``version``, ``files`` (``{"model": {"file", "sha256"}, "encoder": ...}``),
    ``trained`` (data, recipe, commit) and ``eval_metrics`` (validation scores)."""
    path = RELEASE_DIR / "release.json"
    if not path.is_file():
        raise IdealInputError(path, "the shipped model's card is missing: reinstall ideal-monai")
    return json.loads(path.read_text())


def _verified(kind: str) -> Path:
    entry = release_card()["files"][kind]
    path = RELEASE_DIR / entry["file"]
    if not path.is_file():
        raise IdealInputError(path, f"the shipped {kind} is missing: reinstall ideal-monai")
    if file_sha256(path) != entry["sha256"]:
        raise IdealInputError(path, f"the shipped {kind} is damaged (its SHA-256 differs from release.json): "
                                    "reinstall ideal-monai")
    return path


def shipped_model_file() -> Path:
    """The shipped segmentation weights (a flat ``state_dict`` of ``DualDecoderUNet``), checksum verified."""
    return _verified("model")


def shipped_encoder_file() -> Path:
    """The shipped pre-trained encoder (a bare encoder ``state_dict``), checksum verified."""
    return _verified("encoder")


def is_shipped(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is one of the shipped files (the same file, wherever the path points from)."""
    if not path or not os.path.exists(path):
        return False
    path = Path(path).resolve()
    return any(path == (RELEASE_DIR / e["file"]).resolve() for e in release_card()["files"].values())


def model_or_shipped(ckpt_dir: str | os.PathLike, name: str = "model.pt") -> str:
    """``<ckpt_dir>/<name>`` when it exists (a model trained there), else the shipped model (logged)."""
    own = Path(ckpt_dir) / name
    if own.exists():
        return str(own)
    card = release_card()
    logger.info("no %s: the model is the shipped %s %s (%s; --model_path to use another)", own, card["name"],
                card["version"], card.get("intended_for", "see its card"))
    return str(shipped_model_file())


def encoder_or_shipped(ckpt_dir: str | os.PathLike, name: str = "pretrained_encoder.pt") -> str:
    """``<ckpt_dir>/<name>`` when it exists (``pretrain`` ran there), else the shipped encoder (the path that
    ``init_from_pretrained`` logs says which)."""
    own = Path(ckpt_dir) / name
    return str(own) if own.exists() else str(shipped_encoder_file())


def model_settings(model_path: str | os.PathLike | None) -> dict:
    """The settings the model at ``model_path`` was trained with (``model_settings.json`` beside it), or ``{}``.

    Configs read each key as ``$@model_settings.get('patch_size', <bundle default>)``, so a model trained at
    another geometry (the CPU profile, the shipped model) is segmented at its own one without overlays.
    """
    if not model_path:
        return {}
    path = Path(model_path).parent / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IdealInputError(path, f"cannot read the model's settings ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(settings, dict) or set(settings) - set(SETTING_KEYS):
        raise IdealInputError(path, f"expected a JSON object with keys among {list(SETTING_KEYS)}")
    return settings


def write_model_settings(ckpt_dir: str | os.PathLike, settings: dict) -> Path:
    """Write ``<ckpt_dir>/model_settings.json`` (atomically) for the weights training saves in ``ckpt_dir``.

    :class:`~ideal_monai.handlers.ModelSaver` calls it with each save; on ranks other than 0 it writes nothing.
    """
    from ..utils import atomic_write_text, is_rank0

    unknown = set(settings) - set(SETTING_KEYS)
    if unknown:
        raise IdealInputError(SETTINGS_FILE, f"not model settings: {sorted(unknown)}")
    path = Path(ckpt_dir) / SETTINGS_FILE
    if is_rank0():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps({k: settings[k] for k in SETTING_KEYS if k in settings}, indent=1) + "\n", path)
    return path


def model_label(model_path: str | os.PathLike) -> str:
    """A short name of the model that made a segmentation, for NIfTI headers and reports: the shipped
    model's ``<name> <version>``, else ``<file name> sha256:<first 12 hex digits>``."""
    if is_shipped(model_path):
        card = release_card()
        return f"{card['name']} {card['version']}"
    path = Path(model_path)
    return f"{path.name} sha256:{file_sha256(path)[:12]}"
