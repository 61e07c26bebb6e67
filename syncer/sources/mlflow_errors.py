"""MLflow's failures, told apart by type: an unreachable server or a locked database is worth
waiting for, anything else is a one-line error."""

from __future__ import annotations

from ..errors import StoreError, StoreUnavailable, one_line
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


def _chain(e: BaseException):
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def mlflow_error(uri: str, e: BaseException) -> StoreError | StoreUnavailable:
    """A one-line, credential-free error for a failed MLflow call: StoreUnavailable when the
    cause (anywhere in the exception chain) is a connection failure, StoreError otherwise."""
    transient = _transient_types()
    for cause in _chain(e):
        if isinstance(cause, transient):
            return StoreUnavailable(f"MLflow at {redact(uri)} is unreachable ({_reason(cause)})")
    return StoreError(f"cannot read MLflow at {redact(uri)}: {redact(one_line(e))}")


def _reason(cause: BaseException) -> str:
    for inner in _chain(cause):
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, TimeoutError):
            return "timed out"
    return type(cause).__name__
