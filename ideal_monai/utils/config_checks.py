"""Type checks for bundle config values that users override on the command line.

``python -m monai.bundle run ... --use_pretrained false`` passes the *string* ``"false"``, which
Python treats as true: a silent wrong run. Each config's ``initialize`` calls
:func:`check_config_values` on its plain settings so such an override fails at once with one line.
"""

from __future__ import annotations

from numbers import Integral, Real

from ..errors import IdealInputError

_BOOL_HINT = "write True or False (Python spelling)"


def _fail(key: str, expected: str, value) -> None:
    hint = f"; {_BOOL_HINT}" if isinstance(value, str) and value.lower() in ("true", "false") else ""
    hint = "; write None (Python spelling)" if isinstance(value, str) and value.lower() in ("null", "none") else hint
    raise IdealInputError(f"--{key}", f"expected {expected}, got {type(value).__name__} {value!r}{hint}")


def check_config_values(*, bools: dict | None = None, ints: dict | None = None, numbers: dict | None = None,
                        optional_numbers: dict | None = None, sizes: dict | None = None,
                        optional_sizes: dict | None = None, choices: dict | None = None,
                        positive_lists: dict | None = None) -> bool:
    """Validate groups of ``{config key: value}``; raise :class:`IdealInputError` naming the key.

    Args:
        bools: must be ``True``/``False``.
        ints: non-negative integers (not bools).
        numbers: real numbers.
        optional_numbers: real numbers or None.
        sizes: sequences of positive integers (e.g. ``patch_size``).
        optional_sizes: sequences of positive numbers, or None (e.g. ``target_spacing``).
        choices: ``{key: (value, allowed values)}``.
        positive_lists: ``{key: (value, n)}``: a list of at least ``n`` positive numbers (e.g.
            ``decoder_width``, one factor per stream).

    Returns True so a config can use it as an expression.
    """
    for key, value in (bools or {}).items():
        if not isinstance(value, bool):
            _fail(key, "True or False", value)
    for key, value in (ints or {}).items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            _fail(key, "a non-negative integer", value)
    for key, value in (numbers or {}).items():
        if isinstance(value, bool) or not isinstance(value, Real):
            _fail(key, "a number", value)
    for key, value in (optional_numbers or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            _fail(key, "a number or None", value)
    for key, value in (sizes or {}).items():
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in value):
            _fail(key, "a list of positive integers like [256, 256]", value)
    for key, value in (optional_sizes or {}).items():
        if value is not None and (not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in value)):
            _fail(key, "a list of positive numbers like [1.5, 1.5], or None", value)
    for key, (value, allowed) in (choices or {}).items():
        if value not in allowed:
            _fail(key, f"one of {list(allowed)}", value)
    for key, (value, n) in (positive_lists or {}).items():
        if not isinstance(value, (list, tuple)) or len(value) < n or not all(
                isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in value):
            _fail(key, f"a list of at least {n} positive number(s) like {[1.0] * max(n, 1)}", value)
    return True
