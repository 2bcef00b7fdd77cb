"""The one exception type for bad user input.

Every entry point catches :class:`IdealInputError` and prints its message as a single line
(``ideal-monai: error: <path>: <problem>``) with a non-zero exit; the full traceback only appears
with ``--debug`` / ``IDEAL_MONAI_DEBUG=1``.
"""

from __future__ import annotations

import os


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


def debug_enabled() -> bool:
    """``IDEAL_MONAI_DEBUG`` set (to anything but 0): show full tracebacks."""
    return os.environ.get("IDEAL_MONAI_DEBUG", "") not in ("", "0")


def install_excepthook() -> None:
    """Print uncaught input errors as one line (``ideal-monai: error: <file>: <problem>``).

    Installed when ``ideal_monai`` is imported, so ``python -m monai.bundle run <id>`` with bad
    input ends in one readable line and exit status 1 instead of a page of traceback. Other
    exceptions, and everything when ``IDEAL_MONAI_DEBUG=1``, keep the previous hook.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_ideal_monai", False):
        return

    def hook(exc_type, exc, tb):
        input_error = None if debug_enabled() else find_input_error(exc)
        if input_error is None:
            previous(exc_type, exc, tb)
        else:
            print(f"ideal-monai: error: {input_error} (IDEAL_MONAI_DEBUG=1 shows the traceback)", file=sys.stderr)

    hook._ideal_monai = True
    sys.excepthook = hook
