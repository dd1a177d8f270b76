"""Keep the warnings a command logs, for its machine-readable summary."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class WarningRecorder(logging.Handler):
    """A log handler that keeps the text of each warning, once, in order.

    It takes records from every thread, so warnings of the layer and range
    threads are kept too.

    NOTE: so two pulls that run at once in one process each keep the
    other's warnings as well.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # ``handle`` holds the handler's lock here.
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)

    @contextlib.contextmanager
    def attached(self, logger: str = "apparate") -> Iterator[WarningRecorder]:
        """Record the warnings of ``logger`` and its children while inside."""
        target = logging.getLogger(logger)
        target.addHandler(self)
        try:
            yield self
        finally:
            target.removeHandler(self)
