"""MLflow's failures, told apart by type: an unreachable server, a server answering 5xx or a
locked database is worth waiting for; anything else is a one-line error, fatal at the first
contact with the store (not an MLflow store, a bad URI) and retried after (a server restarting)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import StoreError, StoreReadFailed, StoreUnavailable, one_line
from ..redact import redact


def _transient_types() -> tuple[type[BaseException], ...]:
    import requests
    import sqlalchemy.exc
    import urllib3.exceptions

    return (
        requests.exceptions.ConnectionError,  # refused, reset, DNS (and urllib3's MaxRetryError inside)
        requests.exceptions.Timeout,
        urllib3.exceptions.HTTPError,
        sqlalchemy.exc.OperationalError,  # database locked, server gone
        ConnectionError,
        TimeoutError,
    )


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def mlflow_error(
    uri: str, e: BaseException, *, answered: bool = False
) -> StoreError | StoreUnavailable | StoreReadFailed:
    """A one-line, credential-free error for a failed MLflow call: StoreUnavailable when the
    cause (anywhere in the exception chain) is a connection failure or a server error (5xx);
    otherwise StoreReadFailed when the store `answered` before, StoreError when it never did."""
    transient = _transient_types()
    for cause in _chain(e):
        if isinstance(cause, transient):
            return StoreUnavailable(f"MLflow at {redact(uri)} is unreachable ({_reason(cause)})")
        status = _http_status(cause)
        if status is not None and (status >= 500 or status == 429):
            return StoreUnavailable(f"MLflow at {redact(uri)} is unavailable (HTTP {status})")
    message = f"cannot read MLflow at {redact(uri)}: {redact(one_line(e))}"
    return StoreReadFailed(message) if answered else StoreError(message)


def _http_status(e: BaseException) -> int | None:
    """The HTTP status of an error an MLflow server answered with (a `RestException`: the
    server's own error code). Not other MlflowExceptions: their status defaults to 500 whatever
    happened (a page that is not JSON, from something that is not an MLflow server)."""
    from mlflow.exceptions import RestException

    return e.get_http_status_code() if isinstance(e, RestException) else None


def _reason(cause: BaseException) -> str:
    for inner in _chain(cause):
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, TimeoutError):
            return "timed out"
    return type(cause).__name__
