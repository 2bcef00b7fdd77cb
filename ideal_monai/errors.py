"""The one exception type for bad user input.

Every entry point catches :class:`IdealInputError` and prints its message as a single line
(``ideal-monai: error: <path>: <problem>``) with a non-zero exit; the full traceback only appears
with ``--debug`` / ``IDEAL_MONAI_DEBUG=1``.
"""

from __future__ import annotations

import os
import weakref


class IdealInputError(ValueError):
    """A user-facing problem with an input file, folder, config key or checkpoint.

    Args:
        where: the file path or config key the problem is about.
        problem: what is wrong, phrased for a person ("label values outside {0,1,2,3}: [4, 255]").
    """

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)

    def __reduce__(self):
        # DataLoader workers pickle exceptions; the default reduce would drop one of the two arguments.
        return (type(self), (self.where, self.problem))


class OutputError(IdealInputError):
    """An output could not be written (full disk, read-only or missing folder...): ``where`` is the
    output file or folder. Folder inference stops at the first one instead of failing every case."""


def find_input_error(exc: BaseException | None) -> IdealInputError | None:
    """The :class:`IdealInputError` in ``exc``'s cause/context chain (MONAI's config parser wraps
    errors raised while evaluating expressions in ``RuntimeError``), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, IdealInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def reraise_input_error(exc: BaseException) -> None:
    """Raise the :class:`IdealInputError` behind ``exc`` on its own (MONAI wraps transform errors in
    ``RuntimeError``, hiding the one-line message), or ``exc`` itself when there is none."""
    err = find_input_error(exc)
    if err is None:
        raise exc
    raise err from None


def find_user_error(exc: BaseException | None) -> IdealInputError | None:
    """:func:`find_input_error`, else an ``OSError`` naming a file in the chain (a permission
    problem, a missing folder, a full disk...) or a ``FloatingPointError`` (the trainers' stop on a
    non-finite loss) as an :class:`IdealInputError`, else None."""
    found = find_input_error(exc)
    if found is not None:
        return found
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.filename:
            return IdealInputError(exc.filename, exc.strerror or str(exc))
        if isinstance(exc, FloatingPointError):  # the trainers' non-finite loss stop
            return IdealInputError(None, str(exc))
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


#: Progress bars open in this process (see :func:`close_before_errors`); weak, so a closed run's bar goes.
_OPEN_BARS: weakref.WeakSet = weakref.WeakSet()


def close_before_errors(bar) -> None:
    """Have :func:`print_error` close ``bar`` (anything with ``close()``, e.g. a tqdm bar) before it prints,
    so the error is the last line on the terminal, not the end of a half-drawn bar."""
    _OPEN_BARS.add(bar)


def print_error(message: str) -> None:
    """Print ``ideal-monai: error: <message>`` on a line of its own, after closing the open progress bars."""
    import sys

    for bar in list(_OPEN_BARS):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - never let the error printer fail
            pass
    print(f"ideal-monai: error: {message}", file=sys.stderr)


def debug_enabled() -> bool:
    """``IDEAL_MONAI_DEBUG`` set (to anything but 0): show full tracebacks."""
    return os.environ.get("IDEAL_MONAI_DEBUG", "") not in ("", "0")


def install_excepthook() -> None:
    """Print uncaught input errors as one line (``ideal-monai: error: <file>: <problem>``).

    Input errors are :class:`IdealInputError` (also wrapped by MONAI's config parser) and
    ``OSError`` s that name a file (permissions, a full disk, a missing folder).

    The bundle's run configs call it first in ``initialize``, so ``python -m monai.bundle run <id>``
    with bad input ends in one readable line and exit status 1 instead of a page of traceback;
    importing ``ideal_monai`` leaves the interpreter's hook alone (a library must not change it),
    and the ``ideal-monai`` command catches errors itself. Other exceptions, and everything when
    ``IDEAL_MONAI_DEBUG=1``, keep the previous hook.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_ideal_monai", False):
        return

    def hook(exc_type, exc, tb):
        input_error = None if debug_enabled() else find_user_error(exc)
        if input_error is None:
            previous(exc_type, exc, tb)
        else:
            print_error(f"{input_error} (IDEAL_MONAI_DEBUG=1 shows the traceback)")

    hook._ideal_monai = True
    sys.excepthook = hook
