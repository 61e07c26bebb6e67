"""The daemon's back-off between failed rounds, and the one retry policy."""

from __future__ import annotations

import pytest
from syncer.retry import MAX_BACKOFF_S, backoff_delay, retrying


@pytest.mark.parametrize(
    ("failures", "interval", "delay"),
    [
        (1, 10.0, 1.0),
        (2, 10.0, 2.0),
        (4, 10.0, 8.0),
        (5, 10.0, 16.0),
        (6, 10.0, 30.0),  # at most three intervals
        (50, 10.0, 30.0),
        (10, 0.1, 3.0),  # short intervals: at most 3 s (three times 1 s)
        (10, 60.0, MAX_BACKOFF_S),  # and never more than a minute
    ],
)
def test_backoff_doubles_up_to_a_few_intervals(failures, interval, delay):
    assert backoff_delay(failures, interval) == delay


def test_retrying_retries_only_what_it_is_told_then_reraises():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    for attempt in retrying(ConnectionError, attempts=5, first_wait=0.0, max_wait=0.0):
        with attempt:
            result = flaky()
    assert result == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        for attempt in retrying(ConnectionError, attempts=5, first_wait=0.0, max_wait=0.0):
            with attempt:
                raise ValueError("not retried")
    tries = []
    with pytest.raises(ConnectionError):
        for attempt in retrying(lambda e: isinstance(e, ConnectionError), attempts=2, first_wait=0.0, max_wait=0.0):
            with attempt:
                tries.append(1)
                raise ConnectionError("still down")
    assert len(tries) == 2
