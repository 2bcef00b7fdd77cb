"""Running the bundle's run ids in-process (what ``python -m monai.bundle run`` does).

The command line (``ideal-monai pretrain|finetune|infer``) and the demo call
:func:`run_bundle`, so they execute exactly the JSON configs a MONAI user runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import IdealInputError

#: Config file of each run id, relative to ``bundle/configs``.
RUN_CONFIGS = {
    "pretrain": "pretrain.json",
    "finetune": "train.json",
    "inference": "inference.json",
    "evaluate": "evaluate.json",
    "function": "function.json",
}


#: The overlay of a run id for several processes (``torchrun``): the ``multi_gpu_*.json`` beside its config.
MULTI_PROCESS_CONFIGS = {
    "pretrain": "multi_gpu_pretrain.json",
    "finetune": "multi_gpu_train.json",
    "inference": "multi_gpu_inference.json",
    "function": "multi_gpu_function.json",
}


def under_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def multi_process_configs(run_id: str) -> list[Path]:
    """``[<configs>/multi_gpu_<run>.json]`` under ``torchrun``, else ``[]``: the ``extra_configs`` of a command."""
    return [bundle_dir() / "configs" / MULTI_PROCESS_CONFIGS[run_id]] if under_torchrun() else []


def bundle_dir() -> Path:
    """The bundle folder (``configs/``, ``docs/``, ``LICENSE``).

    ``$IDEAL_MONAI_BUNDLE`` if set; else ``bundle_files/`` inside the package, which the wheel build
    copies from the repository's ``bundle/`` (see ``setup.py``); else ``bundle/`` beside the package,
    in a checkout or an editable install.
    """
    env = os.environ.get("IDEAL_MONAI_BUNDLE")
    if env:
        path = Path(env)
    else:
        package = Path(__file__).resolve().parent
        path = package / "bundle_files"
        if not path.is_dir():
            path = package.parent / "bundle"
    if not (path / "configs").is_dir():
        raise IdealInputError(path, "bundle folder with configs/ not found (reinstall ideal-monai from a wheel or "
                                    "a checkout, or set IDEAL_MONAI_BUNDLE)")
    return path


def config_path(run_id: str) -> Path:
    """Absolute path of the config file that holds ``run_id``."""
    if run_id not in RUN_CONFIGS:
        raise IdealInputError(run_id, f"unknown run id; expected one of {sorted(RUN_CONFIGS)}")
    return bundle_dir() / "configs" / RUN_CONFIGS[run_id]


def run_bundle(run_id: str, extra_configs: list[str | os.PathLike] = (), tracking: str | None = None, **overrides) -> None:
    """``python -m monai.bundle run <run_id> --config_file <configs> --<key> <value> ...`` in-process.

    Args:
        run_id: ``pretrain``, ``finetune``, ``inference`` or ``evaluate``.
        extra_configs: override files merged after the main config (e.g. multi-GPU settings).
        tracking: ``"mlflow"`` or a tracking settings file, as for ``monai.bundle run``.
        overrides: config ids and values (``dataset_dir=...``, ``max_epochs=2``); ``bundle_root``
            defaults to the bundle folder.
    """
    import warnings

    from monai.bundle.scripts import run

    # MONAI warns that configs are code; these are the package's own configs, chosen by this CLI.
    warnings.filterwarnings("ignore", message="parsing config_file", category=UserWarning)

    configs = [str(config_path(run_id))] + [str(c) for c in extra_configs]
    meta = bundle_dir() / "configs" / "metadata.json"
    logging_conf = bundle_dir() / "configs" / "logging.conf"
    overrides.setdefault("bundle_root", str(bundle_dir()))
    kwargs = {}
    if meta.exists():
        kwargs["meta_file"] = str(meta)
    if logging_conf.exists():
        kwargs["logging_file"] = str(logging_conf)
    if tracking:
        kwargs["tracking"] = tracking
    run(run_id=run_id, config_file=configs if len(configs) > 1 else configs[0], **kwargs, **overrides)


#: The run configs whose top-level values a copy of the bundle sets (a model's settings, the label app's overrides).
VALUE_CONFIGS = ("train.json", "inference.json", "function.json")


def _parse_value(value):
    """Command-line values arrive as Python objects from fire; strings that look like JSON lists are parsed."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, tuple):
        return list(value)
    return value


def write_config_values(configs_dir: str | os.PathLike, values: dict) -> None:
    """Set top-level values in a bundle copy's ``train.json`` / ``inference.json`` / ``function.json``.

    Each key must be a plain (non-dict) top-level value of at least one of them; ``patch_size`` also sets the
    ``spatial_shape`` of ``metadata.json``'s network inputs and outputs. Used on copies only (an exported
    bundle, a MONAI Label app): the repository's configs are never rewritten.

    Raises:
        IdealInputError: a key is not such a value in any of the configs (nothing is written).
    """
    configs_dir = Path(configs_dir)
    files = {n: configs_dir / n for n in VALUE_CONFIGS if (configs_dir / n).is_file()}
    configs = {n: json.loads(p.read_text()) for n, p in files.items()}
    for key, value in values.items():
        value = _parse_value(value)
        hit = False
        for cfg in configs.values():
            if key in cfg and not isinstance(cfg[key], dict):
                cfg[key] = value
                hit = True
        if not hit:
            raise IdealInputError(key, f"not a top-level value key of {' or '.join(files)}")
    for n, p in files.items():
        p.write_text(json.dumps(configs[n], indent=4) + "\n")
    if "patch_size" in values:
        meta_path = configs_dir / "metadata.json"
        meta = json.loads(meta_path.read_text())
        fmt = meta["network_data_format"]
        for section in ("inputs", "outputs"):
            for item in fmt[section].values():
                item["spatial_shape"] = list(_parse_value(values["patch_size"]))
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
