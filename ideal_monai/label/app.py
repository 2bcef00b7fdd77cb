"""``ideal-monai label-app``: lay out a MONAI Label app folder that serves this bundle.

The folder is a copy of MONAI Label's ``monaibundle`` sample app (from the installed ``monailabel``
package) whose ``main.py`` is replaced by a two-line file importing
:class:`ideal_monai.label.monailabel_app.IdealApp` (stock inference, semi-supervised training,
stream-disagreement active learning), with this bundle in ``model/ideal/``::

    <output_dir>/main.py, lib/, ...          the sample app (main.py replaced)
    <output_dir>/model/ideal/configs/*.json  the bundle configs (with the given overrides)
    <output_dir>/model/ideal/models/model.pt the given weights, else the shipped model (or freshly initialised
                                             weights where the overrides change the network)

Start it with::

    ideal-monai label-server --app <output_dir> --studies <images>

(MONAI Label on 127.0.0.1 with the safeguards of :mod:`ideal_monai.label.server`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from ..errors import IdealInputError

logger = logging.getLogger(__name__)

#: Name of the bundle inside the app (``--conf models ideal``).
APP_MODEL_NAME = "ideal"

MAIN_PY = '''"""MONAI Label app serving the ideal-monai bundle in model/ideal (written by 'ideal-monai label-app').

All logic is in the installed package: ideal_monai.label.monailabel_app.IdealApp.
"""

from ideal_monai.label.monailabel_app import IdealApp  # noqa: F401  (MONAI Label loads this class)
'''


def find_sample_app(name: str = "monaibundle") -> Path:
    """Folder of MONAI Label's sample app ``name`` as installed by ``pip install monailabel``."""
    spec = importlib.util.find_spec("monailabel")
    if spec is None or not spec.origin:
        raise IdealInputError("monailabel", "not installed: pip install 'ideal-monai[label]' (monailabel==0.8.5)")
    pkg = Path(spec.origin).resolve().parent
    candidates = [Path(sys.prefix), Path(sys.base_prefix), pkg.parent, *pkg.parents]
    for base in candidates:
        p = base / "monailabel" / "sample-apps" / name
        if (p / "main.py").is_file():
            return p
    raise IdealInputError("monailabel", f"sample app {name!r} not found under {sys.prefix}/monailabel/sample-apps "
                                        f"(run 'monailabel apps --download --name {name} --output <dir>')")


#: Config keys that change the network: with one of them overridden the shipped weights cannot serve the app.
NETWORK_KEYS = ("features", "num_streams", "decoder_width", "num_classes")


def _write_weights(bundle: Path, model_file: Path | None, seed: int = 0) -> Path:
    """Copy ``model_file`` (checked against the app's ``network_def``) and the settings recorded beside it,
    or write freshly initialised weights (``model_file`` None)."""
    import torch
    from monai.bundle import ConfigParser

    from ..release import SETTINGS_FILE
    from ..utils import atomic_save_torch, load_model_weights

    target = bundle / "models" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["model_settings"] = {}  # the app's configs hold the values: the weights must fit them
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if model_file is not None:
        load_model_weights(network, model_file)  # refuses weights that do not fit network_def
        shutil.copyfile(model_file, target)
        if (model_file.parent / SETTINGS_FILE).is_file():
            shutil.copyfile(model_file.parent / SETTINGS_FILE, target.parent / SETTINGS_FILE)
    else:
        logger.warning("%s holds untrained weights (the overrides change the network, so the shipped model cannot "
                       "serve it): train through MONAI Label first", target)
        atomic_save_torch({k: v.detach().cpu() for k, v in network.state_dict().items()}, target)
    return target


def make_label_app(output_dir: str | os.PathLike, model_path: str | None = None, overwrite: bool = False,
                   **overrides) -> Path:
    """Write a ready MONAI Label app folder serving this bundle; returns the folder.

    Args:
        output_dir: the app folder to create (must not exist or be empty, unless ``overwrite``).
        model_path: a trained ``model.pt`` (flat state_dict of ``network_def``); without it the model shipped
            in the package, unless ``overrides`` change the network (``features``, ``num_streams``,
            ``decoder_width``, ``num_classes``): then freshly initialised weights (MONAI Label only lists a
            bundle that has weights). The settings recorded beside the weights (``model_settings.json``) are
            written into the app's configs first, the ``overrides`` after them.
        overwrite: replace an existing non-empty ``output_dir``.
        overrides: top-level config values written into the app's copy of ``train.json`` and
            ``inference.json`` (e.g. ``features=[8,16,32,64,128]``, ``patch_size=[128,128]``,
            ``iterations_per_epoch=10``); ``patch_size`` also updates ``metadata.json``.
    """
    from ..bundle_runner import bundle_dir, write_config_values
    from ..release import model_settings, shipped_model_file

    out = Path(output_dir)
    if model_path is not None and not Path(model_path).is_file():
        raise IdealInputError(model_path, "model weights not found")
    sample = find_sample_app()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise IdealInputError(out, "folder exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(sample, out, ignore=ignore, dirs_exist_ok=True)
    (out / "main.py").write_text(MAIN_PY)
    bundle = out / "model" / APP_MODEL_NAME
    src = bundle_dir()
    shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "models", "runs", "predictions", "data"),
                    dirs_exist_ok=True)
    if model_path is not None:
        model_file = Path(model_path)
    elif any(key in overrides for key in NETWORK_KEYS):
        model_file = None
    else:
        model_file = shipped_model_file()
    if model_file is not None:
        write_config_values(bundle / "configs", model_settings(model_file))
    if overrides:
        write_config_values(bundle / "configs", overrides)
    _write_weights(bundle, model_file)
    return out
