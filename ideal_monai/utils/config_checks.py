"""Type checks for bundle config values that users override on the command line.

``python -m monai.bundle run ... --use_pretrained false`` passes the *string* ``"false"``, which
Python treats as true: a silent wrong run. Each config's ``initialize`` calls
:func:`check_config_values` on its ``checked_settings`` so such an override fails at once with one
line. What each key must hold is one table, :data:`CONFIG_VALUE_KINDS`, shared by every config and
the CLI: a key means the same thing wherever it appears.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real

from ..errors import IdealInputError
from .precision import PRECISIONS

_BOOL_HINT = "write True or False (Python spelling)"


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 0


def _is_size(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in value)


def _is_positive_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_real(v) and v > 0 for v in value)


#: ``kind: (test, what the error says is expected)``.
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "count": (_is_count, "a non-negative integer"),
    "optional_count": (lambda v: v is None or _is_count(v), "a non-negative integer or None"),
    "number": (_is_real, "a number"),
    "non_negative_number": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "optional_number": (lambda v: v is None or _is_real(v), "a number or None"),
    "size": (_is_size, "a list of positive integers like [256, 256]"),
    # [] also means "keep the input grid": MONAI's command line drops a None override.
    "optional_spacing": (lambda v: v is None or (isinstance(v, (list, tuple)) and not v) or _is_positive_list(v),
                         "a list of positive numbers like [1.5, 1.5], or [] / None to keep the input grid"),
    "range": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_real(x) for x in v) and v[0] <= v[1],
              "a [low, high] pair of numbers with low <= high"),
    "levels": (lambda v: isinstance(v, (list, tuple)) and bool(v) and all(
        isinstance(x, Integral) and not isinstance(x, bool) for x in v), "a list of encoder level indices like [-1]"),
}

#: What every checked config key must hold: a kind of :data:`_KINDS`, or a tuple of allowed values.
#: ``decoder_width`` is checked against ``num_streams`` (one positive factor per stream).
CONFIG_VALUE_KINDS: dict[str, str | tuple] = {
    # switches
    "resume": "bool",
    "retain_freed_memory": "bool",
    "channels_last": "bool",
    "semi_supervised": "bool",
    "use_pretrained": "bool",
    "largest_component": "bool",
    "overwrite": "bool",
    "exit_on_failure": "bool",
    "save_uncertainty": "bool",
    "save_probabilities": "bool",
    "test_time_flips": "bool",
    "overlays": "bool",
    "with_cine": "bool",
    "dicom": "bool",
    "copy_paste": "bool",
    "strong_augmentation": "bool",
    "json": "bool",
    "distributed": "bool",
    # counts
    "seed": "count",
    "num_cases": "count",
    "num_val": "count",
    "batch_size": "count",
    "batch_size_labeled": "count",
    "batch_size_unlabeled": "count",
    "max_epochs": "count",
    "val_interval": "count",
    "num_workers": "count",
    "sw_batch_size": "count",
    "projection_channels": "count",
    "head_layers": "count",
    "max_overlays": "optional_count",
    "num_classes": "count",
    # numbers
    "temperature": "number",
    "dense_weight": "number",
    "global_weight": "number",
    "learning_rate": "number",
    "momentum": "optional_number",  # fine-tuning's SGD momentum; None = none
    "key_momentum": "optional_number",  # pre-training's momentum key network; None = keys from the network itself
    "weight_decay": "number",
    "lr_power": "number",
    "lambda_max": "number",
    "rampup_fraction": "number",
    "cache_rate": "number",
    "ema_decay": "number",
    "aug_rotate_deg": "number",
    "heart_bridge_mm": "non_negative_number",
    "aug_scale": "number",
    "aug_intensity": "non_negative_number",
    "myocardial_density": "number",
    "view_rotate_deg": "number",
    "view_brightness": "number",
    "confidence_threshold": "optional_number",
    "pseudo_label_weight": "non_negative_number",
    "pseudo_label_threshold": "optional_number",
    "copy_paste_box": "number",
    "num_labeled": "optional_number",
    "iterations_per_epoch": "optional_number",
    "ed_frame": "optional_number",
    "height_cm": "optional_number",
    "weight_kg": "optional_number",
    "es_frame": "optional_number",
    # shapes
    "patch_size": "size",
    "features": "size",
    "target_spacing": "optional_spacing",
    "decoder_width": "stream_widths",
    "dense_levels": "levels",
    "view_scale": "range",
    "view_contrast": "range",
    "view_noise_std": "range",
    # choices
    "precision": PRECISIONS,
    "optimizer": ("sgd", "adam", "adamw"),
    "num_streams": (1, 2),
    "nonfinite": ("stop", "skip"),
    "eval_stream": (None, 1, 2),
    "pseudo_label_teacher": ("ema", "student"),
}


def _fail(key: str, expected: str, value) -> None:
    hint = f"; {_BOOL_HINT}" if isinstance(value, str) and value.lower() in ("true", "false") else ""
    hint = "; write None (Python spelling)" if isinstance(value, str) and value.lower() in ("null", "none") else hint
    raise IdealInputError(f"--{key}", f"expected {expected}, got {type(value).__name__} {value!r}{hint}")


def check_config_values(settings: Mapping[str, object]) -> bool:
    """Check ``{config key: value}`` against :data:`CONFIG_VALUE_KINDS`.

    Raises :class:`IdealInputError` naming the first key (as its ``--key`` override) whose value
    has the wrong type, and ``KeyError`` for a key the table does not know (a programming error in
    a config, not a user error). Returns True so a config can call it as an expression.
    """
    # decoder_width is checked last: its test reads num_streams, which must be valid by then.
    for key, value in sorted(settings.items(), key=lambda item: CONFIG_VALUE_KINDS[item[0]] == "stream_widths"):
        kind = CONFIG_VALUE_KINDS[key]
        if isinstance(kind, tuple):
            if value not in kind:
                _fail(key, f"one of {list(kind)}", value)
        elif kind == "stream_widths":
            streams = settings.get("num_streams", 1)
            if not _is_positive_list(value) or len(value) < streams:
                _fail(key, f"a list of at least {streams} positive number(s) like {[1.0] * max(streams, 1)}", value)
        else:
            test, expected = _KINDS[kind]
            if not test(value):
                _fail(key, expected, value)
    return True
