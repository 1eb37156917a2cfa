"""Logging for fail-open paths: the first failure in full, then a count, not a traceback per request.

When a store is down or its disk is full, every request fails the same way. One traceback per
request (hundreds a second under load) buries the log without saying anything new; the metrics
(`cascache_tier_errors_total`, `cascache_writebacks_total{result="error"}`) already count each one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds between two log records of one fail-open path.
INTERVAL_S = 10.0


class FailureLog:
    """Logs a failure with its traceback at most once per `interval_s`; the others are counted.

    The record after a quiet interval says how many failures were not logged in between.
    """

    def __init__(self, logger: logging.Logger, message: str, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._message = message
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._suppressed = 0

    def failed(self) -> None:
        """Call from inside an `except` block."""
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._logger.error("%s%s", self._message, suffix, exc_info=True)
        self._suppressed = 0
        self._next_at = now + self._interval_s
