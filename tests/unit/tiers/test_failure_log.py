"""FailureLog: a fail-open path logs its first failure in full, then at most one record per interval."""

from __future__ import annotations

import logging

import pytest

from cascache.tiers.failure_log import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(failures: FailureLog) -> None:
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        failures.failed()


def test_first_failure_in_full_then_a_count_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(logging.getLogger("test.failure_log"), "write-back failed", interval_s=10.0, clock=clock)
    with caplog.at_level(logging.ERROR, logger="test.failure_log"):
        for _ in range(300):  # a burst within one interval
            fail(failures)
        clock.now = 10.0
        fail(failures)
        clock.now = 25.0
        fail(failures)

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "write-back failed",
        "write-back failed (299 more since the last report)",
        "write-back failed",
    ]
    assert all(record.exc_info is not None and record.exc_info[0] is OSError for record in caplog.records)
