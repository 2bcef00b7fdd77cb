"""``ideal-monai bundle``: write a standalone copy of the bundle in the MONAI model-zoo layout.

    <output_dir>/configs/*.json, logging.conf   the bundle configs and metadata.json
    <output_dir>/docs/README.md                 the bundle documentation
    <output_dir>/LICENSE
    <output_dir>/models/model.pt                the given weights, else the model shipped in the package
    <output_dir>/models/model_settings.json     the settings recorded beside them (when there are any)
    <output_dir>/large_files.yml                models/model.pt with its SHA-256 (the model zoo's list)

The weights' settings (geometry, network) are written into the copy's configs, so that
``python -m monai.bundle run <run id> --config_file <output_dir>/configs/<file> --bundle_root <output_dir>``
segments with ``models/model.pt`` at the geometry it was trained at, and ``finetune`` in the copy trains
a network of the same shape. With the shipped model, ``metadata.json``'s ``eval_metrics`` are its
validation numbers; with other weights, a note that the copy does not know them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .bundle_runner import bundle_dir, write_config_values
from .errors import IdealInputError, OutputError
from .release import SETTINGS_FILE, is_shipped, model_settings, shipped_model_file
from .utils import file_sha256

#: What a distributed bundle holds; ``models/``, ``runs/``, ``data/``... of the source folder are
#: local outputs of running it. ``setup.py`` ships the same parts in the wheel.
BUNDLE_PARTS = ("configs", "docs", "LICENSE")
#: Weights file inside ``models/``: ``model_path`` of ``configs/inference.json`` and ``function.json``.
MODEL_NAME = "model.pt"


def _model_file(model_path: str | os.PathLike) -> Path:
    """``model_path`` itself, or ``<model_path>/model.pt`` when it is a ``models/`` folder."""
    path = Path(model_path)
    if path.is_dir():
        path = path / MODEL_NAME
    if not path.is_file():
        raise IdealInputError(path, f"model weights not found (give a .pt file or a models/ folder holding {MODEL_NAME})")
    return path


def _check_weights(bundle: Path, model_file: Path, settings: dict) -> None:
    """Refuse weights that the bundle's ``network_def`` (with their recorded ``settings``) cannot load: the
    copy would not run inference."""
    from monai.bundle import ConfigParser

    from .utils import load_model_weights

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["model_settings"] = settings
    load_model_weights(parser.get_parsed_content("network_def", instantiate=True), model_file)


def _large_files_yml(model_file: Path) -> str:
    """The model zoo's ``large_files.yml`` for ``models/model.pt``: no public URL hosts these weights, so ``url``
    is empty and the file travels in the folder; MONAI's ``download_large_files`` verifies it by its hash."""
    return (f"large_files:\n  - path: \"models/{MODEL_NAME}\"\n    url: \"\"\n"
            f"    hash_val: \"{file_sha256(model_file)}\"\n    hash_type: \"sha256\"\n")


def _note_unknown_eval_metrics(configs: Path) -> None:
    """``metadata.json``'s ``eval_metrics`` hold the shipped model's numbers: for other weights, a note instead."""
    meta_path = configs / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = {"note": "models/model.pt was given at export; its scores are not recorded in this "
                                    "bundle. Measure them with the inference and evaluate run ids."}
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")


def export_bundle(output_dir: str | os.PathLike, model_path: str | os.PathLike | None = None) -> Path:
    """Write the bundle (configs, docs, LICENSE, ``models/model.pt``, ``large_files.yml``) to ``output_dir``.

    The copy is assembled in a temporary folder beside ``output_dir`` and renamed into place, so an
    error or an interruption leaves no partial bundle under the final name.

    Args:
        output_dir: the folder to create; it must not exist or be empty.
        model_path: trained weights to include: a flat ``state_dict`` file of ``network_def`` (e.g.
            ``<bundle_root>/models/model_final.pt``) or a ``models/`` folder (its ``model.pt``, the
            best-validation weights, is taken); ``None``: the model shipped in the package. They are checked
            to load into the bundle's network with the settings recorded beside them.

    Returns:
        ``output_dir`` as a path.

    Raises:
        IdealInputError: ``output_dir`` is a file or a non-empty folder, the bundle folder lacks a
            part, or the weights are missing or do not fit the network (nothing is written).
        OutputError: ``output_dir``'s parent cannot be written.
    """
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IdealInputError(out, "output folder exists and is not empty; choose a new --output_dir")
    src = bundle_dir()
    missing = [part for part in BUNDLE_PARTS if not (src / part).exists()]
    if missing:
        raise IdealInputError(src, f"bundle folder lacks {', '.join(missing)}")
    model_file = _model_file(model_path) if model_path is not None else shipped_model_file()
    settings = model_settings(model_file)
    _check_weights(src, model_file, settings)
    target = Path(os.path.abspath(out))  # Path(".").parent is "." itself, and "." cannot be rmdir'ed
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise OutputError(target.parent, f"cannot write into this folder: {e.strerror or e}") from e
    try:
        for part in BUNDLE_PARTS:
            if (src / part).is_dir():
                shutil.copytree(src / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src / part, tmp / part)
        (tmp / "models").mkdir()
        shutil.copyfile(model_file, tmp / "models" / MODEL_NAME)
        if settings:
            write_config_values(tmp / "configs", settings)
            shutil.copyfile(model_file.parent / SETTINGS_FILE, tmp / "models" / SETTINGS_FILE)
        (tmp / "large_files.yml").write_text(_large_files_yml(model_file))
        if not is_shipped(model_file):
            _note_unknown_eval_metrics(tmp / "configs")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes a 0700 folder; give it a plain mkdir's mode
        if target.is_dir():
            target.rmdir()  # the empty folder the user made for it
        os.rename(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(out, f"cannot write the bundle: {e.strerror or e}") from e
        raise
    return out


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
