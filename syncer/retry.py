"""The one retry policy (tenacity): how often, how long between, on what. Every retry loop in
the syncer is `for attempt in retrying(...): with attempt: ...`, and the daemon's back-off
between failed rounds is `backoff_delay`."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential


def retrying(
    on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    *,
    attempts: int,
    first_wait: float,
    max_wait: float,
) -> Retrying:
    """Up to `attempts` tries, waiting `first_wait`, then twice as long each time up to
    `max_wait` seconds, while the failure is one of `on` (types, or a predicate); the last
    failure is re-raised as it was."""
    predicate: Callable[[BaseException], bool]
    if isinstance(on, (type, tuple)):
        types = on

        def predicate(e: BaseException) -> bool:
            return isinstance(e, types)
    else:
        predicate = on
    return Retrying(
        retry=retry_if_exception(predicate),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=first_wait, exp_base=2, max=max_wait),
        reraise=True,
    )


# the daemon: 1, 2, 4, ... s after consecutive failed rounds, at most a few intervals (and a minute)
MAX_BACKOFF_S = 60.0


def backoff_delay(failures: int, interval: float) -> float:
    """Seconds to wait after the `failures`-th failed round in a row."""
    return min(MAX_BACKOFF_S, max(interval, 1.0) * 3, 2.0 ** (failures - 1))
