"""Keep the one-line error contract inside Ignite engines."""

from __future__ import annotations

from ignite.engine import Engine, Events

from ..errors import debug_enabled, find_user_error


class ErrorReporter:
    """At ``EXCEPTION_RAISED``: re-raise user-facing errors without logging a traceback.

    MONAI's ``StatsHandler`` logs every exception with its full traceback before re-raising it.
    For bad input, an unwritable output or a non-finite loss the entry point already prints one
    line naming the file or key, so list this handler FIRST in a handler list: Ignite runs
    ``EXCEPTION_RAISED`` handlers in order and stops at the first that raises. Other exceptions
    (and everything with ``IDEAL_MONAI_DEBUG=1``) are logged with their traceback, then re-raised.
    """

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EXCEPTION_RAISED):
            engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Engine, e: BaseException) -> None:
        if debug_enabled() or find_user_error(e) is None:
            engine.logger.exception(f"Exception: {e}")
        raise e
