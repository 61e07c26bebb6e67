"""MLflow's failures, told apart by type: an unreachable server, a server answering 5xx or a
locked database is worth waiting for; anything else is a one-line error, fatal at the first
contact with the store (not an MLflow store, a bad URI) and retried after (a server restarting).
A database refusing the login (a wrong password, an unknown user) is bad input, not an outage:
fatal at the first contact, retried (the daemon unhealthy, saying why) once it had answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


# stores that answered in this process: a source opened again (the daemon reconnecting from
# scratch after failed rounds) is not at its first contact
_ANSWERED: set[str] = set()


def note_answered(uri: str) -> None:
    _ANSWERED.add(uri)


def answered_before(uri: str) -> bool:
    return uri in _ANSWERED


def mlflow_error(
    uri: str, e: BaseException, *, answered: bool = False
) -> StoreError | StoreUnavailable | StoreReadFailed:
    """A one-line, credential-free error for a failed MLflow call: StoreUnavailable when the
    cause (anywhere in the exception chain) is a connection failure or a server error (5xx);
    otherwise StoreReadFailed when the store `answered` before, StoreError when it never did.
    A database refusing the login is never "unreachable"."""
    transient = _transient_types()
    refused = [r for r in map(_login_refused, _chain(e)) if r]  # the driver's own (innermost) says it best
    if refused:
        message = (
            f"the MLflow database {redact(uri)} refused the login: {redact(refused[-1])} (check the user and password)"
        )
        return StoreReadFailed(message) if answered else StoreError(message)
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


# how database drivers say that the credentials were refused (libpq, PostgreSQL's server in
# English, MySQL); PostgreSQL gives no SQLSTATE for a failed connection, only the message
_LOGIN_REFUSED = (
    "password authentication failed",
    "no password supplied",
    "authentication failed for user",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects connection",
    "access denied for user",
)
_MYSQL_ACCESS_DENIED = (1044, 1045, 1698)  # ER_DBACCESS_DENIED, ER_ACCESS_DENIED, ER_ACCESS_DENIED_NO_PASSWORD


def _login_refused(e: BaseException) -> str | None:
    """The driver's reason when `e` says that the database refused the credentials."""
    args: tuple[Any, ...] = tuple(getattr(e, "args", ()))
    text = " ".join(str(e).split())
    low = text.lower()
    said = any(p in low for p in _LOGIN_REFUSED) or ('role "' in low and "does not exist" in low)
    mysql = type(e).__module__.split(".")[0] in ("pymysql", "MySQLdb") and bool(args)
    if not said and not (mysql and args[0] in _MYSQL_ACCESS_DENIED):
        return None
    reason = text.split("failed: ")[-1] if "connection to server" in text else text
    return reason.removeprefix("FATAL:").removeprefix("fe_sendauth:").strip()[:200]
