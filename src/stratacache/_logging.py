"""Logging helpers shared by both halves: loggers live under the ``stratacache`` root and
no handler is configured here (that is the application's choice)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogLimiter:
    """At most one record per ``interval`` seconds through one call site; the records
    held back are counted and reported with the next one that goes out, so a storm of
    the same event costs a line now and then, never one per request."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._timer = timer
        self._lock = threading.Lock()
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        """``logger.warning`` unless one went out less than ``interval`` seconds ago."""
        self._log(logging.WARNING, message, args)

    def _log(self, level: int, message: str, args: tuple[object, ...]) -> None:
        with self._lock:
            now = self._timer()
            if now < self._next:
                self._held += 1
                return
            self._next = now + self._interval
            held, self._held = self._held, 0
        if held:
            message += " (%d more like this since the last one)"
            args = (*args, held)
        self._logger.log(level, message, *args)
