"""The one way the benchmarks read the bundle: MONAI's ``ConfigParser`` over the bundle's own configs.

Benchmarks build what they time or run (networks, optimizers, losses, trainers, inference
components) from ``bundle/configs/<run id>.json`` (located by
:func:`ideal_monai.bundle_runner.config_path`) with overrides, so a changed config default reaches
the benchmarks. Overrides and lookups address named config ids only (top-level keys such as
``network_def`` or ``features``, a trainer's arguments such as ``train#trainer#train_handlers``),
never a position in a handler list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.bundle import ConfigParser

from ideal_monai.bundle_runner import config_path

__all__ = ["CPU", "bundle_config", "config_keys"]

#: Override that runs a config on the CPU whatever the machine has.
CPU = {"device": "$torch.device('cpu')"}


def bundle_config(run_id: str, overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """The config of ``run_id`` (``pretrain``, ``finetune``, ``inference``...) with ``overrides`` applied.

    Args:
        run_id: a run id of :data:`ideal_monai.bundle_runner.RUN_CONFIGS`.
        overrides: config id -> value (``{"num_streams": 1, "train#trainer#train_handlers": []}``);
            values may be any Python object (an in-memory batch list, a built network), which the
            parser passes through as they are.
    """
    parser = ConfigParser()
    parser.read_config(str(config_path(run_id)))
    given = set(overrides or {})
    if "model_settings" in parser.config and not given & {"model_settings", "model_path", "bundle_root"}:
        # No model named: the configs' own defaults, not those of the shipped model that inference would fall
        # back to, so that a benchmark's network and geometry are what it states.
        parser["model_settings"] = {}
    if overrides:
        parser.update(dict(overrides))
    return parser


def config_keys(run_id: str) -> set[str]:
    """Top-level ids of the config of ``run_id``."""
    return set(bundle_config(run_id).get())
