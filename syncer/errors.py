"""Every exception the syncer raises on purpose, grouped by what the caller should do.

    SyncerError
    ├── Fatal             stop: the CLI prints one line and exits 2; the daemon stops (exit 2)
    │   ├── BadInput          a flag, a rules file, a state database, an experiment that is not there
    │   ├── StoreError        the MLflow store cannot be read at all (not a store, bad URI, schema)
    │   ├── RepoError         the Aim repo cannot be used (unwritable, not a repo)
    │   └── InternalsChanged  an installed MLflow / Aim lacks an internal we rely on
    ├── RetryLater        transient: the daemon backs off and tries again; backfill exits 2
    │   ├── StoreUnavailable  server down (or answering 5xx), database locked, store not created yet
    │   ├── StoreReadFailed   a store that answered before refuses a read (a server restarting)
    │   └── RepoFull          the Aim repo's filesystem is (nearly) full: nothing more is written
    └── SkipRun           this run (or one of its metrics / artifacts) now: the rest goes on
        ├── RunUnreadable     a corrupt meta.yaml, a garbage metric line, a missing file
        └── RunLocked         another writer holds the Aim run; retried next round

Raise them where the cause is known (the source, the sink, the Aim adapter), catch them by type.
Messages are one line; `one_line()` makes one from any exception. Credentials are removed when
a message is printed (`syncer.redact`), so a message may quote a URI as given.
"""

from __future__ import annotations


class SyncerError(Exception):
    """Base class: a failure the syncer understands."""


class Fatal(SyncerError):
    """Nothing more can be done with this configuration: stop (exit code 2)."""


class BadInput(Fatal):
    """A flag, environment variable, rules file or state database that cannot be used."""


class StoreError(Fatal):
    """The MLflow store cannot be read at all: wrong URI, not a store, unknown schema."""


class RepoError(Fatal):
    """The Aim repo cannot be used: not writable, not a repo."""


class InternalsChanged(Fatal):
    """An installed library (Aim, MLflow) lacks an internal the syncer relies on."""


class RetryLater(SyncerError):
    """A transient failure: worth trying again after a back-off."""


class StoreUnavailable(RetryLater):
    """The store is not readable now (server down, database locked, not created yet). A
    one-shot command (backfill) stops with exit code 2; the daemon waits for it."""


class StoreReadFailed(RetryLater):
    """A store that has answered before refuses a read with an error that says nothing of a
    connection (an HTTP 4xx from a server coming back up, a query failing mid-migration): the
    daemon backs off and tries again; the same answer at the first contact is a StoreError."""


class RepoFull(RetryLater):
    """The Aim repo's filesystem has too little free space to write safely: nothing more is
    written until it has (the daemon waits for it, reporting unhealthy; a backfill waits a
    while, then stops with exit code 2). What was written is durable; the rest is sent later."""


# the store answered, with a refusal (the run or endpoint asked for is not there): not a connection failure
REFUSED = (StoreError, StoreReadFailed)


class SkipRun(SyncerError):
    """This run (or a part of it) cannot be synced now; the others can."""


class RunUnreadable(SkipRun):
    """A run, or one of its files, cannot be read as MLflow wrote it."""


class RunLocked(SkipRun):
    """Another writer holds the Aim run's lock."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), at most
    `limit` characters: what a warning or an error line shows."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else type(e).__name__
    return first if len(first) <= limit else first[:limit] + "…"


class Stopped(Exception):
    """A round was cut at a safe point because a stop was asked for (SIGTERM, SIGINT)."""
